"""Checkpoints of a hashing network's training, so an hour-long judge survives a kill.

A checkpoint is taken at an epoch's end and holds everything the rest of the run reads: the
network's parameters and buffers, the optimiser's state and the trainer's generator (tensors,
in safetensors; the loop never draws from torch's global generator), and the loop's position
(epoch, step, elapsed seconds, the per-epoch losses and times, in JSON). Resuming from it
continues the same run: on CPU the result is bit-identical to an uninterrupted one.

Files of one checkpoint share a generation name, ``train-<epoch>``: ``train-00000120.safetensors``
(written first), then ``train-00000120.json`` (the commit point; it records the state file's
SHA-256 and the run's fingerprint). Older generations are removed after a newer one commits, so
a kill at any moment leaves one complete checkpoint. A checkpoint of another run (other images,
recipe, seed or method: another fingerprint) is never resumed from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from ..records import atomic_write_bytes, newest_generations, write_json

log = logging.getLogger(__name__)

FORMAT = "hashcondense-training-state"
VERSION = 1
# bump when the training loop's maths or draws change: a checkpoint of the old loop then no
# longer resumes (it would splice two loops into one run)
TRAINER_VERSION = 1
_NAME = re.compile(r"^train-(\d{8})\.json$")
_GENERATION = re.compile(r"^train-(\d{8})\.")


@dataclass(frozen=True)
class TrainCheckpointing:
    """Save the training state into ``directory`` at the first epoch end ``every_seconds`` after
    the last save (or every ``every_epochs`` epochs); with ``resume`` a run starts from the
    folder's checkpoint when it is this same run's (else its first save replaces it)."""

    directory: Path
    every_seconds: float | None = 120.0
    every_epochs: int | None = None
    resume: bool = True

    def __post_init__(self) -> None:
        if self.every_seconds is not None and not self.every_seconds > 0:
            raise ValueError(f"checkpoint interval must be positive, got {self.every_seconds}")
        if self.every_epochs is not None and self.every_epochs < 1:
            raise ValueError(f"checkpoint every must be >= 1 epoch, got {self.every_epochs}")
        if self.every_seconds is None and self.every_epochs is None:
            raise ValueError("give every_seconds or every_epochs")


@dataclass
class TrainPosition:
    """Where the loop stands after ``epoch`` completed epochs."""

    epoch: int
    step: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def fingerprint(parts: dict[str, Any], *tensors: torch.Tensor) -> str:
    """SHA-256 of a run's settings (JSON), the loop's version and torch's, and the bytes of its
    training tensors (hashed in place, without a copy of a CPU tensor)."""
    digest = hashlib.sha256(json.dumps(
        {**parts, "trainer_version": TRAINER_VERSION, "torch": torch.__version__},
        sort_keys=True, default=str).encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(memoryview(t.view(torch.uint8).numpy()))
    return digest.hexdigest()


def capture(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            generator: torch.Generator) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a training state, and the optimiser entries that were Python numbers."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars = []
    for index, entry in optimizer.state_dict()["state"].items():
        for name, value in entry.items():
            key = f"optimizer.{index}.{name}"
            if not isinstance(value, torch.Tensor):  # e.g. a step count kept as an int
                scalars.append(key)
                value = torch.as_tensor(value)
            tensors[key] = value
    tensors["generator"] = generator.get_state()  # the loop's only source of randomness
    return tensors, scalars


def restore(tensors: dict[str, torch.Tensor], scalars: list[str], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """Put a captured state back into a freshly built model, optimiser and generator."""
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                           if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.item() if key in scalars else value
    groups = optimizer.state_dict()["param_groups"]  # the recipe's, as this run built them
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    generator.set_state(tensors["generator"])


def save(directory: str | Path, run: str, position: TrainPosition,
         tensors: dict[str, torch.Tensor], scalars: list[str]) -> Path:
    """Write one generation for run fingerprint ``run``, then remove the older ones."""
    directory = Path(directory)
    stem = f"train-{position.epoch:08d}"
    data = _st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                    metadata={"format": FORMAT, "version": str(VERSION)})
    atomic_write_bytes(directory / f"{stem}.safetensors", data)
    path = directory / f"{stem}.json"
    write_json(path, {"format": FORMAT, "version": VERSION, "run": run,
                      "state_file": f"{stem}.safetensors",
                      "state_sha256": hashlib.sha256(data).hexdigest(), "scalars": scalars,
                      "epoch": position.epoch, "step": position.step,
                      "seconds": position.seconds, "losses": position.losses,
                      "epoch_seconds": position.epoch_seconds})
    for old in directory.glob("train-*"):
        match = _GENERATION.match(old.name)
        if match and int(match.group(1)) != position.epoch:
            old.unlink(missing_ok=True)
    log.debug("training checkpoint at epoch %d: %s", position.epoch, path)
    return path


def latest(directory: str | Path, run: str
           ) -> tuple[TrainPosition, dict[str, torch.Tensor], list[str]] | None:
    """The newest complete checkpoint of run ``run`` in ``directory`` (None: none there)."""
    directory = Path(directory)
    for path in newest_generations(directory, _NAME):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} checkpoint")
            if meta["run"] != run:
                raise ValueError("it belongs to another run (other images, recipe, seed or "
                                 "method)")
            data = (directory / meta["state_file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["state_sha256"]:
                raise ValueError("its state file does not match the recorded digest")
            position = TrainPosition(int(meta["epoch"]), int(meta["step"]),
                                     float(meta["seconds"]), [float(x) for x in meta["losses"]],
                                     [float(x) for x in meta["epoch_seconds"]])
            return position, dict(_st_load(data)), [str(s) for s in meta["scalars"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("not resuming from %s: %s", path, err)
    return None


def remove(directory: str | Path) -> None:
    """Delete every generation, and the folder when nothing else lives there."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    # with the temporary files of a write that a kill cut short (atomic_write_bytes' names)
    for path in [*directory.glob("train-*"), *directory.glob(".train-*.tmp")]:
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass  # other files live there
