"""Checkpoints of a condensation: a :class:`SyntheticSet` (built by the loop's snapshot code and
saved by ``SyntheticSet.save``) plus a safetensors file of the optimiser state and any stateful
random generator, and the loop's position (iteration, steps, elapsed seconds) in the set's JSON.

Files of one checkpoint share a generation name, ``ckpt-<iteration>``:
``ckpt-00000120-state.safetensors`` (written first), ``ckpt-00000120.safetensors`` and
``ckpt-00000120.json`` (written last: the commit point; it records the SHA-256 of the state
file). Older generations are deleted only after a newer one is committed, so a kill at any
moment leaves at least one complete checkpoint; :func:`latest` takes the newest that verifies.
Tensors are full (every class), whatever the number of ranks, so a job may resume with a
different world size.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from ..records import atomic_write_bytes, newest_generations
from ..synthetic import SyntheticSet

log = logging.getLogger(__name__)

FORMAT = "hashcondense-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.json$")


@dataclass(frozen=True)
class Position:
    """Where a loop stands: completed iterations, inner steps (DSA/IDC) and elapsed seconds."""

    iteration: int
    steps: int
    seconds: float


@dataclass(frozen=True)
class Checkpoint:
    position: Position
    synthetic: SyntheticSet
    state: dict[str, torch.Tensor]
    path: Path


def _stem(directory: Path, iteration: int) -> Path:
    return directory / f"ckpt-{iteration:08d}"


def save(directory: str | Path, position: Position, synthetic: SyntheticSet,
         state: dict[str, torch.Tensor]) -> Path:
    """Write one checkpoint generation, then remove the older ones; returns the JSON path."""
    directory = Path(directory)
    stem = _stem(directory, position.iteration)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    data = _st_save(tensors, metadata={"format": FORMAT, "version": str(VERSION)})
    state_path = stem.parent / f"{stem.name}-state.safetensors"
    atomic_write_bytes(state_path, data)
    meta = dict(synthetic.metadata)
    meta["checkpoint"] = {"format": FORMAT, "version": VERSION,
                          "iteration": position.iteration, "steps": position.steps,
                          "seconds": position.seconds, "state_file": state_path.name,
                          "state_sha256": hashlib.sha256(data).hexdigest()}
    committed = SyntheticSet(images=synthetic.images, labels=synthetic.labels,
                             classes=synthetic.classes, normalization=synthetic.normalization,
                             factor=synthetic.factor, resolution=synthetic.resolution,
                             metadata=meta).save(stem)
    for old in directory.glob("ckpt-*"):
        match = re.match(r"^ckpt-(\d{8})", old.name)
        if match and int(match.group(1)) != position.iteration:
            old.unlink(missing_ok=True)
    log.info("checkpoint at iteration %d: %s", position.iteration, committed)
    return committed


def _load(json_path: Path) -> Checkpoint:
    synthetic = SyntheticSet.load(json_path)
    info: dict[str, Any] = synthetic.metadata.get("checkpoint") or {}
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(f"{json_path}: not a {FORMAT} v{VERSION} checkpoint")
    data = (json_path.parent / info["state_file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != info["state_sha256"]:
        raise ValueError(f"{json_path}: its state file does not match the recorded digest")
    position = Position(int(info["iteration"]), int(info["steps"]), float(info["seconds"]))
    synthetic.metadata.pop("checkpoint")
    return Checkpoint(position, synthetic, dict(_st_load(data)), json_path)


def latest(directory: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint in ``directory`` (None when there is none)."""
    for path in newest_generations(directory, _NAME):
        try:
            return _load(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("skipping checkpoint %s: %s", path, err)
    return None


def latest_iteration(directory: str | Path) -> int | None:
    """The iteration of the newest complete checkpoint, without keeping its tensors."""
    found = latest(directory)
    return None if found is None else found.position.iteration


def remove(directory: str | Path) -> None:
    """Delete every checkpoint generation (after the final set is safely written)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in directory.glob("ckpt-*"):
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass  # other files live there
