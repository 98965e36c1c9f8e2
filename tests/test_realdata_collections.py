"""Real datasets through the collection path: the built-in protocols keep the fingerprints of
the committed results, and a real zip passed as a path goes condense -> train -> evaluate.

These use the run's decode cache ($HASHCONDENSE_CACHE), so CI decodes each zip once."""

from __future__ import annotations

import json
import pathlib

import pytest
from test_collections import _e2e

from hashcondense.data import make_split

# protocol fingerprints recorded in benchmarks/results (before the protocol spec existed)
COMMITTED = {
    ("cifar10", None): "d058342db846ad4d982f5333ec5c3b7b57c128489463785f0b188294c6e3334f",
    ("imagenet10", 32): "5ea8ddc59100e7267d12a1155b80b13e6b845dd7d5bbeb3ed125133a57a4023b",
    ("imagenet20", 32): "585bf0141333a4af8398b2a76167feaa3456af513bd87c19f712b1a7aec68238",
}


@pytest.mark.realdata
@pytest.mark.parametrize("protocol, resolution", sorted(COMMITTED, key=str))
def test_builtin_protocols_keep_committed_fingerprints(data_root, protocol, resolution):
    split = make_split(protocol, data_root, seed=0, resolution=resolution, progress=False)
    assert split.fingerprint() == COMMITTED[(protocol, resolution)]


@pytest.mark.slow
@pytest.mark.realdata
def test_end_to_end_on_imagewoof_zip_as_a_path(data_root, tmp_path):
    archive = pathlib.Path(data_root) / "imagewoof-128.zip"
    if not archive.is_file():
        pytest.skip(f"{archive} not present")
    metrics = _e2e(["--dataset", str(archive), "--resolution", "32", "--query-per-class", "5",
                    "--train-per-class", "10"], tmp_path / "out")
    assert "mAP@1000" in metrics  # the database is the whole train split (9,025 images)
    run = json.loads((tmp_path / "out" / "model" / "run.json").read_text())
    assert run["protocol"]["sizes"] == {"query": 50, "train": 100, "database": 9025}
