"""Tune IEM's image learning rate (and the judge's step budget) on a validation protocol.

Validation queries and database are carved from the protocol's database (never its query set;
``RetrievalSplit.validation``), so the chosen defaults are not selected on the test queries.

    python benchmarks/tune_iem.py --ipc 10 --lrs 1 5 20 50 --steps 1000

Each (lr, ipc, seed) synthetic set is condensed once per code version and cached under
outputs/tune/; each judged cell is appended to benchmarks/results/tune_iem_<dataset>.jsonl and
skipped when run again. A Markdown table is written next to it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

try:
    import hashcondense  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from condense_bench import code_version  # noqa: E402

from hashcondense.condense import build_condenser  # noqa: E402
from hashcondense.condense.matching import MatchingConfig  # noqa: E402
from hashcondense.data import make_split  # noqa: E402
from hashcondense.evaluation import JudgeConfig, judge  # noqa: E402
from hashcondense.experiments import ResultStore, config_hash  # noqa: E402
from hashcondense.models import default_backbone  # noqa: E402
from hashcondense.normalization import Normalization  # noqa: E402
from hashcondense.recipes import training_recipe  # noqa: E402
from hashcondense.records import atomic_write_text, machine_info, metric_records  # noqa: E402
from hashcondense.synthetic import SyntheticSet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "outputs" / "tune"


def write_markdown(store: ResultStore, path: Path, header: str) -> None:
    rows = [r for r in store.rows() if r["metric"] == "mAP@1000"]
    lines = [header, "", "| method | ipc | image lr | batch_real | judge steps | bits | seed | "
             "validation mAP@1000 | condense s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["ipc"], r["lr"], r["batch_real"],
                                         r["steps"], r["bits"], r["seed"])):
        lines.append(f"| {r['method']} | {r['ipc']} | {r['lr']} | {r['batch_real']} | "
                     f"{r['steps']} | {r['bits']} | {r['seed']} | {100 * r['map']:.2f} | "
                     f"{r['condense_seconds']:.0f} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-root", default=None)
    p.add_argument("--method", default="iem", choices=("iem", "dm"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--lrs", type=float, nargs="+", default=[5.0])
    p.add_argument("--batch-real", type=int, nargs="+", default=[256])
    p.add_argument("--steps", type=int, nargs="+", default=[1000])
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, default=200)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    split = make_split(args.dataset, args.data_root, seed=0)
    val = split.validation(query_per_class=100, database_size=10_000, seed=0)
    norm = Normalization.from_images(split.train.images)
    backbone = default_backbone(split.train.resolution)
    store = ResultStore(RESULTS / f"tune_{args.method}_{args.dataset}.jsonl")
    done = store.done()
    for seed in args.seeds:
        for lr in args.lrs:
            for batch_real in args.batch_real:
                matching = MatchingConfig(lr=lr, batch_real=batch_real, compile="auto")
                condenser = build_condenser(args.method, matching=matching,
                                            iterations=args.iterations)
                ckey = config_hash({"code": code_version(), "condenser": repr(condenser),
                                    "ipc": args.ipc, "seed": seed,
                                    "protocol": split.fingerprint()})
                syn_path = CACHE / ckey / "synthetic.json"
                syn = None
                for steps in args.steps:
                    train = replace(training_recipe("cpu", whole=False), min_steps=steps)
                    config = JudgeConfig(backbone=backbone, bits=args.bits, train=train)
                    key = config_hash({"condense": ckey, "judge": asdict(config),
                                       "validation": val.fingerprint()})
                    if key in done:
                        continue
                    if syn is None:
                        if syn_path.exists():
                            syn = SyntheticSet.load(syn_path)
                        else:
                            t0 = time.perf_counter()
                            syn = condenser.condense(split.train, args.ipc, normalization=norm,
                                                     seed=seed, progress=sys.stderr.isatty())
                            syn.metadata["wall_seconds"] = time.perf_counter() - t0
                            syn.save(syn_path)
                    images, labels = syn.decode()
                    result = judge(images.detach(), labels, val, syn.normalization,
                                   config=config, seed=seed, progress=sys.stderr.isatty())
                    base = {"dataset": args.dataset, "condenser": args.method,
                            "hash_method": "dhd", "profile": "cpu-validation",
                            "method": args.method, "ipc": args.ipc, "lr": lr,
                            "batch_real": batch_real, "steps": steps, "bits": args.bits,
                            "seed": seed, "iterations": args.iterations,
                            "condense_seconds": syn.metadata["wall_seconds"],
                            "train_seconds": result.train_seconds,
                            "validation_fingerprint": val.fingerprint(),
                            "machine": machine_info().get("cpu_model", "")}
                    store.add(key, metric_records(base, result.metrics))
                    print(f"{args.method} ipc={args.ipc} lr={lr} batch_real={batch_real} "
                          f"steps={steps}: val mAP@1000 "
                          f"{100 * result.metrics['mAP@1000']:.2f}", flush=True)
                    write_markdown(store, RESULTS / f"tune_{args.method}_{args.dataset}.md",
                                   f"# {args.method} tuning on the {args.dataset} validation "
                                   f"protocol (`{val.fingerprint()[:16]}`: 1,000 database "
                                   "images as queries, 10,000 as database; the test queries "
                                   "are never used)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
