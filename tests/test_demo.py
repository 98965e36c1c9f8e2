"""End to end on the embedded default dataset (scikit-learn digits): train, encode, mAP, files."""

import json

from hashcondense import api
from hashcondense.records import RECORD_FIELDS


def test_demo_whole_beats_random_subset(tmp_path):
    rows = api.demo(tmp_path, seed=0, progress=False)
    whole, subset = rows
    assert whole["images"] == 500 and subset["images"] == 50
    # 10 balanced classes: a random ranking gives mAP@all ~ 0.1. Both must be far above chance,
    # and ten times more real data must retrieve better.
    assert subset["mAP@all"] > 0.4
    assert whole["mAP@all"] > subset["mAP@all"] + 0.03
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["condenser"] for r in records} == {"whole", "random"}
    for r in records:
        assert set(RECORD_FIELDS) <= r.keys()
        assert 0.0 <= r["map"] <= 1.0
    assert (tmp_path / "summary.md").read_text().count("|") > 10
    assert json.loads((tmp_path / "split.json").read_text())["protocol"] == "digits"
