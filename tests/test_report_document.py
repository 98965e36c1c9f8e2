"""A hand-written document's generated report blocks: regenerated in place, prose untouched,
deterministic (a second pass changes nothing), figures linked from the results folder, and
malformed markers refused naming the file and line."""

from __future__ import annotations

import re

import pytest
from test_report import (
    _md_tables,
    _record,
    _run_json,
    _table1_records,
    _write,
    _write_curves,
    _write_preview,
)

from hashcondense.experiments.report import document_is_current, update_document

PROSE_TOP = "# Results\n\nWhat we ran, and why.\n\n"
PROSE_MID = "\nBetween the blocks: `code`, a | pipe and <!-- a comment -->.\n\n"
FENCED = "```markdown\n<!-- report: nowhere sections=nothing -->\n```\n"
PROSE_END = "\nThe end.\n"


def _doc(first: str, second: str, body: str = "") -> str:
    return (PROSE_TOP + f"<!-- report: {first} -->\n{body}<!-- /report -->\n" + PROSE_MID
            + FENCED + f"<!-- report: {second} -->\n<!-- /report -->\n" + PROSE_END)


def _outside_blocks(text: str) -> str:
    return re.sub(r"^(<!-- report: bench[^\n]*-->\n).*?^(<!-- /report -->)", r"\1\2", text,
                  flags=re.S | re.M)


@pytest.fixture
def store(tmp_path):
    results = tmp_path / "bench" / "table1"
    _write(results, _table1_records(), _run_json())
    _write_preview(results, "cifar10_iem_ipc10.png")
    return results


def test_blocks_are_filled_prose_is_untouched_and_a_second_pass_is_a_no_op(store, tmp_path):
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    doc.write_text(_doc("bench/table1 sections=table1,cost",
                        'bench/table1 sections=previews level=2', body="stale\n"), "utf-8")
    assert not document_is_current(doc, tmp_path)

    text = update_document(doc, tmp_path)
    assert _outside_blocks(text) == _outside_blocks(doc.read_text("utf-8"))
    assert text.startswith(PROSE_TOP) and text.endswith(PROSE_END) and FENCED in text
    first, second = re.findall(r"^<!-- report: bench[^\n]*-->\n(.*?)^<!-- /report -->", text,
                               re.S | re.M)
    # The first block: Table I then the cost table, as level-3 sections; no header, no
    # timestamp, no totals.
    assert re.findall(r"^#+ .*$", first, flags=re.M) == [
        "### Table I: retrieval with condensed sets", "### Condensation cost of each set"]
    t1 = _md_tables(first)[0]
    assert ["iem", "ours", "–", "25.00 (1)", "43.00 ± 3.61 (3)", "–"] in t1
    assert "generated" not in text and "Totals" not in text and "stale" not in text
    # The second: the preview, linked relative to the document's folder, as a level-2 section.
    assert second.startswith("\n## Synthetic images\n")
    assert "](../bench/table1/previews/cifar10_iem_ipc10.png)" in second

    doc.write_text(text, "utf-8")
    assert update_document(doc, tmp_path) == text  # deterministic: nothing changes
    assert document_is_current(doc, tmp_path)
    assert doc.read_text("utf-8") == text  # update_document returns; it does not write


def test_paths_are_relative_to_the_working_directory_by_default(store, tmp_path, monkeypatch):
    doc = tmp_path / "notes.md"
    doc.write_text("<!-- report: bench/table1 sections=table1 -->\n<!-- /report -->\n", "utf-8")
    monkeypatch.chdir(tmp_path)
    assert "### Table I" in update_document(doc)
    monkeypatch.chdir(store)
    with pytest.raises(ValueError, match="does not exist"):
        update_document(doc)


def test_missing_figures_are_drawn_into_the_results_folder_once(tmp_path):
    pytest.importorskip("matplotlib")
    results = tmp_path / "r"
    records = [*_table1_records(), _record(condenser="whole", value=0.6, seed=1)]
    _write(results, records, _run_json())
    _write_curves(results, records)
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- report: r sections=pr_curves -->\n<!-- /report -->\n", "utf-8")
    figure = results / "pr_cifar10_ipc10_32b_dhd.png"
    assert not figure.exists()
    text = update_document(doc, tmp_path)
    assert "](r/pr_cifar10_ipc10_32b_dhd.png)" in text
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc.write_text(text, "utf-8")
    assert document_is_current(doc, tmp_path)
    figure.unlink()  # the text is the same, but it links a file that is gone
    assert not document_is_current(doc, tmp_path) and not figure.exists()


@pytest.mark.parametrize("text, line, message", [
    ("a\n<!-- report: r -->\nbody\n", 2, "never closed"),
    ("a\n\n<!-- /report -->\n", 3, "closes no report block"),
    ("<!-- report: r -->\n<!-- report: r -->\n<!-- /report -->\n", 2, "inside the one opened"),
    ("x\n<!-- report: r sections=table1,tabel2 -->\n<!-- /report -->\n", 2,
     r"unknown report section 'tabel2'; known sections: ablation, "),
    ("<!-- report: missing -->\n<!-- /report -->\n", 1, "results folder .*missing.* does not "
                                                        "exist"),
    ("<!-- report: sections=table1 -->\n<!-- /report -->\n", 1, "names no results folder"),
    ("<!-- report: r colour=red -->\n<!-- /report -->\n", 1, "unknown report marker setting"),
    ("<!-- report: r level=9 -->\n<!-- /report -->\n", 1, "level must be 1 to 6"),
    ("<!-- report: empty -->\n<!-- /report -->\n", 1, "no results to report"),
])
def test_malformed_blocks_are_refused_naming_the_file_and_line(tmp_path, text, line, message):
    _write(tmp_path / "r", _table1_records(), _run_json())
    (tmp_path / "empty").mkdir()
    doc = tmp_path / "doc.md"
    doc.write_text(text, "utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(doc))}:{line}: .*{message}"):
        update_document(doc, tmp_path)
