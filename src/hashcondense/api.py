"""High-level runs behind the CLI: each writes a self-describing folder (config, protocol, seed,
versions, machine, wall times) so any number can be traced back and re-run."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .condense import Budget, Execution, build_condenser, check_ipc, with_runtime
from .condense.random import sample_per_class
from .data import RetrievalSplit, make_split
from .evaluation import JudgeConfig, evaluate_model, judge
from .hashing import build_hash_method
from .hashing.checkpoint import load_hashing_model, save_hashing_model
from .hashing.trainer import TrainConfig, train_hashing_network
from .models import default_backbone
from .normalization import Normalization
from .records import (
    atomic_write_text,
    machine_info,
    metric_records,
    versions,
    write_json,
)
from .synthetic import SyntheticSet

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


def select_training_set(split: RetrievalSplit, subset: str, ipc: int | None, seed: int):
    """The uint8 training images/labels for ``subset`` ('whole' or 'random' with ``ipc``)."""
    if subset == "whole":
        if ipc is not None:
            raise ValueError("--ipc only applies to --subset random")
        return split.train.images, split.train.labels, None
    if subset == "random":
        if ipc is None:
            raise ValueError("--subset random needs --ipc")
        idx = sample_per_class(split.train.labels, ipc, seed=seed)
        return split.train.images[idx], split.train.labels[idx], idx.tolist()
    raise ValueError(f"unknown subset {subset!r}; choose whole or random")


def check_synthetic_matches(syn: SyntheticSet, split: RetrievalSplit, source: str) -> None:
    """Refuse a synthetic set condensed from another protocol split or class list."""
    fingerprint = syn.metadata.get("protocol_fingerprint")
    if fingerprint is None:
        raise ValueError(f"{source}: records no protocol_fingerprint, so its split cannot be "
                         "checked (condense with 'hashcondense condense')")
    if fingerprint != split.fingerprint():
        raise ValueError(f"{source}: condensed from split {fingerprint[:12]}, not from this "
                         f"split {split.fingerprint()[:12]} (pass the same --dataset/--split-seed)")
    if tuple(syn.classes) != tuple(split.classes):
        raise ValueError(f"{source}: classes {list(syn.classes)} differ from the protocol's")


def train_run(
    *,
    dataset: str,
    data_root: str | None,
    resolution: int | None,
    split_seed: int,
    subset: str,
    ipc: int | None,
    hash_method: str,
    backbone: str | None,
    bits: int,
    train_config: TrainConfig,
    seed: int,
    out: Path,
    synthetic: Path | None = None,
    evaluate: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (and optionally evaluate) a hashing network on the protocol's train split, a random
    subset of it, or a synthetic-set file; writes model + run.json (+ metrics.json) to ``out``."""
    if subset == "random" and (ipc is None or ipc < 1):
        raise ValueError("--subset random needs --ipc >= 1")
    if synthetic is not None and (subset != "whole" or ipc is not None):
        raise ValueError("--synthetic replaces --subset/--ipc; pass only one of them")
    method = build_hash_method(hash_method)  # fail on a bad name before loading any data
    syn = SyntheticSet.load(synthetic) if synthetic is not None else None
    if syn is not None and resolution is None:
        resolution = syn.resolution
    split = make_split(dataset, data_root, seed=split_seed, resolution=resolution)
    chosen = None
    if syn is not None:
        check_synthetic_matches(syn, split, str(synthetic))
        norm = syn.normalization
        images, labels = syn.decode()
        images = images.detach()
    else:
        norm = Normalization.from_images(split.train.images)
        raw, labels, chosen = select_training_set(split, subset, ipc, seed)
        images = norm.normalize(raw)
    backbone = backbone or default_backbone(split.train.resolution)
    config = JudgeConfig(backbone=backbone, hash_method=hash_method, bits=bits, train=train_config)
    start = time.perf_counter()
    trained = train_hashing_network(
        images, labels, method=method, bits=bits, num_classes=len(split.classes),
        backbone=backbone, config=train_config, seed=seed, progress=progress,
    )
    meta = {
        "backbone": backbone, "bits": bits, "num_classes": len(split.classes),
        "in_channels": split.train.channels, "resolution": split.train.resolution,
        "normalization": norm.to_dict(),
    }
    save_hashing_model(out, trained.model, method, meta)
    split.save_indices(out / SPLIT_FILE)
    run: dict[str, Any] = {
        "dataset": dataset, "protocol": split.describe(), "subset": subset, "ipc": ipc,
        "synthetic": str(synthetic) if synthetic else None,
        "synthetic_metadata": syn.metadata if syn is not None else None,
        "subset_indices": chosen, "seed": seed, "split_seed": split_seed,
        "config": asdict(config), "epochs": trained.epochs,
        "train_seconds": trained.seconds, "versions": versions(), "machine": machine_info(),
    }
    if evaluate:
        ev = evaluate_model(trained.model, split, norm, precision=train_config.precision,
                            compile=train_config.compile,
                            progress=progress)
        run.update(metrics=ev.metrics, encode_seconds=ev.encode_seconds,
                   metric_seconds=ev.metric_seconds)
        write_json(out / "metrics.json", {"metrics": ev.metrics, "model": str(out)})
    run["wall_seconds"] = time.perf_counter() - start
    write_json(out / "run.json", run)
    return run


def condense_run(
    *,
    dataset: str,
    data_root: str | None,
    resolution: int | None,
    split_seed: int,
    method: str,
    ipc: int,
    seed: int,
    out: Path,
    iterations: int | None = None,
    seconds: float | None = None,
    options: dict[str, Any] | None = None,
    compile: str = "auto",
    progress: bool = True,
    execution: Execution | None = None,
) -> dict[str, Any]:
    """Condense the protocol's train split to ``ipc`` images per class with ``method``; writes
    the synthetic set (safetensors + JSON), a preview grid and condense.json to ``out``.

    ``compile`` reaches condensers that run networks through the shared matching loop;
    ``execution`` says which ranks share the work and where checkpoints go (rank 0 writes
    the outputs; other ranks return ``{"rank": r}``)."""
    condenser = build_condenser(method, **(options or {}))  # bad name/options fail before work
    condenser = with_runtime(condenser, compile=compile)
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    budget = None if iterations is None and seconds is None else Budget(iterations, seconds)
    split = make_split(dataset, data_root, seed=split_seed, resolution=resolution)
    check_ipc(split.train, ipc)
    norm = Normalization.from_images(split.train.images)
    start = time.perf_counter()
    syn = condenser.condense(split.train, ipc, normalization=norm, seed=seed, budget=budget,
                             progress=progress, execution=execution)
    seconds_taken = time.perf_counter() - start
    world = (execution or Execution()).world
    if not world.is_main:
        return {"rank": world.rank}
    syn.metadata.update(dataset=dataset, protocol_fingerprint=split.fingerprint(),
                        split_seed=split_seed, wall_seconds=seconds_taken)
    out.mkdir(parents=True, exist_ok=True)
    syn_path = syn.save(out / "synthetic")
    preview = syn.export_grid_png(out / "preview.png")
    record = {"dataset": dataset, "method": method, "ipc": ipc, "seed": seed,
              "condense_seconds": seconds_taken, "synthetic": str(syn_path),
              "preview": str(preview), "protocol": split.describe(),
              "condenser": repr(condenser), "metadata": syn.metadata,
              "world": {"size": world.size, "backend": world.backend},
              "versions": versions(), "machine": machine_info()}
    write_json(out / "condense.json", record)
    return record


def evaluate_run(model_dir: Path, *, data_root: str | None = None, precision: str = "auto",
                 compile: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a trained model on the exact split it was trained against."""
    model, meta = load_hashing_model(model_dir)
    run_path = model_dir / "run.json"
    run = json.loads(run_path.read_text(encoding="utf-8"))
    if "dataset" not in run:
        raise ValueError(f"{run_path}: no 'dataset' field (not written by 'hashcondense train'?)")
    split = make_split(run["dataset"], data_root, resolution=meta["resolution"],
                       indices=model_dir / SPLIT_FILE)
    norm = Normalization(tuple(meta["normalization"]["mean"]),
                         tuple(meta["normalization"]["std"]))
    ev = evaluate_model(model, split, norm, precision=precision, compile=compile,
                        progress=progress)
    out = {"metrics": ev.metrics, "encode_seconds": ev.encode_seconds,
           "metric_seconds": ev.metric_seconds,
           "protocol": split.describe(), "model": str(model_dir), "precision": precision,
           "versions": versions(), "machine": machine_info()}
    write_json(model_dir / "metrics.json", out)
    return out


DEMO_RESOLUTION = 8  # digits are 8x8; ConvNet-3 then ends in a 128-d feature
DEMO_IPC = 5


def demo(
    out: Path,
    *,
    seed: int = 0,
    whole_epochs: int = 100,
    subset_epochs: int = 200,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Whole digits train split vs a random 5-per-class subset, 32-bit DHD, mAP@all.

    Runs in about a minute on two CPU cores; writes results.jsonl, summary.md and split.json.
    """
    split = make_split("digits", seed=seed, resolution=DEMO_RESOLUTION)
    norm = Normalization.from_images(split.train.images)
    rows, records = [], []
    for subset, ipc, epochs in (("whole", None, whole_epochs),
                                ("random", DEMO_IPC, subset_epochs)):
        images, labels, _ = select_training_set(split, subset, ipc, seed)
        config = JudgeConfig(bits=32, train=TrainConfig(epochs=epochs, batch_size=128))
        result = judge(norm.normalize(images), labels, split, norm, config=config, seed=seed,
                       progress=progress)
        name = "whole" if ipc is None else f"random {ipc}/class"
        rows.append({"training_set": name, "images": len(labels), **result.metrics,
                     "train_seconds": result.train_seconds})
        base = {"dataset": "digits", "condenser": subset, "ipc": ipc, "bits": 32,
                "hash_method": "dhd", "seed": seed, "condense_seconds": 0.0,
                "train_seconds": result.train_seconds, "profile": "demo",
                "machine": machine_info().get("cpu_model", ""),
                "protocol_fingerprint": split.fingerprint()}
        records += metric_records(base, result.metrics)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.jsonl",
                      "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    split.save_indices(out / SPLIT_FILE)
    lines = ["| training set | images | mAP@all | P@H<=2 | train s |", "|---|---|---|---|---|"]
    lines += [f"| {r['training_set']} | {r['images']} | {100 * r['mAP@all']:.2f} | "
              f"{100 * r['P@H<=2']:.2f} | {r['train_seconds']:.1f} |" for r in rows]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return rows


__all__ = ["condense_run", "demo", "evaluate_run", "select_training_set", "train_run"]
