"""Calibration of the judge's training recipe at equal compute: DHD (32 bits) on the CIFAR-10
train split for a few epochs at several batch sizes (and optionally on a random subset), scored
on the 1,000 queries against every 4th database image (13,500) to keep encoding cheap.

    python benchmarks/calibrate_recipe.py --epochs 6 --batch-sizes 256 64 32

Writes benchmarks/results/calibrate_recipe.{jsonl,md}. Numbers are for choosing a recipe, not
for comparison with the paper (the database is a quarter of the protocol's).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

try:
    import hashcondense  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hashcondense.data import make_split  # noqa: E402
from hashcondense.evaluation import JudgeConfig, judge  # noqa: E402
from hashcondense.experiments import ResultStore, config_hash  # noqa: E402
from hashcondense.hashing.trainer import TrainConfig  # noqa: E402
from hashcondense.normalization import Normalization  # noqa: E402
from hashcondense.records import atomic_write_text, machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 64, 32])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    split = make_split("cifar10", args.data_root, seed=0)
    quarter = dataclasses.replace(split, database=split.database.subset(range(0, 54000, 4)))
    norm = Normalization.from_images(split.train.images)
    store = ResultStore(RESULTS / "calibrate_recipe.jsonl")
    cpu = machine_info().get("cpu_model", "")
    for batch in args.batch_sizes:
        config = JudgeConfig(bits=32, train=TrainConfig(epochs=args.epochs, batch_size=batch))
        key = config_hash({"config": dataclasses.asdict(config), "seed": args.seed,
                           "protocol": split.fingerprint(), "db": "every 4th"})
        if key in store.done():
            continue
        r = judge(norm.normalize(split.train.images), split.train.labels, quarter, norm,
                  config=config, seed=args.seed, progress=False)
        store.add(key, [{"epochs": args.epochs, "batch_size": batch, "steps": r.steps,
                         "seed": args.seed, "train_seconds": r.train_seconds, "machine": cpu,
                         **{k: v for k, v in r.metrics.items()}}])
        print(f"batch {batch}: mAP@1000 {100 * r.metrics['mAP@1000']:.2f} "
              f"({r.train_seconds:.0f}s)", flush=True)
    lines = ["# Recipe calibration: batch size at equal epochs (DHD 32 bits, CIFAR-10 train "
             "split, db = every 4th image)", "",
             "| epochs | batch | steps | mAP@1000 | mAP@all | train s |",
             "|---|---|---|---|---|---|"]
    for row in store.rows():
        lines.append(f"| {row['epochs']} | {row['batch_size']} | {row['steps']} | "
                     f"{100 * row['mAP@1000']:.2f} | {100 * row['mAP@all']:.2f} | "
                     f"{row['train_seconds']:.0f} |")
    atomic_write_text(RESULTS / "calibrate_recipe.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
