"""The binary-code index: round trip, add, refusal of mismatched or tampered files, and the
tie rule of the metrics, checked against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from hashcondense.retrieval import pack_codes  # noqa: E402
from hashcondense.retrieval.index import CodeIndex, IndexParams, SearchHits  # noqa: E402


def brute_force(q_bits: np.ndarray, db_bits: np.ndarray, k: int, tie_seed: int = 0):
    """The metric's rule spelled out: permute the database, stable argsort by distance."""
    perm = np.random.default_rng(tie_seed).permutation(len(db_bits))
    dist = (q_bits[:, None, :] != db_bits[None, perm, :]).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return perm[order], np.take_along_axis(dist, order, 1)


def tied_codes(rng: np.random.Generator, n: int, bits: int, distinct: int) -> np.ndarray:
    """±1 codes drawn from few distinct rows, so nearly every distance is tied."""
    pool = rng.choice([-1, 1], size=(distinct, bits)).astype(np.int8)
    return pool[rng.integers(0, distinct, n)]


@pytest.mark.parametrize("bits", [8, 12, 64, 100])
def test_exact_search_matches_brute_force_tie_rule(bits: int) -> None:
    rng = np.random.default_rng(bits)
    db = tied_codes(rng, 700, bits, distinct=9)
    q = tied_codes(rng, 25, bits, distinct=9)
    index = CodeIndex.create(db, np.arange(700) % 7, kind="exact")
    for k in (1, 5, 64, 699, 700, 5000):
        hits = index.search(q, k)
        ref_ids, ref_dist = brute_force(q > 0, db > 0, k)
        np.testing.assert_array_equal(hits.ids, ref_ids)
        np.testing.assert_array_equal(hits.distances, ref_dist)


def test_search_is_deterministic_and_accepts_every_code_convention() -> None:
    rng = np.random.default_rng(1)
    db = tied_codes(rng, 300, 16, distinct=5)
    q = tied_codes(rng, 10, 16, distinct=5)
    index = CodeIndex.create(db)
    first = index.search(q, 20)
    again = CodeIndex.create((db > 0).astype(np.uint8)).search(q.astype(np.float32) * 0.3, 20)
    packed = index.search_packed(pack_codes(q), 20)
    for other in (again, packed):
        np.testing.assert_array_equal(first.ids, other.ids)
        np.testing.assert_array_equal(first.distances, other.distances)


def test_round_trip_keeps_everything(tmp_path) -> None:
    rng = np.random.default_rng(2)
    db = rng.choice([-1, 1], size=(50, 24))
    thumbs = rng.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8)
    sources = [f"/data/img{i}.png" if i % 2 else None for i in range(50)]
    index = CodeIndex.create(db, np.arange(50) % 3, sources=sources, classes=("a", "b", "c"),
                             model={"fingerprint": "f" * 64}, thumbs=thumbs,
                             info={"dataset": "x"})
    index.save(tmp_path / "idx")
    back = CodeIndex.load(tmp_path / "idx", expect_model="f" * 64)
    np.testing.assert_array_equal(back.codes, index.codes)
    np.testing.assert_array_equal(back.labels, index.labels)
    np.testing.assert_array_equal(back.thumbs, thumbs)
    assert back.sources == sources and back.classes == ("a", "b", "c")
    assert back.bits == 24 and back.info == {"dataset": "x"} and back.kind == "exact"
    q = rng.choice([-1, 1], size=(5, 24))
    np.testing.assert_array_equal(back.search(q, 7).ids, index.search(q, 7).ids)


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw", "mih"])
def test_add_equals_building_at_once(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(3)
    db = tied_codes(rng, 400, 64, distinct=40)
    q = tied_codes(rng, 12, 64, distinct=40)
    params = IndexParams(ivf_nlist=4, ivf_nprobe=4, hnsw_ef_search=400, mih_nflip=16)
    grown = CodeIndex.create(db[:250], np.arange(250), kind=kind, params=params)
    grown.save(tmp_path / "i")
    grown = CodeIndex.load(tmp_path / "i")
    ids = grown.add(db[250:], np.arange(250, 400), sources=[f"s{i}" for i in range(150)])
    np.testing.assert_array_equal(ids, np.arange(250, 400))
    grown.save(tmp_path / "i")
    grown = CodeIndex.load(tmp_path / "i")
    assert len(grown) == 400 and grown.sources[260] == "s10" and grown.sources[0] is None
    np.testing.assert_array_equal(grown.labels, np.arange(400))
    whole = CodeIndex.create(db, kind="exact")
    exact = whole.search(q, 10)
    hits = grown.search(q, 10)
    if kind == "exact":
        np.testing.assert_array_equal(hits.ids, exact.ids)
    # Approximate kinds with exhaustive settings find the exact distance list.
    np.testing.assert_array_equal(hits.distances, exact.distances)
    # Every returned distance is the true distance of the returned id.
    true = (q[:, None, :] != db[hits.ids]).sum(-1)
    np.testing.assert_array_equal(hits.distances, true)
    # Only one data file of each kind survives the rewrites.
    assert len(list((tmp_path / "i").glob("tensors-*"))) == 1


def test_approximate_results_follow_tie_rule_among_candidates() -> None:
    rng = np.random.default_rng(4)
    db = tied_codes(rng, 500, 32, distinct=6)
    q = tied_codes(rng, 8, 32, distinct=6)
    index = CodeIndex.create(db, kind="ivf", params=IndexParams(ivf_nlist=2, ivf_nprobe=2,
                                                                candidates=3))
    hits = index.search(q, 15)
    _, rank = np.unique(np.random.default_rng(0).permutation(500), return_index=True)
    key = hits.distances.astype(np.int64) * 10_000 + rank[hits.ids]
    assert (np.diff(key, axis=1) > 0).all()


def test_refuses_tampered_truncated_or_mismatched_files(tmp_path) -> None:
    rng = np.random.default_rng(5)
    db = rng.choice([-1, 1], size=(40, 32))
    index = CodeIndex.create(db, model={"fingerprint": "a" * 64}, kind="ivf",
                             params=IndexParams(ivf_nlist=2))
    d = tmp_path / "idx"
    index.save(d)
    meta = json.loads((d / "index.json").read_text())
    tensors = d / meta["tensors"]["file"]
    faiss_file = d / meta["faiss"]["file"]
    good_tensors, good_faiss = tensors.read_bytes(), faiss_file.read_bytes()

    with pytest.raises(ValueError, match="not with this model"):
        CodeIndex.load(d, expect_model="b" * 64)

    tensors.write_bytes(good_tensors[:-10])
    with pytest.raises(ValueError, match=r"tensors-.*SHA-256"):
        CodeIndex.load(d)
    flipped = bytearray(good_tensors)
    flipped[-1] ^= 1
    tensors.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="modified"):
        CodeIndex.load(d)
    tensors.write_bytes(good_tensors)

    faiss_file.write_bytes(good_faiss[:100])
    with pytest.raises(ValueError, match=r"faiss-.*SHA-256"):
        CodeIndex.load(d)
    faiss_file.unlink()
    with pytest.raises(ValueError, match="missing"):
        CodeIndex.load(d)
    faiss_file.write_bytes(good_faiss)
    assert len(CodeIndex.load(d)) == 40

    (d / "index.json").write_text(json.dumps({**meta, "bits": 64}))
    with pytest.raises(ValueError, match="bit length mismatch"):
        CodeIndex.load(d)
    (d / "index.json").write_text(json.dumps({**meta, "bits": 30}))
    with pytest.raises(ValueError, match="padding bits"):
        CodeIndex.load(d)
    (d / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CodeIndex.load(d)
    with pytest.raises(FileNotFoundError, match="index.json"):
        CodeIndex.load(tmp_path / "nowhere")


def test_bit_length_mismatch_is_refused() -> None:
    rng = np.random.default_rng(6)
    index = CodeIndex.create(rng.choice([-1, 1], size=(20, 32)))
    with pytest.raises(ValueError, match="bit length mismatch"):
        index.search(rng.choice([-1, 1], size=(2, 64)), 3)
    with pytest.raises(ValueError, match="bit length mismatch"):
        index.add(rng.choice([-1, 1], size=(2, 16)))
    with pytest.raises(ValueError, match="k: must be a positive"):
        index.search(rng.choice([-1, 1], size=(2, 32)), 0)
    assert isinstance(index.search(rng.choice([-1, 1], size=(2, 32)), 3), SearchHits)


def test_tune_changes_search_parameters_only() -> None:
    rng = np.random.default_rng(7)
    db = tied_codes(rng, 300, 32, distinct=30)
    q = tied_codes(rng, 10, 32, distinct=30)
    index = CodeIndex.create(db, kind="ivf", params=IndexParams(ivf_nlist=8, ivf_nprobe=1))
    index.tune(ivf_nprobe=8)  # every list probed: the exact distance lists
    exact = CodeIndex.create(db, kind="exact").search(q, 20)
    np.testing.assert_array_equal(index.search(q, 20).distances, exact.distances)
    assert index.faiss_index().nprobe == 8
    with pytest.raises(ValueError, match="fixed once the index is built"):
        index.tune(ivf_nlist=4)
