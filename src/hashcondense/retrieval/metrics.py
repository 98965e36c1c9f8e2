"""Retrieval metrics for binary hash codes (single-label: relevant = same integer label).

Conventions shared by every function here:

* codes: shape (N, K), values in {-1, +1} or {0, 1} (real values are binarised by sign, 0 -> +1;
  see :func:`hashcondense.retrieval.codes.to_bits`); numpy arrays or torch tensors.
* labels: shape (N,), integers; a database item is relevant to a query iff the labels are equal.
* ranking: by Hamming distance ascending.

TIE RULE. Hamming distances take only K + 1 values, so ties are everywhere and the tie-break
changes mAP noticeably. A stable sort on a class-sorted database (the usual layout of benchmark
files) silently favours some classes, so ties are broken by database order *after a seeded
random permutation of the database*: ``perm = np.random.default_rng(tie_seed).permutation(ndb)``,
then a stable sort by distance of the permuted database. The results are exact with respect to
that rule (they equal brute force: permute, ``np.argsort(kind="stable")``, explicit AP loop).
:func:`tie_aware_map` instead reports the expectation over uniformly random orders within ties.

Speed: distances come from XOR + popcount on packed 64-bit words, and ranking uses numpy's
stable argsort on the small-integer distance matrix, which is a radix (counting) sort, linear
in the database size; no float matrix of size (nq, ndb) is ever built. Queries are processed in
chunks (bounded memory) on a small thread pool (numpy releases the GIL in these kernels).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .codes import (
    _as_words,
    _hamming_words,
    as_numpy,
    default_chunk_size,
    distance_dtype,
    to_bits,
)

__all__ = [
    "mean_average_precision",
    "tie_aware_map",
    "precision_at_hamming_radius",
    "precision_recall_curve",
    "precision_at_k",
    "evaluate_retrieval",
]


# ----------------------------------------------------------------------------------------------
# Input handling and the chunked driver
# ----------------------------------------------------------------------------------------------


def _labels(x: Any, name: str, n: int, codes_name: str) -> np.ndarray:
    arr = as_numpy(x, name)
    if arr.ndim != 1:
        raise ValueError(
            f"{name}: expected integer labels of shape (N,), got shape {arr.shape}"
            " (for one-hot labels pass labels.argmax(1))"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    if arr.shape[0] != n:
        raise ValueError(f"{name}: has {arr.shape[0]} labels but {codes_name} has {n} rows")
    return arr


class _Problem:
    """Validated, packed and tie-permuted inputs shared by all metrics."""

    def __init__(
        self,
        query_codes: Any,
        db_codes: Any,
        query_labels: Any,
        db_labels: Any,
        tie_seed: int | None = 0,
    ) -> None:
        q_bits = to_bits(query_codes, "query_codes")
        db_bits = to_bits(db_codes, "db_codes")
        k_q, k_db = q_bits.shape[1], db_bits.shape[1]
        if k_q != k_db:
            raise ValueError(f"db_codes: code length K={k_db} differs from query_codes' K={k_q}")
        self.n_bits = int(k_q)
        q_bits_packed = np.packbits(q_bits, axis=1)
        db_bits_packed = np.packbits(db_bits, axis=1)
        self.nq = q_bits_packed.shape[0]
        self.ndb = db_bits_packed.shape[0]
        if self.nq == 0:
            raise ValueError("query_codes: no queries (0 rows)")
        if self.ndb == 0:
            raise ValueError("db_codes: empty database (0 rows)")
        q_lab = _labels(query_labels, "query_labels", self.nq, "query_codes")
        db_lab = _labels(db_labels, "db_labels", self.ndb, "db_codes")
        # Map labels to dense small ints over both sets so comparisons are cheap.
        uniq, inv = np.unique(np.concatenate([q_lab, db_lab]), return_inverse=True)
        lab_dtype = np.int16 if len(uniq) < np.iinfo(np.int16).max else np.int64
        inv = inv.astype(lab_dtype, copy=False)
        q_lab, db_lab = inv[: self.nq], inv[self.nq :]
        if tie_seed is not None:
            perm = np.random.default_rng(tie_seed).permutation(self.ndb)
            db_bits_packed = db_bits_packed[perm]
            db_lab = db_lab[perm]
        self.q_words = _as_words(q_bits_packed)
        self.db_words = _as_words(db_bits_packed)
        self.q_lab = q_lab
        self.db_lab = np.ascontiguousarray(db_lab)
        self.dist_dtype = distance_dtype(self.n_bits)
        # Number of relevant items per query in the whole database.
        counts = np.bincount(db_lab, minlength=len(uniq))
        self.n_relevant = counts[q_lab].astype(np.int64)

    def distances(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.ndb), dtype=self.dist_dtype)
        return _hamming_words(self.q_words[start:stop], self.db_words, out)

    def relevance(self, start: int, stop: int) -> np.ndarray:
        return self.q_lab[start:stop, None] == self.db_lab[None, :]


def _resolve_chunk(chunk_size: int | None, ndb: int) -> int:
    if chunk_size is None:
        return default_chunk_size(ndb)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size: must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _run_chunks(
    nq: int,
    chunk_size: int,
    fn: Callable[[int, int], dict[str, np.ndarray]],
    num_workers: int | None,
) -> dict[str, np.ndarray]:
    """Apply ``fn(start, stop)`` to query chunks (in parallel threads) and concatenate."""
    starts = list(range(0, nq, chunk_size))
    spans = [(s, min(s + chunk_size, nq)) for s in starts]
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8)
    num_workers = max(1, min(int(num_workers), len(spans)))
    if num_workers == 1:
        parts = [fn(s, e) for s, e in spans]
    else:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            parts = list(pool.map(lambda se: fn(*se), spans))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# ----------------------------------------------------------------------------------------------
# Per-chunk kernels
# ----------------------------------------------------------------------------------------------


def _histograms(dist: np.ndarray, rel: np.ndarray, n_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query and distance value: (#all items, #relevant items), each shape (c, K + 1)."""
    c = dist.shape[0]
    nv = n_bits + 1
    # One bincount per row gives both histograms: bin = rel * nv + distance. A small key dtype
    # and per-row calls keep the temporaries tiny (faster than one int64 key matrix).
    key_dtype = np.uint8 if 2 * nv <= 256 else np.uint32
    hist = np.empty((c, 2 * nv), dtype=np.int64)
    key = np.empty(dist.shape[1], dtype=key_dtype)
    shift = key_dtype(nv)
    for i in range(c):
        np.multiply(rel[i], shift, out=key, dtype=key_dtype)
        key += dist[i]
        hist[i] = np.bincount(key, minlength=2 * nv)
    n_rel = hist[:, nv:]
    return hist[:, :nv] + n_rel, n_rel


def _gather_rows(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``values[i, order[i]]`` for every row; a per-row ``np.take`` beats ``take_along_axis``."""
    out = np.empty(order.shape, dtype=values.dtype)
    for i in range(order.shape[0]):
        np.take(values[i], order[i], out=out[i])
    return out


def _ap_topk(rel_sorted: np.ndarray) -> np.ndarray:
    """AP over the given ranked prefix: rel_sorted (c, R) bool -> (c,) float in [0, 1]."""
    cum = np.cumsum(rel_sorted, axis=1, dtype=np.int64)
    prec = cum / np.arange(1, rel_sorted.shape[1] + 1, dtype=np.float64)
    num = np.where(rel_sorted, prec, 0.0).sum(axis=1)
    n_hit = cum[:, -1] if rel_sorted.shape[1] else np.zeros(rel_sorted.shape[0], np.int64)
    return np.divide(num, n_hit, out=np.zeros_like(num), where=n_hit > 0)


def _ap_all(rel_sorted: np.ndarray) -> np.ndarray:
    """AP over complete rankings (c, ndb) bool, touching only the relevant positions: the j-th
    relevant item at 0-based position p contributes j / (p + 1)."""
    c, ndb = rel_sorted.shape
    flat = np.flatnonzero(rel_sorted)
    rows = flat // ndb
    pos = flat - rows * ndb + 1
    counts = np.bincount(rows, minlength=c)
    first = np.cumsum(counts) - counts
    j = np.arange(1, flat.size + 1, dtype=np.int64) - np.repeat(first, counts)
    num = np.bincount(rows, weights=j / pos, minlength=c)
    return np.divide(num, counts, out=np.zeros(c), where=counts > 0)


_HARMONIC_CACHE: dict[int, np.ndarray] = {}


def _harmonic(n: int) -> np.ndarray:
    """H[m] = sum_{i=1..m} 1/i for m = 0..n (float64)."""
    h = _HARMONIC_CACHE.get(n)
    if h is None:
        h = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))])
        if len(_HARMONIC_CACHE) < 8:
            _HARMONIC_CACHE[n] = h
    return h


def _tie_aware_ap(n_all: np.ndarray, n_rel: np.ndarray, harmonic: np.ndarray) -> np.ndarray:
    """Expected AP@all under random order within each distance bucket.

    For a bucket of n items (r relevant) preceded by N items (R_b relevant), the j-th slot is
    relevant with probability r/n and then the expected number of relevant items up to it is
    R_b + 1 + (j - 1)(r - 1)/(n - 1). With a = R_b + 1 - b, b = (r - 1)/(n - 1):
    sum_j (a + b j)/(N + j) = a (H[N+n] - H[N]) + b (n - N (H[N+n] - H[N])).
    """
    n = n_all.astype(np.float64)
    r = n_rel.astype(np.float64)
    before = np.cumsum(n_all, axis=1) - n_all
    rel_before = (np.cumsum(n_rel, axis=1) - n_rel).astype(np.float64)
    dh = harmonic[before + n_all] - harmonic[before]
    b = np.divide(r - 1.0, n - 1.0, out=np.zeros_like(r), where=n > 1)
    a = rel_before + 1.0 - b
    s = a * dh + b * (n - before * dh)
    contrib = np.divide(r, n, out=np.zeros_like(r), where=n > 0) * s
    total = n_rel.sum(axis=1)
    return np.divide(contrib.sum(axis=1), total, out=np.zeros(len(total)), where=total > 0)


def _ball_precision(n_all: np.ndarray, n_rel: np.ndarray, radius: int) -> np.ndarray:
    retrieved = n_all[:, : radius + 1].sum(axis=1)
    hits = n_rel[:, : radius + 1].sum(axis=1)
    return np.divide(hits, retrieved, out=np.zeros(len(hits)), where=retrieved > 0)


def _normalise_topk(topk: int | Iterable[int | None] | None) -> list[int | None]:
    items: list[int | None]
    if topk is None or isinstance(topk, (int, np.integer)):
        items = [topk]  # type: ignore[list-item]
    else:
        items = list(topk)
    for k in items:
        if k is not None and (int(k) != k or k < 1):
            raise ValueError(f"topk: must be None or positive integers, got {k!r}")
    return [None if k is None else int(k) for k in items]


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def evaluate_retrieval(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    topk: int | Sequence[int] | None = (1000,),
    tie_seed: int | None = 0,
    *,
    radius: int = 2,
    chunk_size: int | None = None,
    num_workers: int | None = None,
) -> dict[str, float]:
    """All standard hashing-retrieval numbers in one pass (distances once per query chunk).

    Args:
        query_codes: (nq, K) codes, {-1, +1} or {0, 1} (real values binarised by sign).
        db_codes: (ndb, K) codes, same convention rules.
        query_labels: (nq,) integer labels. db_labels: (ndb,) integer labels.
        topk: cut-offs R for ``mAP@R`` (int, sequence of ints, or None for none).
        tie_seed: seed of the database permutation that breaks distance ties (module doc);
            None keeps the given database order (stable tie-break, biased on sorted data).
        radius: Hamming radius for ``P@H<=radius``.
        chunk_size: queries per chunk (default: about 4M query-database pairs per chunk).
        num_workers: threads over chunks (default: min(cpu_count, 8)).

    Returns:
        dict with keys ``"mAP@{R}"`` for each R in topk, ``"mAP@all"``, ``"mAP@all_tie_aware"``
        and ``"P@H<={radius}"``; all floats in [0, 1], means over all queries.
    """
    ks = [k for k in _normalise_topk(topk) if k is not None]
    prob = _Problem(query_codes, db_codes, query_labels, db_labels, tie_seed)
    chunk = _resolve_chunk(chunk_size, prob.ndb)
    if radius < 0:
        raise ValueError(f"radius: must be >= 0, got {radius}")
    harmonic = _harmonic(prob.ndb)

    def work(start: int, stop: int) -> dict[str, np.ndarray]:
        dist = prob.distances(start, stop)
        rel = prob.relevance(start, stop)
        n_all, n_rel = _histograms(dist, rel, prob.n_bits)
        order = np.argsort(dist, axis=1, kind="stable")
        del dist
        rel_sorted = _gather_rows(rel, order)
        del order, rel
        out = {"all": _ap_all(rel_sorted), "tie": _tie_aware_ap(n_all, n_rel, harmonic)}
        out["ball"] = _ball_precision(n_all, n_rel, radius)
        for k in ks:
            out[f"k{k}"] = _ap_topk(rel_sorted[:, :k])
        return out

    res = _run_chunks(prob.nq, chunk, work, num_workers)
    result = {f"mAP@{k}": float(res[f"k{k}"].mean()) for k in ks}
    result["mAP@all"] = float(res["all"].mean())
    result["mAP@all_tie_aware"] = float(res["tie"].mean())
    result[f"P@H<={radius}"] = float(res["ball"].mean())
    return result


def mean_average_precision(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    topk: int | None = None,
    *,
    tie_seed: int | None = 0,
    chunk_size: int | None = None,
    num_workers: int | None = None,
) -> float:
    """mAP@R of Hamming ranking, as defined by DHD / DeepHash-pytorch / OrthoHash.

    Shapes: query_codes (nq, K) and db_codes (ndb, K) in {-1, +1} or {0, 1}; query_labels (nq,)
    and db_labels (ndb,) integers (relevant = equal label).

    ``AP@R(q) = (1 / r_R) * sum_{k <= R} P(k) rel(k)``, where R = ``topk`` (or ndb when None or
    larger than ndb) and r_R = number of relevant items in the top R. A query with r_R = 0 has
    AP 0 and still counts in the mean. Result in [0, 1].

    Tie rule: ranking is by Hamming distance ascending; ties are broken by database order after
    the permutation ``np.random.default_rng(tie_seed).permutation(ndb)`` (a class-sorted database
    would bias a plain stable tie-break). Exactly equivalent to: permute the database, then
    ``np.argsort(distances, kind="stable")``. ``tie_seed=None`` skips the permutation.

    ``chunk_size`` queries are processed at a time (bounded memory); ``num_workers`` threads.
    """
    k = _normalise_topk(topk)[0]
    prob = _Problem(query_codes, db_codes, query_labels, db_labels, tie_seed)
    chunk = _resolve_chunk(chunk_size, prob.ndb)

    def work(start: int, stop: int) -> dict[str, np.ndarray]:
        dist = prob.distances(start, stop)
        rel = prob.relevance(start, stop)
        order = np.argsort(dist, axis=1, kind="stable")
        del dist
        if k is None or k >= prob.ndb:
            ap = _ap_all(_gather_rows(rel, order))
        else:
            ap = _ap_topk(_gather_rows(rel, order[:, :k]))
        return {"ap": ap}

    return float(_run_chunks(prob.nq, chunk, work, num_workers)["ap"].mean())


def tie_aware_map(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    chunk_size: int | None = None,
    num_workers: int | None = None,
) -> float:
    """Tie-aware mAP@all (He et al., CVPR 2018, "Hashing as Tie-Aware Learning to Rank").

    Shapes as in :func:`mean_average_precision`. Returns the expected AP@all when items at equal
    Hamming distance are ordered uniformly at random, averaged over queries, in [0, 1]. For a tie
    group of n items (r relevant) preceded by N items (R_b relevant) the contribution is
    ``(r/n) * sum_{j=1..n} [R_b + 1 + (j-1)(r-1)/(n-1)] / (N + j)``; AP = sum / R_total, 0 when
    the query has no relevant item. Independent of database order, so no tie seed; computed from
    per-distance histograms with harmonic-number sums (no sorting).
    """
    prob = _Problem(query_codes, db_codes, query_labels, db_labels, None)
    chunk = _resolve_chunk(chunk_size, prob.ndb)
    harmonic = _harmonic(prob.ndb)

    def work(start: int, stop: int) -> dict[str, np.ndarray]:
        n_all, n_rel = _histograms(
            prob.distances(start, stop), prob.relevance(start, stop), prob.n_bits
        )
        return {"ap": _tie_aware_ap(n_all, n_rel, harmonic)}

    return float(_run_chunks(prob.nq, chunk, work, num_workers)["ap"].mean())


def _bucket_counts(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    chunk_size: int | None,
    num_workers: int | None,
) -> tuple[_Problem, np.ndarray, np.ndarray]:
    prob = _Problem(query_codes, db_codes, query_labels, db_labels, None)
    chunk = _resolve_chunk(chunk_size, prob.ndb)

    def work(start: int, stop: int) -> dict[str, np.ndarray]:
        n_all, n_rel = _histograms(
            prob.distances(start, stop), prob.relevance(start, stop), prob.n_bits
        )
        return {"all": n_all, "rel": n_rel}

    res = _run_chunks(prob.nq, chunk, work, num_workers)
    return prob, res["all"], res["rel"]


def precision_at_hamming_radius(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    radius: int = 2,
    *,
    chunk_size: int | None = None,
    num_workers: int | None = None,
) -> float:
    """Mean over queries of (#relevant / #retrieved) among database items within Hamming
    distance <= ``radius`` ("P@H<=2" for radius 2). Shapes as in :func:`mean_average_precision`.

    A query whose Hamming ball is empty counts as precision 0 (the common, pessimistic
    convention: hash lookup returned nothing). Result in [0, 1].
    """
    if radius < 0:
        raise ValueError(f"radius: must be >= 0, got {radius}")
    _, n_all, n_rel = _bucket_counts(
        query_codes, db_codes, query_labels, db_labels, chunk_size, num_workers
    )
    return float(_ball_precision(n_all, n_rel, radius).mean())


def precision_recall_curve(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    chunk_size: int | None = None,
    num_workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Precision/recall of Hamming-ball lookup for every radius r = 0..K.

    Shapes as in :func:`mean_average_precision`. For each query and radius r, everything at
    distance <= r is retrieved; precision = relevant/retrieved (0 for an empty ball), recall =
    relevant retrieved / relevant in the database (0 if the query has no relevant item).

    Returns ``{"radius": int array (K+1,), "precision": (K+1,), "recall": (K+1,)}``, precision
    and recall being means over queries, in [0, 1].
    """
    prob, n_all, n_rel = _bucket_counts(
        query_codes, db_codes, query_labels, db_labels, chunk_size, num_workers
    )
    retrieved = np.cumsum(n_all, axis=1)
    hits = np.cumsum(n_rel, axis=1)
    precision = np.divide(hits, retrieved, out=np.zeros(hits.shape), where=retrieved > 0)
    total = prob.n_relevant[:, None]
    recall = np.divide(hits, total, out=np.zeros(hits.shape), where=total > 0)
    return {
        "radius": np.arange(prob.n_bits + 1),
        "precision": precision.mean(axis=0),
        "recall": recall.mean(axis=0),
    }


def precision_at_k(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    ks: int | Sequence[int] = (100, 1000),
    *,
    tie_seed: int | None = 0,
    chunk_size: int | None = None,
    num_workers: int | None = None,
) -> dict[int, float]:
    """Mean precision of the top-k Hamming ranking for each k in ``ks``.

    Shapes as in :func:`mean_average_precision`, same tie rule (seeded database permutation,
    then stable sort by distance). Precision@k = relevant among the top min(k, ndb) divided by
    min(k, ndb). Returns {k: value in [0, 1]}.
    """
    k_list = [k for k in _normalise_topk(ks) if k is not None]
    prob = _Problem(query_codes, db_codes, query_labels, db_labels, tie_seed)
    chunk = _resolve_chunk(chunk_size, prob.ndb)
    k_max = min(max(k_list), prob.ndb) if k_list else 0

    def work(start: int, stop: int) -> dict[str, np.ndarray]:
        dist = prob.distances(start, stop)
        rel = prob.relevance(start, stop)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k_max]
        hits = np.cumsum(_gather_rows(rel, order), axis=1, dtype=np.int64)
        out = {}
        for k in k_list:
            ke = min(k, prob.ndb)
            out[str(k)] = hits[:, ke - 1] / ke
        return out

    res = _run_chunks(prob.nq, chunk, work, num_workers)
    return {k: float(res[str(k)].mean()) for k in k_list}
