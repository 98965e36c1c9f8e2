"""Speed of hashcondense's mAP vs a naive DeepHash-pytorch-style implementation.

Setup: 1,000 queries x 54,000 database items, 64-bit codes, 10 classes (class centre codes with
random bit flips, database sorted by class as benchmark files usually are), fixed seed.
Timed: mAP@1000 and mAP@all, median of REPEATS runs after one warm-up.

The naive baseline is the usual loop: +-1 float32 matmul distances, then per query a full
``np.argsort`` and a vectorised AP. For a like-for-like answer it applies the same tie rule as
the library (seeded database permutation + stable argsort), and the script asserts that both
give the same numbers before timing.

Run: ``python benchmarks/map_speed.py``; writes benchmarks/results/map_speed.{json,md}.
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import hashcondense  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hashcondense.records import (  # noqa: E402
    atomic_write_text,
    machine_info,
    versions,
    write_json,
)
from hashcondense.retrieval import mean_average_precision  # noqa: E402

SEED = 0
N_QUERY, N_DB, N_BITS, N_CLASSES = 1_000, 54_000, 64, 10
FLIP_PROB = 0.25
TOPK = 1000
REPEATS = 5
RESULTS = Path(__file__).resolve().parent / "results"


def make_data(seed: int = SEED):
    """Class-structured +-1 codes: each item is its class centre with bits flipped at random."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (N_CLASSES, N_BITS), dtype=np.int8)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, N_CLASSES, n)
        bits = centres[labels] ^ (rng.random((n, N_BITS)) < FLIP_PROB)
        return (bits * 2 - 1).astype(np.float32), labels

    q, ql = sample(N_QUERY)
    db, dl = sample(N_DB)
    by_class = np.argsort(dl, kind="stable")
    return q, db[by_class], ql, dl[by_class]


def naive_map(q, db, ql, dl, topk=None, tie_seed=0) -> float:
    """DeepHash-pytorch style: float matmul distances, full argsort per query, AP per query.
    Uses the same tie rule as the library (seeded permutation, then stable sort)."""
    perm = np.random.default_rng(tie_seed).permutation(len(dl))
    db, dl = db[perm], dl[perm]
    n_bits = q.shape[1]
    hamm = 0.5 * (n_bits - q @ db.T)  # float32 (nq, ndb)
    cut = len(dl) if topk is None else min(topk, len(dl))
    aps = np.zeros(len(ql))
    for i in range(len(ql)):
        order = np.argsort(hamm[i], kind="stable")[:cut]
        rel = (dl[order] == ql[i]).astype(np.float64)
        n_rel = int(rel.sum())
        if n_rel == 0:
            continue
        count = np.arange(1, n_rel + 1, dtype=np.float64)
        where = np.flatnonzero(rel) + 1.0
        aps[i] = float(np.mean(count / where))
    return float(aps.mean())


def time_it(fn, repeats: int = REPEATS) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main() -> dict:
    info = {**machine_info(), **versions(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    q, db, ql, dl = make_data()
    print(f"data: {N_QUERY} queries x {N_DB} db, {N_BITS} bits, {N_CLASSES} classes")

    cases = {f"mAP@{TOPK}": TOPK, "mAP@all": None}
    values, timings = {}, {}
    for name, k in cases.items():
        ours = mean_average_precision(q, db, ql, dl, k, tie_seed=SEED)
        naive = naive_map(q, db, ql, dl, k, tie_seed=SEED)
        assert abs(ours - naive) < 1e-9, f"{name}: ours {ours!r} != naive {naive!r}"
        values[name] = ours
        t_ours, all_ours = time_it(lambda k=k: mean_average_precision(q, db, ql, dl, k))
        print(f"{name}: {ours:.6f}  ours median {t_ours * 1e3:.1f} ms", flush=True)
        t_naive, all_naive = time_it(lambda k=k: naive_map(q, db, ql, dl, k))
        print(f"{name}: naive median {t_naive * 1e3:.1f} ms  ratio {t_naive / t_ours:.1f}x")
        timings[name] = {
            "ours_median_s": t_ours,
            "naive_median_s": t_naive,
            "ratio_naive_over_ours": t_naive / t_ours,
            "ours_runs_s": all_ours,
            "naive_runs_s": all_naive,
        }

    report = {
        "benchmark": "map_speed",
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "seed": SEED,
        "sizes": {
            "n_query": N_QUERY,
            "n_db": N_DB,
            "n_bits": N_BITS,
            "n_classes": N_CLASSES,
            "flip_prob": FLIP_PROB,
            "topk": TOPK,
        },
        "repeats": REPEATS,
        "tie_rule": "seeded db permutation (default_rng(seed).permutation) + stable sort",
        "naive": "float32 +-1 matmul distances + per-query full stable np.argsort + AP",
        "map_values": values,
        "timings": timings,
    }
    write_json(RESULTS / "map_speed.json", report)

    lines = [
        "# mAP speed: hashcondense vs naive",
        "",
        f"{N_QUERY} queries x {N_DB} database, {N_BITS} bits, {N_CLASSES} classes, "
        f"seed {SEED}; median of {REPEATS} runs after a warm-up. "
        f"Machine: {info.get('cpu_model', info['processor'])}, {info['cpu_count']} CPUs, "
        f"numpy {info['numpy']}, torch {info['torch']}; {report['timestamp_utc']}.",
        "",
        "| metric | value | ours (s) | naive (s) | naive / ours |",
        "|---|---|---|---|---|",
    ]
    for name, t in timings.items():
        lines.append(
            f"| {name} | {values[name]:.4f} | {t['ours_median_s']:.3f} | "
            f"{t['naive_median_s']:.3f} | {t['ratio_naive_over_ours']:.1f}x |"
        )
    lines += [
        "",
        "Naive: float32 +-1 matmul distances, full stable argsort per query, AP per query, same",
        "tie rule (both results asserted equal). Load average at start: "
        f"{info['loadavg_at_start']}.",
        "",
    ]
    atomic_write_text(RESULTS / "map_speed.md", "\n".join(lines))
    print(f"wrote {RESULTS / 'map_speed.json'} and {RESULTS / 'map_speed.md'}")
    return report


if __name__ == "__main__":
    main()
