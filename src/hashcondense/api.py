"""High-level runs behind the CLI: each writes a self-describing folder (config, protocol, seed,
versions, machine, wall times) so any number can be traced back and re-run."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .condense import Budget, Execution, build_condenser, check_ipc, with_runtime
from .condense.driver import DEFAULT_RESUME_EVERY_S, parse_every
from .condense.random import sample_per_class
from .data import ProtocolSpec, RetrievalSplit, make_split, resolve_protocol
from .evaluation import JudgeConfig, evaluate_model, judge
from .hashing import build_hash_method, training_state
from .hashing.checkpoint import load_hashing_model, save_hashing_model
from .hashing.trainer import TrainConfig, train_hashing_network
from .hashing.training_state import TrainCheckpointing
from .models import default_backbone
from .normalization import Normalization
from .recipes import condense_budget
from .records import (
    atomic_write_text,
    machine_info,
    machine_name,
    metric_records,
    versions,
    write_json,
)
from .synthetic import SyntheticSet

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
SKIPPED_FILE = "skipped_images.txt"


def _dataset_fields(spec: ProtocolSpec) -> dict[str, Any]:
    """How a run names its data: the protocol, plus the spec a re-evaluation rebuilds it from."""
    return {"dataset": spec.name if spec.builtin else spec.sources[0],
            "protocol_spec": spec.to_dict()}


def _write_skipped(out: Path, split: RetrievalSplit) -> None:
    if split.skipped:
        atomic_write_text(out / SKIPPED_FILE, "".join(f"{s}\n" for s in split.skipped))


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
    split_options: dict[str, Any] | None = None,
    skip_bad_images: bool = False,
    checkpoints: TrainCheckpointing | None = None,
) -> dict[str, Any]:
    """Train (and optionally evaluate) a hashing network on the protocol's train split, a random
    subset of it, or a synthetic-set file; writes model + run.json (+ metrics.json) to ``out``.
    ``checkpoints`` (:func:`train_checkpointing`) makes a long training resumable."""
    if subset == "random" and (ipc is None or ipc < 1):
        raise ValueError("--subset random needs --ipc >= 1")
    if synthetic is not None and (subset != "whole" or ipc is not None):
        raise ValueError("--synthetic replaces --subset/--ipc; pass only one of them")
    method = build_hash_method(hash_method)  # fail on a bad name before loading any data
    syn = SyntheticSet.load(synthetic) if synthetic is not None else None
    if syn is not None and resolution is None:
        resolution = syn.resolution
    spec = resolve_protocol(dataset, **(split_options or {}))
    split = make_split(spec, data_root, seed=split_seed, resolution=resolution,
                       skip_bad_images=skip_bad_images, progress=progress)
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
    if backbone is None:
        backbone = default_backbone(split.train.resolution)
        log.info("backbone %s for %d px images (ConvNet-3 up to 32 px, ResNetAP-10 above, as "
                 "in the paper)", backbone, split.train.resolution)
    config = JudgeConfig(backbone=backbone, hash_method=hash_method, bits=bits, train=train_config)
    start = time.perf_counter()
    trained = train_hashing_network(
        images, labels, method=method, bits=bits, num_classes=len(split.classes),
        backbone=backbone, config=train_config, seed=seed, progress=progress,
        checkpoints=checkpoints,
    )
    meta = {
        "backbone": backbone, "bits": bits, "num_classes": len(split.classes),
        "in_channels": split.train.channels, "resolution": split.train.resolution,
        "normalization": norm.to_dict(),
    }
    save_hashing_model(out, trained.model, method, meta)
    split.save_indices(out / SPLIT_FILE)
    _write_skipped(out, split)
    run: dict[str, Any] = {
        **_dataset_fields(spec),
        "protocol": split.describe(), "subset": subset, "ipc": ipc,
        "synthetic": str(synthetic) if synthetic else None,
        "synthetic_metadata": syn.metadata if syn is not None else None,
        "subset_indices": chosen, "seed": seed, "split_seed": split_seed,
        "config": asdict(config), "epochs": trained.epochs,
        "train_seconds": trained.seconds, "versions": versions(), "machine": machine_info(),
        **({"resumed_from_epoch": trained.resumed_from} if trained.resumed_from else {}),
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
    if checkpoints is not None:  # only now: a kill during --evaluate still resumes
        training_state.remove(checkpoints.directory)
    return run


def train_checkpointing(out: Path, *, every: str | None = None, resume: bool = False
                        ) -> TrainCheckpointing | None:
    """The checkpoints of ``hashcondense train --checkpoint-every/--resume`` in
    ``out/checkpoints``: every N epochs or so much wall time (10 minutes when only resuming);
    without ``resume`` the run starts afresh and its first save replaces an earlier run's."""
    if every is None and not resume:
        return None
    epochs, seconds = parse_every(every) if every is not None else (None,
                                                                    DEFAULT_RESUME_EVERY_S)
    return TrainCheckpointing(out / "checkpoints", seconds, epochs, resume=resume)


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
    profile: str = "cpu",
    options: dict[str, Any] | None = None,
    compile: str = "auto",
    progress: bool = True,
    split_options: dict[str, Any] | None = None,
    skip_bad_images: bool = False,
    execution: Execution | None = None,
) -> dict[str, Any]:
    """Condense the protocol's train split to ``ipc`` images per class with ``method``; writes
    the synthetic set (safetensors + JSON), a preview grid and condense.json to ``out``.

    The budget is ``profile``'s (recipes.condense_budget); ``iterations``/``seconds`` override.

    ``compile`` reaches condensers that run networks through the shared matching loop;
    ``execution`` says which ranks share the work and where checkpoints go (rank 0 writes
    the outputs; other ranks return ``{"rank": r}``)."""
    condenser = build_condenser(method, **(options or {}))  # bad name/options fail before work
    condenser = with_runtime(condenser, compile=compile)
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    reference = condenser.iterations if condenser.iterative else None
    iterations, seconds = condense_budget(profile, reference, iterations=iterations,
                                          seconds=seconds)
    budget = Budget(iterations, seconds)
    spec = resolve_protocol(dataset, **(split_options or {}))
    split = make_split(spec, data_root, seed=split_seed, resolution=resolution,
                       skip_bad_images=skip_bad_images, progress=progress)
    check_ipc(split.train, ipc)
    norm = Normalization.from_images(split.train.images)
    start = time.perf_counter()
    syn = condenser.condense(split.train, ipc, normalization=norm, seed=seed, budget=budget,
                             progress=progress, execution=execution)
    seconds_taken = time.perf_counter() - start
    world = (execution or Execution()).world
    if not world.is_main:
        return {"rank": world.rank}
    fields = _dataset_fields(spec)
    syn.metadata.update(dataset=fields["dataset"], protocol_fingerprint=split.fingerprint(),
                        split_seed=split_seed, wall_seconds=seconds_taken)
    out.mkdir(parents=True, exist_ok=True)
    _write_skipped(out, split)
    syn_path = syn.save(out / "synthetic")
    preview = syn.export_grid_png(out / "preview.png")
    record = {**fields, "method": method, "ipc": ipc, "seed": seed, "profile": profile,
              "options": options or {},
              "budget": {"iterations": iterations, "seconds": seconds},
              "condense_seconds": seconds_taken, "synthetic": str(syn_path),
              "preview": str(preview), "protocol": split.describe(),
              "condenser": repr(condenser), "metadata": syn.metadata,
              "world": {"size": world.size, "backend": world.backend},
              "versions": versions(), "machine": machine_info()}
    write_json(out / "condense.json", record)
    return record


def evaluate_run(model_dir: Path, *, data_root: str | None = None, precision: str = "auto",
                 compile: str = "auto", progress: bool = True,
                 skip_bad_images: bool = False) -> dict[str, Any]:
    """Re-evaluate a trained model on the exact split it was trained against."""
    model, meta = load_hashing_model(model_dir)
    run_path = model_dir / "run.json"
    run = json.loads(run_path.read_text(encoding="utf-8"))
    if "dataset" not in run:
        raise ValueError(f"{run_path}: no 'dataset' field (not written by 'hashcondense train'?)")
    dataset = (ProtocolSpec.from_dict(run["protocol_spec"]) if "protocol_spec" in run
               else run["dataset"])
    split = make_split(dataset, data_root, resolution=meta["resolution"],
                       indices=model_dir / SPLIT_FILE, skip_bad_images=skip_bad_images,
                       progress=progress)
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


# digits are 8x8; at 16 px IEM's 2x2 multi-formation keeps every tile at the native 8x8
DEMO_RESOLUTION = 16
DEMO_IPC = 2
DEMO_ITERATIONS = 60


@dataclass(frozen=True)
class DemoConfig:
    """The demo's budgets: about a minute on two CPU cores for all three training sets."""

    ipc: int = DEMO_IPC
    iterations: int = DEMO_ITERATIONS
    batch_real: int = 64  # real images per class per IEM step (the paper's 256 is for CIFAR)
    whole_epochs: int = 40
    subset_steps: int = 150


def demo(out: Path, *, seed: int = 0, config: DemoConfig | None = None,
         progress: bool = True) -> list[dict[str, Any]]:
    """The main job on scikit-learn's digits: IEM condenses the train split to ``ipc`` images
    per class; a 32-bit DHD network trained on them is compared, on one judge, with Random at
    the same ipc and with the whole train split (mAP@all).

    Writes results.jsonl, summary.md, split.json and iem_preview.png to ``out``.
    """
    config = config or DemoConfig()
    split = make_split("digits", seed=seed, resolution=DEMO_RESOLUTION, progress=progress)
    norm = Normalization.from_images(split.train.images)
    start = time.perf_counter()
    condenser = build_condenser("iem", matching={"batch_real": config.batch_real})
    syn = condenser.condense(split.train, config.ipc, normalization=norm, seed=seed,
                             budget=Budget(iterations=config.iterations), progress=progress)
    condense_seconds = time.perf_counter() - start
    iem_images, iem_labels = syn.decode()
    idx = sample_per_class(split.train.labels, config.ipc, seed=seed)
    sets = [
        ("whole", None, norm.normalize(split.train.images), split.train.labels, 0.0,
         TrainConfig(epochs=config.whole_epochs, batch_size=128)),
        ("random", config.ipc, norm.normalize(split.train.images[idx]), split.train.labels[idx],
         0.0, TrainConfig(epochs=1, min_steps=config.subset_steps, batch_size=64)),
        ("iem", config.ipc, iem_images.detach(), iem_labels, condense_seconds,
         TrainConfig(epochs=1, min_steps=config.subset_steps, batch_size=64)),
    ]
    rows, records = [], []
    machine, code_versions = machine_name(), versions()
    for condenser_name, ipc, images, labels, seconds, train in sets:
        result = judge(images, labels, split, norm, config=JudgeConfig(bits=32, train=train),
                       seed=seed, progress=progress)
        name = "whole train split" if ipc is None else f"{condenser_name} {ipc}/class"
        stored = len(split.train) if ipc is None else ipc * len(split.classes)
        rows.append({"training_set": name, "images": stored, **result.metrics,
                     "condense_seconds": seconds, "train_seconds": result.train_seconds})
        iem = condenser_name == "iem"
        base = {"dataset": "digits", "condenser": condenser_name, "method": condenser_name,
                "options": {"matching": {"batch_real": config.batch_real}} if iem else {},
                "ipc": ipc, "seed": seed, "task": "retrieval", "hash_method": "dhd", "bits": 32,
                "judge": {"recipe": "demo", "steps": result.steps,
                          "batch_size": train.batch_size,
                          "epochs": train.epochs if ipc is None else None},
                "budget": {"iterations": config.iterations, "seconds": None, "snapshots": []}
                if iem else None,
                "condense_seconds": seconds, "train_seconds": result.train_seconds,
                "profile": "demo", "machine": machine, "versions": code_versions,
                "protocol": "test", "protocol_fingerprint": split.fingerprint()}
        records += metric_records(base, result.metrics)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.jsonl",
                      "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    split.save_indices(out / SPLIT_FILE)
    syn.export_grid_png(out / "iem_preview.png")
    lines = ["| training set | images | mAP@all | P@H<=2 | condense s | train s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['training_set']} | {r['images']} | {100 * r['mAP@all']:.2f} | "
              f"{100 * r['P@H<=2']:.2f} | {r['condense_seconds']:.1f} | "
              f"{r['train_seconds']:.1f} |" for r in rows]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return rows


__all__ = ["DemoConfig", "condense_run", "demo", "evaluate_run", "select_training_set", "train_run"]
