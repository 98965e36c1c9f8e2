"""Retrieval metrics vs simple brute-force references, on codes with many distance ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashcondense.retrieval import (
    evaluate_retrieval,
    hamming_distances,
    mean_average_precision,
    pack_codes,
    precision_at_hamming_radius,
    precision_at_k,
    precision_recall_curve,
    tie_aware_map,
    to_bits,
)

# ----------------------------------------------------------------------------------------------
# Brute-force references (deliberately naive)
# ----------------------------------------------------------------------------------------------


def ref_distances(q_pm: np.ndarray, db_pm: np.ndarray) -> np.ndarray:
    """Hamming distance from +-1 codes via a float matrix product."""
    k = q_pm.shape[1]
    return np.rint((k - q_pm.astype(np.float64) @ db_pm.T.astype(np.float64)) / 2).astype(int)


def ref_map(q_pm, db_pm, ql, dl, topk=None, tie_seed=0) -> float:
    perm = np.random.default_rng(tie_seed).permutation(len(dl))
    db_pm, dl = db_pm[perm], dl[perm]
    dist = ref_distances(q_pm, db_pm)
    r_cut = len(dl) if topk is None else min(topk, len(dl))
    aps = []
    for i in range(len(ql)):
        order = np.argsort(dist[i], kind="stable")[:r_cut]
        rel = dl[order] == ql[i]
        hits, s = 0, 0.0
        for pos, r in enumerate(rel, start=1):
            if r:
                hits += 1
                s += hits / pos
        aps.append(s / hits if hits else 0.0)
    return float(np.mean(aps))


def ref_ball(q_pm, db_pm, ql, dl, radius):
    dist = ref_distances(q_pm, db_pm)
    precs, recs = [], []
    for i in range(len(ql)):
        inside = dist[i] <= radius
        rel = dl == ql[i]
        got = int(inside.sum())
        hit = int((inside & rel).sum())
        precs.append(hit / got if got else 0.0)
        recs.append(hit / rel.sum() if rel.sum() else 0.0)
    return float(np.mean(precs)), float(np.mean(recs))


def ap_of_ranking(rel: np.ndarray) -> float:
    hits = np.cumsum(rel)
    n = rel.sum()
    return float((hits / np.arange(1, len(rel) + 1))[rel].sum() / n) if n else 0.0


def make_codes(rng, n, k, n_classes=4, flip=0.25):
    """Class-structured +-1 codes (class centre with random bit flips); db sorted by class."""
    centres = rng.integers(0, 2, (n_classes, k))
    labels = np.sort(rng.integers(0, n_classes, n))
    bits = centres[labels] ^ (rng.random((n, k)) < flip)
    return (bits * 2 - 1).astype(np.int8), labels


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(123)
    k = 8
    centres = rng.integers(0, 2, (4, k))
    db_lab = np.sort(rng.integers(0, 4, 600))
    q_lab = rng.integers(0, 5, 40)  # label 4 never in the database: queries with no relevant
    db = (centres[db_lab] ^ (rng.random((600, k)) < 0.25)) * 2 - 1
    q = (centres[q_lab % 4] ^ (rng.random((40, k)) < 0.25)) * 2 - 1
    return q.astype(np.float32), db.astype(np.float32), q_lab, db_lab


# ----------------------------------------------------------------------------------------------
# Codes
# ----------------------------------------------------------------------------------------------


def test_to_bits_conventions():
    pm = np.array([[-1, 1, 1, -1]])
    assert to_bits(pm).tolist() == [[False, True, True, False]]
    assert to_bits(np.array([[0, 1, 1, 0]])).tolist() == [[False, True, True, False]]
    real = np.array([[-0.3, 0.0, 2.0, -5.0]])
    assert to_bits(real).tolist() == [[False, True, True, False]]
    assert to_bits(torch.tensor([[-1.0, 1.0]])).tolist() == [[False, True]]
    with pytest.raises(ValueError, match="codes"):
        to_bits(np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        to_bits(np.array([[np.nan, 1.0]]))


@pytest.mark.parametrize("k", [8, 12, 48, 64, 100, 128, 300])
def test_hamming_distances_vs_bruteforce(k):
    rng = np.random.default_rng(k)
    q = rng.choice([-1, 1], (17, k))
    db = rng.choice([-1, 1], (53, k))
    qp, dbp = pack_codes(q), pack_codes(db)
    assert qp.shape == (17, -(-k // 8)) and qp.dtype == np.uint8
    for chunk in (None, 1, 5, 100):
        d = hamming_distances(qp, dbp, chunk_size=chunk)
        np.testing.assert_array_equal(d, ref_distances(q, db))
    assert d.dtype == (np.uint8 if k <= 255 else np.uint16)
    with pytest.raises(ValueError, match="db_packed"):
        hamming_distances(qp, pack_codes(rng.choice([-1, 1], (3, k + 8))))


# ----------------------------------------------------------------------------------------------
# mAP with the seeded-permutation tie rule
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie_seed", [0, 1, 7])
def test_map_all_matches_bruteforce(small, tie_seed):
    q, db, ql, dl = small
    got = mean_average_precision(q, db, ql, dl, tie_seed=tie_seed)
    assert got == pytest.approx(ref_map(q, db, ql, dl, None, tie_seed), abs=1e-12)


@pytest.mark.parametrize("topk", [1, 5, 37, 100, 599, 600, 1000])
def test_map_topk_matches_bruteforce(small, topk):
    q, db, ql, dl = small
    for seed in (0, 3):
        got = mean_average_precision(q, db, ql, dl, topk, tie_seed=seed)
        assert got == pytest.approx(ref_map(q, db, ql, dl, topk, seed), abs=1e-12)


def test_topk_cuts_inside_tie_groups(small):
    """With K=8 and 600 items, every cut-off lands inside a large tie group: the result
    must depend on tie_seed exactly as the reference does."""
    q, db, ql, dl = small
    dist = ref_distances(q, db)
    sizes = [np.bincount(row).max() for row in dist]
    assert min(sizes) > 50  # many ties
    vals = {mean_average_precision(q, db, ql, dl, 37, tie_seed=s) for s in range(4)}
    assert len(vals) > 1


def test_tie_seed_none_is_stable_sort(small):
    q, db, ql, dl = small
    dist = ref_distances(q, db)
    aps = [ap_of_ranking(dl[np.argsort(dist[i], kind="stable")] == ql[i]) for i in range(len(ql))]
    got = mean_average_precision(q, db, ql, dl, tie_seed=None)
    assert got == pytest.approx(np.mean(aps), abs=1e-12)


@pytest.mark.parametrize("k", [12, 48, 16, 128, 300])
def test_map_odd_code_lengths(k):
    rng = np.random.default_rng(k)
    db, dl = make_codes(rng, 400, k)
    q, ql = make_codes(rng, 30, k)
    for topk in (None, 50):
        got = mean_average_precision(q, db, ql, dl, topk, tie_seed=5)
        assert got == pytest.approx(ref_map(q, db, ql, dl, topk, 5), abs=1e-12)


def test_pm1_and_01_and_torch_inputs_agree(small):
    q, db, ql, dl = small
    base = evaluate_retrieval(q, db, ql, dl, topk=(10, 100))
    q01, db01 = (q > 0).astype(np.uint8), (db > 0).astype(np.int64)
    assert evaluate_retrieval(q01, db01, ql, dl, topk=(10, 100)) == base
    tq, tdb = torch.from_numpy(q), torch.from_numpy(db)
    tql, tdl = torch.from_numpy(ql), torch.from_numpy(dl)
    assert evaluate_retrieval(tq, tdb, tql, tdl, topk=(10, 100)) == base
    real = q * np.random.default_rng(0).uniform(0.1, 3, q.shape)
    assert evaluate_retrieval(real, db, ql, dl, topk=(10, 100)) == base


def test_queries_without_relevant_items_count_as_zero():
    db = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])
    dl = np.array([0, 1])
    q = np.array([[1, 1, 1, 1], [1, 1, 1, 1]])
    ql = np.array([0, 2])  # second query has no relevant item
    assert mean_average_precision(q, db, ql, dl) == pytest.approx(0.5)
    assert tie_aware_map(q, db, ql, dl) == pytest.approx(0.5)
    assert mean_average_precision(q, db, ql, dl, topk=1) == pytest.approx(0.5)
    # relevant item exists but falls outside the top-1 -> AP@1 = 0 for that query
    assert mean_average_precision(q, db, np.array([1, 1]), dl, topk=1) == 0.0


def test_perfect_codes_give_map_one():
    rng = np.random.default_rng(0)
    centres = rng.choice([-1, 1], (5, 32))
    dl = rng.integers(0, 5, 500)
    ql = rng.integers(0, 5, 50)
    res = evaluate_retrieval(centres[ql], centres[dl], ql, dl, topk=(10, 1000), tie_seed=3)
    for key in ("mAP@10", "mAP@1000", "mAP@all", "mAP@all_tie_aware", "P@H<=2"):
        assert res[key] == pytest.approx(1.0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunk_size_and_threads_do_not_change_results(small, chunk):
    q, db, ql, dl = small
    ref = evaluate_retrieval(q, db, ql, dl, topk=(5, 100))
    assert evaluate_retrieval(q, db, ql, dl, topk=(5, 100), chunk_size=chunk) == ref
    got = evaluate_retrieval(q, db, ql, dl, topk=(5, 100), chunk_size=chunk, num_workers=1)
    assert got == ref
    assert mean_average_precision(q, db, ql, dl, 5, chunk_size=chunk) == ref["mAP@5"]


def test_evaluate_matches_individual_functions(small):
    q, db, ql, dl = small
    res = evaluate_retrieval(q, db, ql, dl, topk=(1, 50, 2000), tie_seed=4, radius=1)
    assert set(res) == {"mAP@1", "mAP@50", "mAP@2000", "mAP@all", "mAP@all_tie_aware", "P@H<=1"}
    for k in (1, 50, 2000):
        ref = mean_average_precision(q, db, ql, dl, k, tie_seed=4)
        assert res[f"mAP@{k}"] == pytest.approx(ref)
    assert res["mAP@all"] == pytest.approx(mean_average_precision(q, db, ql, dl, tie_seed=4))
    assert res["mAP@all_tie_aware"] == pytest.approx(tie_aware_map(q, db, ql, dl))
    assert res["P@H<=1"] == pytest.approx(precision_at_hamming_radius(q, db, ql, dl, 1))


# ----------------------------------------------------------------------------------------------
# Tie-aware mAP vs Monte-Carlo over random within-tie orders
# ----------------------------------------------------------------------------------------------


def test_tie_aware_map_matches_monte_carlo():
    rng = np.random.default_rng(11)
    k, n_perm = 6, 2000
    db, dl = make_codes(rng, 120, k, n_classes=3, flip=0.3)
    q, ql = make_codes(rng, 6, k, n_classes=3, flip=0.3)
    dist = ref_distances(q, db)
    samples = np.empty((n_perm, len(ql)))
    for t in range(n_perm):
        tiebreak = rng.random(len(dl))
        for i in range(len(ql)):
            order = np.lexsort((tiebreak, dist[i]))
            samples[t, i] = ap_of_ranking(dl[order] == ql[i])
    per_query = samples.mean(axis=1)
    mc_mean = per_query.mean()
    mc_se = per_query.std(ddof=1) / np.sqrt(n_perm)
    got = tie_aware_map(q, db, ql, dl)
    assert abs(got - mc_mean) < 4 * mc_se + 1e-9
    assert mc_se < 5e-3  # the check is meaningful


def test_tie_aware_single_tie_group_closed_form():
    # All items at the same distance: n items, r relevant; expected AP is the mean of the
    # AP over all arrangements -- check against exhaustive enumeration for n = 5, r = 2.
    from itertools import combinations

    db = np.ones((5, 4))
    dl = np.array([1, 0, 1, 0, 0])
    q = np.ones((1, 4))
    aps = []
    for pos in combinations(range(5), 2):
        rel = np.zeros(5, bool)
        rel[list(pos)] = True
        aps.append(ap_of_ranking(rel))
    assert tie_aware_map(q, db, np.array([1]), dl) == pytest.approx(np.mean(aps), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Hamming-ball precision, PR curve, precision@k
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 8])
def test_precision_at_hamming_radius_vs_bruteforce(small, radius):
    q, db, ql, dl = small
    got = precision_at_hamming_radius(q, db, ql, dl, radius=radius)
    assert got == pytest.approx(ref_ball(q, db, ql, dl, radius)[0], abs=1e-12)


def test_empty_ball_counts_as_zero_precision():
    db = np.array([[1, 1, 1, 1, 1, 1]])
    q = np.array([[-1, -1, -1, -1, -1, -1], [1, 1, 1, 1, 1, 1]])
    assert precision_at_hamming_radius(q, db, np.array([0, 0]), np.array([0])) == 0.5


def test_precision_recall_curve_vs_bruteforce():
    rng = np.random.default_rng(5)
    db, dl = make_codes(rng, 300, 12)
    q, ql = make_codes(rng, 20, 12)
    ql[0] = 99  # no relevant item
    curve = precision_recall_curve(q, db, ql, dl)
    assert curve["precision"].shape == curve["recall"].shape == (13,)
    np.testing.assert_array_equal(curve["radius"], np.arange(13))
    for r in range(13):
        p, rec = ref_ball(q, db, ql, dl, r)
        assert curve["precision"][r] == pytest.approx(p, abs=1e-12)
        assert curve["recall"][r] == pytest.approx(rec, abs=1e-12)
    assert np.all(np.diff(curve["recall"]) >= 0)


def test_precision_at_k_vs_bruteforce(small):
    q, db, ql, dl = small
    perm = np.random.default_rng(2).permutation(len(dl))
    dist = ref_distances(q, db[perm])
    got = precision_at_k(q, db, ql, dl, ks=(1, 10, 77, 5000), tie_seed=2)
    for k in (1, 10, 77, 5000):
        ke = min(k, len(dl))
        ref = np.mean(
            [(dl[perm][np.argsort(dist[i], kind="stable")[:ke]] == ql[i]).mean() for i in range(40)]
        )
        assert got[k] == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def test_invalid_inputs_raise_value_error(small):
    q, db, ql, dl = small
    with pytest.raises(ValueError, match="db_codes"):
        mean_average_precision(q, db[:, :6], ql, dl)
    with pytest.raises(ValueError, match="query_labels"):
        mean_average_precision(q, db, ql[:-1], dl)
    with pytest.raises(ValueError, match="db_labels"):
        tie_aware_map(q, db, ql, dl[:10])
    with pytest.raises(ValueError, match="db_labels"):
        evaluate_retrieval(q, db, ql, np.eye(4)[dl])
    with pytest.raises(ValueError, match="query_codes"):
        mean_average_precision(q[0], db, ql, dl)
    with pytest.raises(ValueError, match="topk"):
        mean_average_precision(q, db, ql, dl, topk=0)
    with pytest.raises(ValueError, match="chunk_size"):
        mean_average_precision(q, db, ql, dl, chunk_size=0)
    with pytest.raises(ValueError, match="radius"):
        precision_at_hamming_radius(q, db, ql, dl, radius=-1)
