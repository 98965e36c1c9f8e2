"""End to end on the embedded default dataset (scikit-learn digits): condense with IEM, train,
encode, mAP, files — the README's first command."""

import json

from hashcondense import api
from hashcondense.records import record_problems


def test_demo_iem_beats_random_at_the_same_ipc(tmp_path):
    rows = api.demo(tmp_path, seed=0, progress=False)
    whole, random, iem = rows
    assert whole["images"] == 500 and random["images"] == 20 and iem["images"] == 20
    # 10 balanced classes: a random ranking gives mAP@all ~ 0.1. All must be far above chance;
    # the condensed set must beat the random one of the same size (the product's claim), and
    # the whole train split must beat the random subset.
    assert random["mAP@all"] > 0.3
    assert iem["mAP@all"] > random["mAP@all"] + 0.05
    assert whole["mAP@all"] > random["mAP@all"]
    assert iem["condense_seconds"] > 0 and random["condense_seconds"] == 0
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["condenser"] for r in records} == {"whole", "random", "iem"}
    for r in records:
        assert record_problems(r) == []
        assert 0.0 <= r["value"] <= 1.0
    assert (tmp_path / "summary.md").read_text().count("|") > 15
    assert (tmp_path / "iem_preview.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "split.json").read_text())["protocol"] == "digits"
