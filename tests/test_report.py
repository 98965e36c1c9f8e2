"""The experiment report: numbers in the right cells beside the paper's, sections only when their
data exists, valid figures, a self-contained HTML file, atomic output; and the paper's tables."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hashcondense.experiments import config_hash
from hashcondense.experiments.paper import TABLE1, TABLE2, paper_value
from hashcondense.experiments.report import (
    DEFAULT_ORDER,
    SECTIONS,
    section_names,
    write_report,
)
from hashcondense.experiments.report import common as report_common
from hashcondense.experiments.report.load import condenser_kind

PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "docs" / "paper-iem.txt"

# ---------------------------------------------------------------- paper numbers


def test_paper_values_hand_checked_against_the_text():
    assert paper_value("table1", "cifar10", "iem", 10, 32) == 45.32
    assert paper_value("table1", "cifar10", "dsa", 1, 32) == 15.12
    assert paper_value("table1", "cifar10", "idc", 10, 32) == 38.92
    assert paper_value("table1", "cifar10", "idc", 50, 64) == 46.21
    assert paper_value("table1", "imagenet10", "dm", 3, 64) == 24.10
    assert paper_value("table1", "imagenet20", "iem", 1, 32) == 24.23
    assert paper_value("table1", "imagenet20", "idc", 1, 32) == 24.89  # IDC beats IEM here
    # The whole set has one value per (dataset, bits), whatever ipc is asked.
    assert paper_value("table1", "cifar10", "whole", None, 32) == 68.15
    assert paper_value("table1", "cifar10", "whole", 10, 64) == 70.21
    assert paper_value("table1", "imagenet20", "whole", None, 64) == 57.18
    # Not in the paper: Herding has no Table I column; no 128 bits; no ipc 10 on ImageNet.
    assert paper_value("table1", "cifar10", "herding", 10, 32) is None
    assert paper_value("table1", "cifar10", "iem", 10, 128) is None
    assert paper_value("table1", "imagenet10", "iem", 10, 32) is None
    # Table II: rows (NA, DA) = (✗,✗) none, (✓,✗) na, (✗,✓) da, (✓,✓) iem; bits not stated.
    assert paper_value("table2", "cifar10", "iem-none", 50) == 43.22
    assert paper_value("table2", "cifar10", "iem-na", 50, 32) == 47.99
    assert paper_value("table2", "cifar10", "iem-da", 50, 64) == 57.73
    assert paper_value("table2", "cifar10", "iem", 50) == 57.88
    assert paper_value("table2", "imagenet10", "iem-na", 3) == 30.23
    assert paper_value("table2", "imagenet10", "iem-da", 3) == 47.63
    assert paper_value("table2", "cifar10", "iem-na", 10) is None
    with pytest.raises(ValueError, match="table3"):
        paper_value("table3", "cifar10", "iem", 10, 32)


def test_paper_tables_are_complete():
    # 7 ipc settings x 2 bit lengths x 5 methods, plus the whole set per dataset and bits.
    assert len(TABLE1) == 7 * 2 * 5 + 3 * 2
    assert len(TABLE2) == 2 * 4


@pytest.mark.skipif(not PAPER_TEXT.exists(), reason=f"{PAPER_TEXT} not present")
def test_table1_matches_every_printed_cell_of_the_paper():
    columns = ("random", "dm", "dsa", "idc", "iem", "whole")  # the paper's column order
    dataset = ipc = None
    checked = 0
    for line in PAPER_TEXT.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 9 and cells[0] in ("CIFAR10", "ImageNet10", "ImageNet20"):
            dataset, ipc, bits, values = cells[0].lower(), int(cells[1]), int(cells[3]), cells[4:]
        elif len(cells) >= 8 and cells[0].isdigit() and cells[1].endswith("%"):
            ipc, bits, values = int(cells[0]), int(cells[2]), cells[3:]
        elif len(cells) >= 7 and cells[0].isdigit() and dataset is not None:
            bits, values = int(cells[0]), cells[1:]
        else:
            continue
        for condenser, text in zip(columns, values, strict=False):
            assert paper_value("table1", dataset, condenser, ipc, bits) == float(text), \
                (dataset, condenser, ipc, bits)
            checked += 1
    assert checked == 14 * 6


# ---------------------------------------------------------------- a fake results folder


def _record(**kw) -> dict:
    base = {"experiment": "table1", "profile": "smoke", "dataset": "cifar10", "resolution": 32,
            "condenser": "iem", "method": "iem", "ipc": 10, "seed": 0, "iteration": None,
            "condense_seconds": 60.0, "task": "retrieval", "hash_method": "dhd", "bits": 32,
            "metric": "mAP@1000", "value": 0.3, "train_seconds": 10.0, "encode_seconds": 1.0,
            "judge_steps": 100, "finished_at": "2025-01-01T00:00:00+00:00", "extra": "ignored"}
    base.update(kw)
    if base["condenser"] == "whole":
        base.update(ipc=None, method="whole", condense_seconds=0.0)
    judge = {k: base[k] for k in ("dataset", "condenser", "ipc", "seed", "iteration", "task",
                                  "hash_method", "bits")}
    base.setdefault("cell", config_hash(judge))
    base.setdefault("condense_cell", config_hash(
        {k: base[k] for k in ("dataset", "condenser", "ipc", "seed")}))
    return base


def _run_json(**kw) -> dict:
    run = {"experiment": "table1", "profile": "smoke", "description": "fake run for tests",
           "metric": "mAP@1000", "spec": {"ipcs": [1, 10]},
           "versions": {"torch": "2.13.0", "hashcondense": "0.1.0", "git": "abc1234"},
           "machine": {"cpu_model": "Fake CPU 9000", "cpu_count": 2},
           "protocols": {"cifar10": {"fingerprint": "0123456789abcdef0123",
                                     "sizes": {"query": 1000, "train": 5000,
                                               "database": 54000},
                                     "topk": 1000, "classes": ["airplane", "automobile"],
                                     "pools": {"pool": 60000}}},
           "updated_at": "2025-01-01T00:00:00+00:00"}
    run.update(kw)
    return run


def _write(results: Path, records: list[dict], run: dict | None = None) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if run is not None:
        (results / "run.json").write_text(json.dumps(run), encoding="utf-8")


IEM10 = [0.40, 0.42, 0.47]  # iem, ipc 10, 32 bits, dhd, seeds 0..2: mean 43.00, std √13 = 3.61


def _table1_records() -> list[dict]:
    recs = []
    for seed, v in enumerate(IEM10):
        recs.append(_record(seed=seed, value=v))
        recs.append(_record(seed=seed, value=v - 0.1, metric="mAP@all"))  # not the primary
    recs += [_record(condenser="random", method="random", ipc=10, value=0.2,
                     condense_seconds=0.0),
             _record(condenser="iem", ipc=1, value=0.25, bits=64),
             _record(condenser="whole", value=0.65)]
    return recs


def _full_records() -> list[dict]:
    recs = _table1_records()
    # Fig. 3: snapshots of iem (ipc 10, 32 bits, dhd) for seeds 0 and 1.
    for seed in (0, 1):
        for it, secs, v in ((10, 5.0, 0.2), (50, 25.0, 0.35)):
            recs.append(_record(seed=seed, iteration=it, condense_seconds=secs, value=v))
    # Fig. 4: a second hashing method on the same sets.
    recs += [_record(hash_method="orthohash", value=0.38),
             _record(hash_method="orthohash", condenser="random", method="random",
                     condense_seconds=0.0, value=0.18),
             _record(hash_method="orthohash", condenser="whole", value=0.6)]
    # Fig. 1: classification accuracy.
    for cond, ipc, v in (("iem", 1, 0.3), ("iem", 10, 0.5), ("random", 10, 0.35)):
        recs.append(_record(condenser=cond, method=cond, ipc=ipc, task="classification",
                            hash_method=None, bits=None, metric="accuracy", value=v))
    return recs


def _write_curves(results: Path, records: list[dict]) -> None:
    curves = results / "curves"
    curves.mkdir()
    for r in records:
        if (r["task"], r["hash_method"], r["bits"], r["iteration"], r["metric"]) == (
                "retrieval", "dhd", 32, None, "mAP@1000") and r["condenser"] in ("iem", "whole"):
            precision = [None, float("nan"), 0.9, 0.7, *[0.5] * 29]
            recall = [0.0, 0.0, 0.1, 0.3, *[min(1.0, 0.3 + 0.03 * i) for i in range(1, 30)]]
            (curves / f"{r['cell']}.json").write_text(json.dumps(
                {"bits": 32, "radius": list(range(33)), "precision": precision,
                 "recall": recall}), encoding="utf-8")  # NaN as JSON's NaN, as json writes it


def _write_preview(results: Path, name: str) -> None:
    (results / "previews").mkdir(exist_ok=True)
    Image.new("RGB", (8, 4), (200, 30, 30)).save(results / "previews" / name)


@pytest.fixture
def full_results(tmp_path) -> Path:
    results = tmp_path / "results"
    records = _full_records()
    _write(results, records, _run_json())
    _write_curves(results, records)
    _write_preview(results, "b_iem_ipc10.png")
    _write_preview(results, "a_dm_ipc10.png")
    return results


def _md_tables(md: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def _section(md: str, title: str) -> str:
    parts = re.split(r"^## ", md, flags=re.M)
    found = [p for p in parts if p.startswith(title)]
    assert found, f"no section {title!r}"
    return found[0]


def _cell(table: list[list[str]], row_label: tuple[str, str], column: str) -> str:
    header = table[0]
    col = header.index(column)
    row = next(r for r in table[2:] if (r[0], r[1]) == row_label)
    return row[col]


def _table1_rows(table: list[list[str]], condenser: str) -> dict[str, list[str]]:
    """The ours / paper / Δ rows under one condenser of a Table I layout."""
    rows = table[2:]
    start = next(i for i, r in enumerate(rows) if r[0] == condenser)
    out = {rows[start][1]: rows[start]}
    for r in rows[start + 1:]:
        if r[0]:
            break
        out[r[1]] = r
    return out


# ---------------------------------------------------------------- report tests


def test_table1_cell_holds_mean_std_and_the_papers_value(tmp_path):
    results = tmp_path / "r"
    _write(results, _table1_records(), _run_json())
    written = write_report(results)
    md = (results / "report.md").read_text(encoding="utf-8")
    table = _md_tables(_section(md, "Table I"))[0]
    header = table[0]
    assert header[:2] == ["condenser", ""]
    assert "ipc 10 · 32 bits" in header and "ipc 1 · 64 bits" in header
    iem = _table1_rows(table, "iem")
    col = header.index("ipc 10 · 32 bits")
    # By hand: mean(40, 42, 47) = 43.00; sample std = √((9 + 1 + 16) / 2) = √13 = 3.61.
    assert iem["ours"][col] == "43.00 ± 3.61 (3)"
    assert iem["paper"][col] == "45.32"   # Table I, CIFAR10, ipc 10, 32 bits, IEM
    assert iem["Δ"][col] == "-2.32"
    # A single seed has no spread; the whole set stands in every ipc column beside 68.15.
    assert _table1_rows(table, "random")["ours"][col] == "20.00 (1)"
    whole = _table1_rows(table, "whole")
    assert whole["ours"][col] == whole["ours"][header.index("ipc 1 · 32 bits")] == "65.00 (1)"
    assert whole["paper"][col] == "68.15" and whole["Δ"][col] == "-3.15"
    # Paper order: whole, random, …, iem.
    assert [r[0] for r in table[2:] if r[0]] == ["whole", "random", "iem"]
    # Sections without data are absent; no figures were written.
    for title in ("Table II", "Fig. 3", "Fig. 4", "Fig. 1", "Precision", "Synthetic"):
        assert f"## {title}" not in md
    assert set(written) == {"report.md", "report.html"}
    assert not list(results.glob("*.png"))
    # Header and footer.
    assert "Fake CPU 9000 (2 cores)" in md and "torch 2.13.0" in md and "`0123456789abcdef`" in md
    protocols = _md_tables(md)[1]
    assert protocols[0] == ["dataset", "fingerprint", "split sizes", "details"]
    assert protocols[2] == ["cifar10", "`0123456789abcdef`",
                            "query 1000, train 5000, database 54000", "topk 1000"]
    totals = {r[0]: r[1] for r in _md_tables(_section(md, "Totals"))[0][2:]}
    assert totals["judge cells"] == str(len({r["cell"] for r in _table1_records()}))
    assert totals["seeds"] == "3 (0, 1, 2)"
    assert totals["condense time"].endswith("(240.0 s)")  # 4 iem condensations of 60 s


def test_the_whole_set_is_recognised_by_its_method_not_its_label(tmp_path):
    results = tmp_path / "r"
    recs = [_record(condenser="iem", ipc=1, value=0.25), _record(condenser="iem", value=0.4),
            _record(condenser="iem", value=0.45, hash_method="dpn"),
            # a (meaningless) time on the reference must not count as a condensation
            *(_record(condenser="full-split", method="whole", ipc=None, value=v, hash_method=h,
                      condense_seconds=99.0) for h, v in (("dhd", 0.65), ("dpn", 0.6)))]
    _write(results, recs, _run_json())
    write_report(results)
    md = (results / "report.md").read_text(encoding="utf-8")
    table = _md_tables(_section(md, "Table I"))[0]
    full = _table1_rows(table, "full-split")["ours"]
    # Its one value stands in every ipc column, as the whole set's does.
    assert full[table[0].index("ipc 1 · 32 bits")] == full[table[0].index("ipc 10 · 32 bits")]
    assert full[table[0].index("ipc 10 · 32 bits")] == "65.00 (1)"
    fig4 = _md_tables(_section(md, "Fig. 4"))[0]
    assert fig4[-1] == ["full-split", "65.00 (1)", "60.00 (1)"]  # the reference row, last
    totals = dict(_md_tables(_section(md, "Totals"))[0][2:])
    assert totals["condensations"] == "2"  # iem ipc 1 and ipc 10; not the whole split
    assert totals["condense time"].endswith("(120.0 s)")


def test_full_report_sections_figures_and_self_contained_html(full_results, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"  # a separate folder: previews are referenced, not copied
    written = write_report(full_results, out)
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")

    for title in ("Table I", "Fig. 3", "Fig. 4", "Fig. 1", "Precision", "Synthetic", "Totals"):
        assert f"## {title}" in md
    assert "## Table II" not in md  # no ablation variants in this run
    for name in ("fig3_cifar10_ipc10_32b.png", "fig4_cifar10_ipc10_32b.png", "fig1_cifar10.png",
                 "pr_cifar10_ipc10_32b_dhd.png", "report.md", "report.html"):
        assert name in written and written[name] == out / name
    assert not any(n.startswith("fig3_") and n != "fig3_cifar10_ipc10_32b.png" for n in written)

    # Snapshots do not leak into Table I (iteration is set), nor does the second hash method.
    t1 = _md_tables(_section(md, "Table I"))[0]
    assert _table1_rows(t1, "iem")["ours"][t1[0].index("ipc 10 · 32 bits")] == "43.00 ± 3.61 (3)"
    # Fig. 3's table: a row per judged version, by time: iem's 2 snapshots (means over two
    # seeds) and its final set, whose update count these records do not give.
    f3 = _md_tables(_section(md, "Fig. 3"))[0]
    assert f3[0] == ["condenser", "updates", "condense time", "mAP@1000 (%)"]
    iem = f3[2 + [r[0] for r in f3[2:]].index("iem"):][:3]
    assert [r[1] for r in iem] == ["10", "50", "– (final)"]
    assert [r[3] for r in iem] == ["20.00 ± 0.00 (2)", "35.00 ± 0.00 (2)", "43.00 ± 3.61 (3)"]
    assert iem[2][2] == "60 s"
    # Fig. 4's table: condenser rows, hashing-method columns, whole last.
    f4 = _md_tables(_section(md, "Fig. 4"))[0]
    assert f4[0] == ["condenser", "dhd", "orthohash"]
    assert f4[2:] == [["random", "20.00 (1)", "18.00 (1)"], ["iem", "43.00 ± 3.61 (3)",
                                                             "38.00 (1)"],
                      ["whole", "65.00 (1)", "60.00 (1)"]]
    # Fig. 1's table: accuracy beside the retrieval mAP of the same set.
    f1 = _md_tables(_section(md, "Fig. 1"))[0]
    assert f1[0] == ["condenser", "ipc", "accuracy", "mAP@1000 · 32 bits", "mAP@1000 · 64 bits"]
    assert ["iem", "10", "50.00 (1)", "43.00 ± 3.61 (3)", "–"] in f1
    assert ["iem", "1", "30.00 (1)", "–", "25.00 (1)"] in f1

    # Every image the Markdown shows exists and is a PNG; previews sorted, captioned by name.
    refs = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", md)
    assert len(refs) == 4 + 2
    for _, ref in refs:
        with Image.open(out / ref) as im:
            im.verify()
            assert im.format == "PNG"
    previews = [ref for _, ref in refs if "previews" in ref]
    assert previews == ["../results/previews/a_dm_ipc10.png",
                        "../results/previews/b_iem_ipc10.png"]
    assert "*a_dm_ipc10.png*" in md
    for path in written.values():
        assert path.exists() and path.stat().st_size > 0

    # HTML: self-contained — every figure inline and decodable, the preview grids (existing
    # files) by relative path — tables as tables.
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(refs)
    assert [s for s in srcs if not s.startswith("data:image/png;base64,")] == previews
    for s in srcs:
        if s in previews:
            continue
        with Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) as im:
            assert im.format == "PNG"
    assert page.count("<table>") == len(_md_tables(md))
    assert "<td>43.00 ± 3.61 (3)</td>" in page

    # Complete files only: no temporary names left behind in either folder.
    for folder in (out, full_results):
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_report_defaults_to_the_results_folder_and_rewrites_in_place(full_results):
    pytest.importorskip("matplotlib")
    first = write_report(full_results)
    assert first["report.md"] == full_results / "report.md"
    before = (full_results / "fig4_cifar10_ipc10_32b.png").read_bytes()
    second = write_report(full_results)
    assert set(first) == set(second)
    assert (full_results / "fig4_cifar10_ipc10_32b.png").read_bytes() == before  # reproducible
    assert "](previews/a_dm_ipc10.png)" in (full_results / "report.md").read_text("utf-8")
    assert not [p.name for p in full_results.iterdir() if p.name.endswith(".tmp")]


def test_ablation_table_maps_switches_and_paper_rows(tmp_path):
    results = tmp_path / "r"
    values = {"iem-none": 0.40, "iem-na": 0.45, "iem-da": 0.55, "iem": 0.58}
    _write(results, [_record(condenser=c, ipc=50, value=v, experiment="table2")
                     for c, v in values.items()], _run_json(experiment="table2"))
    write_report(results)
    md = (results / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Experiment table2 (profile smoke)")
    table = _md_tables(_section(md, "Table II"))[0]
    assert table[0] == ["dataset", "ipc", "bits", "NA", "DA", "condenser", "mAP@1000 (%)",
                        "paper", "Δ"]
    assert table[2:] == [
        ["cifar10 (32 px)", "50", "32", "✗", "✗", "iem-none", "40.00 (1)", "43.22", "-3.22"],
        ["cifar10 (32 px)", "50", "32", "✓", "✗", "iem-na", "45.00 (1)", "47.99", "-2.99"],
        ["cifar10 (32 px)", "50", "32", "✗", "✓", "iem-da", "55.00 (1)", "57.73", "-2.73"],
        ["cifar10 (32 px)", "50", "32", "✓", "✓", "iem", "58.00 (1)", "57.88", "+0.12"]]
    # Ablation variants stay out of Table I; plain IEM is in both.
    t1 = _md_tables(_section(md, "Table I"))[0]
    assert [r[0] for r in t1[2:] if r[0]] == ["iem"]


def test_without_dhd_no_paper_values_are_claimed(tmp_path):
    results = tmp_path / "r"
    _write(results, [_record(hash_method="dpn", value=0.5)], _run_json())
    write_report(results)
    md = (results / "report.md").read_text(encoding="utf-8")
    table = _md_tables(_section(md, "Table I"))[0]
    assert [r[1] for r in table[2:]] == ["ours"] and "45.32" not in md
    assert "## Fig. 4" not in md  # one hashing method only


def test_fig3_gives_final_sets_their_recorded_update_count(tmp_path, monkeypatch):
    # A wall-clock budget stops seeds at different counts: the final row shows their mean; a
    # coreset has no updates. Tables only (no drawing), so the test stays fast.
    monkeypatch.setattr(report_common, "matplotlib_available", lambda: False)
    results = tmp_path / "r"
    recs = [_record(seed=s, iteration=200, condense_seconds=100.0, value=0.3) for s in (0, 1)]
    recs += [_record(seed=s, iterations=n, condense_seconds=900.0, value=v)
             for s, n, v in ((0, 900, 0.4), (1, 1000, 0.5))]
    recs.append(_record(condenser="random", method="random", condense_seconds=0.0, value=0.2))
    recs.append(_record(condenser="whole", value=0.6))  # drawn as a level, not a table row
    _write(results, recs, _run_json())
    write_report(results)
    section = _section((results / "report.md").read_text("utf-8"), "Fig. 3")
    assert _md_tables(section)[0][2:] == [["random", "– (final)", "0.0 s", "20.00 (1)"],
                                          ["iem", "200", "100 s", "30.00 ± 0.00 (2)"],
                                          ["", "950 (final)", "900 s", "45.00 ± 7.07 (2)"]]
    assert "the dashed line is the whole training set" in section


def test_fig3_counts_updates_so_an_idc_iteration_is_not_read_as_one(tmp_path, monkeypatch):
    # An IDC iteration holds inner_loop updates of every class; a DM record written before
    # runs kept updates still counts one update an iteration.
    monkeypatch.setattr(report_common, "matplotlib_available", lambda: False)
    results = tmp_path / "r"
    recs = [_record(condenser="idc", method="idc", iteration=2, updates=200, iterations=2,
                    condense_seconds=500.0, value=0.35),
            _record(condenser="idc", method="idc", updates=2_530, iterations=25,
                    condense_seconds=7_200.0, value=0.38),
            _record(condenser="dm", method="dm", iteration=200, iterations=200,
                    condense_seconds=100.0, value=0.30),
            _record(condenser="dm", method="dm", iterations=5_000, condense_seconds=2_000.0,
                    value=0.33)]
    _write(results, recs, _run_json())
    write_report(results)
    f3 = _md_tables(_section((results / "report.md").read_text("utf-8"), "Fig. 3"))[0]
    assert [r[:2] for r in f3[2:]] == [["dm", "200"], ["", "5,000 (final)"],
                                       ["idc", "200"], ["", "2,530 (final)"]]
    # no whole-split record in this store, so the caption promises no dashed line
    assert "dashed line" not in _section((results / "report.md").read_text("utf-8"), "Fig. 3")


@pytest.mark.parametrize(("lo", "hi", "wanted", "unwanted"), [
    (1_000, 3_000, {"1000", "2000", "3000"}, set()),        # under a decade: every step
    (200, 5_000, {"200", "500", "1000", "2000"}, {"300"}),  # ~1.4 decades: 1, 2, 5
    (0.01, 7_000, {"0.01", "1", "100"}, {"2", "5"}),        # many decades: decades only
])
def test_fig3_log_axis_labels_plain_numbers_that_fit_its_span(lo, hi, wanted, unwanted):
    pytest.importorskip("matplotlib")
    from hashcondense.experiments.report.sections.efficiency import _plain_log_ticks

    fig, (ax,) = report_common.new_figure()
    ax.plot([lo, hi], [0.0, 1.0])
    _plain_log_ticks(ax)
    fig.canvas.draw()
    left, right = ax.get_xlim()
    labels = {t.get_text() for t in ax.get_xticklabels() if left <= t.get_position()[0] <= right}
    assert wanted <= labels and not unwanted & labels, labels


def test_validation_protocol_results_claim_no_paper_values(tmp_path):
    # the paper's numbers are on its test queries; a tuning grid's validation protocol is not
    results = tmp_path / "r"
    _write(results, [_record(value=0.5, protocol="validation")], _run_json())
    write_report(results)
    md = (results / "report.md").read_text(encoding="utf-8")
    table = _md_tables(_section(md, "Table I"))[0]
    assert [r[1] for r in table[2:]] == ["ours"] and "45.32" not in md
    assert "validation protocol" in md
    _write(results, [_record(value=0.5)], _run_json())  # the same record on the test queries
    write_report(results)
    assert "45.32" in (results / "report.md").read_text(encoding="utf-8")


def test_primary_metric_comes_from_run_json(tmp_path):
    results = tmp_path / "r"
    _write(results, _table1_records(), _run_json(metric="mAP@all"))
    write_report(results)
    t1 = _md_tables(_section((results / "report.md").read_text("utf-8"), "Table I"))[0]
    assert _table1_rows(t1, "iem")["ours"][t1[0].index("ipc 10 · 32 bits")] == \
        "33.00 ± 3.61 (3)"


def test_dataset_without_the_primary_metric_falls_back_and_claims_no_paper_values(tmp_path):
    """digits has no top-k, so its records carry mAP@all, not run.json's mAP@1000."""
    results = tmp_path / "r"
    _write(results, [_record(dataset="digits", resolution=8, metric="mAP@all", value=0.5),
                     _record(dataset="digits", resolution=8, metric="P@H<=2", value=0.9),
                     _record(dataset="digits", resolution=8, metric="mAP@all", ipc=2,
                             value=0.4)], _run_json())
    write_report(results)
    md = (results / "report.md").read_text("utf-8")
    assert "**digits (8 px)** · mAP@all" in md and "digits: mAP@all" in md
    table = _md_tables(_section(md, "Table I"))[0]
    assert table[0] == ["condenser", "", "ipc 2 · 32 bits", "ipc 10 · 32 bits"]  # numeric order
    assert table[2:] == [["iem", "ours", "40.00 (1)", "50.00 (1)"]]  # no paper / Δ rows


def test_report_without_matplotlib_still_writes_tables(full_results, monkeypatch):
    monkeypatch.setattr(report_common, "matplotlib_available", lambda: False)
    written = write_report(full_results)
    assert not [n for n in written if n.endswith(".png")]
    md = (full_results / "report.md").read_text("utf-8")
    assert "matplotlib is not installed" in md and "## Fig. 4" in md
    assert "](previews/a_dm_ipc10.png)" in md  # previews need no drawing


def test_missing_or_empty_results_raise_naming_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        write_report(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty / "results.jsonl"))):
        write_report(empty)
    (empty / "results.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        write_report(empty)
    assert not list(empty.glob("report.*"))


def test_mixed_profiles_are_never_averaged(tmp_path):
    results = tmp_path / "r"
    recs = [_record(value=0.4), _record(value=0.9, profile="paper", cell="other")]
    _write(results, recs, None)
    with pytest.raises(ValueError, match="mixes profiles"):
        write_report(results)
    _write(results, recs, _run_json(profile="smoke"))
    write_report(results)
    t1 = _md_tables(_section((results / "report.md").read_text("utf-8"), "Table I"))[0]
    assert _table1_rows(t1, "iem")["ours"][t1[0].index("ipc 10 · 32 bits")] == "40.00 (1)"


def test_importing_the_report_does_not_import_matplotlib():
    code = ("import sys, hashcondense.experiments.report, hashcondense.experiments.paper; "
            "sys.exit('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_stats_formatting_is_sample_std():
    assert math.isclose(report_common.stats([40.0, 42.0, 47.0]).std, math.sqrt(13))
    assert str(report_common.stats([40.0])) == "40.00 (1)"


# ---------------------------------------------------------------- sections: registry and choice


def test_every_section_is_registered_once_and_a_duplicate_name_is_refused():
    assert SECTIONS.names() == sorted(DEFAULT_ORDER)
    assert DEFAULT_ORDER == ("table1", "ablation", "efficiency", "generalisation",
                             "classification", "cost", "pr_curves", "previews")
    with pytest.raises(ValueError, match="'table1' is already registered"):
        SECTIONS.register("table1")(lambda ctx: None)
    assert SECTIONS.get("table1").__module__.endswith("sections.table1")  # one file each


def test_spec_report_chooses_the_sections_and_their_order(full_results):
    run = _run_json(spec={"report": ["cost", "table1", "ablation"]})
    (full_results / "run.json").write_text(json.dumps(run), encoding="utf-8")
    written = write_report(full_results)
    md = (full_results / "report.md").read_text("utf-8")
    titles = re.findall(r"^## (.*)$", md, flags=re.M)
    # exactly those named (ablation has no data here: left out), in that order; totals last
    assert titles == ["Condensation cost of each set", "Table I: retrieval with condensed sets",
                      "Totals"]
    assert not [n for n in written if n.endswith(".png")]  # no figure section asked for

    run["spec"]["report"] = []  # empty: every section with data, in the default order
    (full_results / "run.json").write_text(json.dumps(run), encoding="utf-8")
    write_report(full_results)
    titles = re.findall(r"^## (.*)$", (full_results / "report.md").read_text("utf-8"),
                        flags=re.M)
    assert [t.split(":")[0] for t in titles] == [
        "Table I", "Fig. 3", "Fig. 4", "Fig. 1", "Condensation cost of each set",
        "Precision–recall curves", "Synthetic images", "Totals"]


def test_an_unknown_section_in_spec_report_is_refused_naming_it_and_the_known_ones(tmp_path):
    results = tmp_path / "r"
    _write(results, _table1_records(), _run_json(spec={"report": ["table1", "tabel2"]}))
    with pytest.raises(ValueError, match=r"run\.json: unknown report section 'tabel2'; "
                                         r"known sections: ablation, classification, cost"):
        write_report(results)
    assert not list(results.glob("report.*"))
    with pytest.raises(ValueError, match="listed twice"):
        section_names({"spec": {"report": ["cost", "cost"]}})


@pytest.mark.parametrize("where", ["spec", "records"])
def test_ablation_variants_are_found_by_their_options_not_their_labels(tmp_path, where):
    """Arbitrary labels; the four switch settings — in run.json's spec, or in the records when
    run.json lists no condensers — decide the Table II row, and a non-IEM condenser that
    happens to be called like a variant stays in Table I."""
    results = tmp_path / "r"
    condensers = [
        {"label": "d", "method": "iem", "options": []},
        {"label": "c", "method": "iem", "options": [["network_aug", False]]},
        {"label": "b", "method": "iem", "options": [["dataset_aug", False]]},
        {"label": "a", "method": "iem",
         "options": [["dataset_aug", False], ["network_aug", False]]},
        {"label": "iem-none", "method": "dm", "options": []}]
    values = {"a": 0.40, "b": 0.45, "c": 0.55, "d": 0.58, "iem-none": 0.35}
    records = []
    for c in condensers:
        extra = {"options": dict(c["options"])} if where == "records" else {}
        records.append(_record(condenser=c["label"], method=c["method"], ipc=50,
                               value=values[c["label"]], experiment="ablation", **extra))
    spec = {"condensers": condensers} if where == "spec" else {}
    _write(results, records, _run_json(experiment="ablation", spec=spec))
    write_report(results)
    md = (results / "report.md").read_text(encoding="utf-8")
    table = _md_tables(_section(md, "Table II"))[0]
    assert table[2:] == [
        ["cifar10 (32 px)", "50", "32", "✗", "✗", "a", "40.00 (1)", "43.22", "-3.22"],
        ["cifar10 (32 px)", "50", "32", "✓", "✗", "b", "45.00 (1)", "47.99", "-2.99"],
        ["cifar10 (32 px)", "50", "32", "✗", "✓", "c", "55.00 (1)", "57.73", "-2.73"],
        ["cifar10 (32 px)", "50", "32", "✓", "✓", "d", "58.00 (1)", "57.88", "+0.12"]]
    # Table I: both augmentations (d) and the DM set, each beside its kind's paper column.
    t1 = _md_tables(_section(md, "Table I"))[0]
    assert [r[0] for r in t1[2:] if r[0]] == ["iem-none", "d"]  # the paper's order: DM, IEM
    col = t1[0].index("ipc 50 · 32 bits")
    assert _table1_rows(t1, "iem-none")["paper"][col] == "41.12"  # Table I, DM
    assert _table1_rows(t1, "d")["paper"][col] == "55.72"  # Table I, IEM


def test_condenser_kind_reads_the_two_switches():
    assert condenser_kind("iem", {}) == "iem"
    assert condenser_kind("iem", {"network_aug": False, "dataset_aug": False}) == "iem-none"
    assert condenser_kind("iem", {"dataset_aug": False}) == "iem-na"
    assert condenser_kind("iem", {"network_aug": False, "iterations": 5}) == "iem-da"
    assert condenser_kind("dm", {"network_aug": False}) == "dm"
