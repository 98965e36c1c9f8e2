"""The loop every iterative condenser runs: budget, snapshots, checkpoints, resume, and the
stop decision shared by all ranks.

A condenser hands :func:`drive` one iteration (``step``), a way to build the current synthetic
set (``snapshot``, a collective under several ranks: it gathers every class) and, to be
resumable, its extra state (optimiser buffers, stateful generators) as full-size tensors. The
driver owns the clock: a wall-clock budget or a checkpoint-every-minutes policy is decided by
an OR over the ranks, so all ranks stop (or save) at the same iteration.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..distributed import World, session
from ..synthetic import SyntheticSet
from . import checkpoint
from .base import Budget, SnapshotCallback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpointing:
    """Save every ``every_iterations`` iterations and/or ``every_seconds`` of wall time into
    ``directory``; ``resume`` starts from the newest checkpoint there (if any)."""

    directory: Path
    every_iterations: int | None = None
    every_seconds: float | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.every_iterations is not None and self.every_iterations < 1:
            raise ValueError(f"checkpoint every must be >= 1 iteration, got "
                             f"{self.every_iterations}")
        if self.every_seconds is not None and not self.every_seconds > 0:
            raise ValueError(f"checkpoint interval must be positive, got {self.every_seconds}")


def parse_every(text: str) -> tuple[int | None, float | None]:
    """``"50"`` → every 50 iterations; ``"10m"``, ``"90s"``, ``"1h"`` → every so much time."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or (not m.group(2) and "." in m.group(1)):
        raise ValueError(f"checkpoint interval {text!r}: use N (iterations) or N s/m/h "
                         "(wall time), e.g. 50 or 10m")
    if not m.group(2):
        return int(m.group(1)), None
    return None, float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


@dataclass(frozen=True)
class Execution:
    """How a condensation runs, beside what it computes: which ranks share it and where it
    checkpoints. Not part of a set's identity (a result does not depend on either)."""

    world: World = field(default_factory=World)
    checkpointing: Checkpointing | None = None


DEFAULT_RESUME_EVERY_S = 600.0  # --resume without --checkpoint-every keeps saving this often


@contextlib.contextmanager
def command_execution(out: Path, *, resume: bool = False,
                      every: str | None = None) -> Iterator[Execution]:
    """The execution of one ``condense`` command: this process's rank (joining torchrun's
    group), checkpoints in ``out/checkpoints`` when asked for; after a successful run rank 0
    removes them (the final set supersedes them)."""
    policy = None
    if every is not None or resume:
        iterations, seconds = parse_every(every) if every is not None else (
            None, DEFAULT_RESUME_EVERY_S)
        policy = Checkpointing(out / "checkpoints", iterations, seconds, resume)
    with session() as world:
        yield Execution(world, policy)
        if policy is not None and world.is_main:
            checkpoint.remove(policy.directory)


# one iteration: (index, out_of_time) → (last loss, inner steps done, completed); DSA/IDC stop
# mid-iteration and report completed=False when out_of_time() turns true between their steps
Step = Callable[[int, Callable[[], bool]], tuple[float, int, bool]]
Snapshot = Callable[[int, int, float], SyntheticSet]  # (iterations, steps, seconds) → set


@dataclass(frozen=True)
class Resumable:
    """A loop's state beyond the synthetic images, as full (all-class) tensors: ``save`` is a
    collective under several ranks; ``restore`` takes the checkpoint's images and state."""

    save: Callable[[], dict[str, torch.Tensor]]
    restore: Callable[[torch.Tensor, dict[str, torch.Tensor]], None]


def drive(budget: Budget, step: Step, *, snapshot: Snapshot, desc: str,
          execution: Execution | None = None, resumable: Resumable | None = None,
          on_snapshot: SnapshotCallback | None = None, progress: bool = True) -> SyntheticSet:
    """Run ``step`` until ``budget`` is spent (iterations, or seconds including the time before
    a resume); deliver snapshots (rank 0), write checkpoints; return the final set with
    ``final_loss`` (and ``resumed_from`` when resumed)."""
    execution = execution or Execution()
    world, policy = execution.world, execution.checkpointing
    if policy is not None and resumable is None:
        raise ValueError(f"{desc}: this condenser cannot checkpoint")
    it, steps, before = 0, 0, 0.0
    resumed = None
    if policy is not None and policy.resume:
        found = checkpoint.latest(policy.directory)
        mine = -1 if found is None else found.position.iteration
        if world.broadcast_int([mine])[0] != mine:
            raise ValueError(f"rank {world.rank} sees checkpoint iteration {mine} in "
                             f"{policy.directory}, rank 0 another: the checkpoint folder must "
                             "be shared by all ranks")
        if found is not None:
            assert resumable is not None
            resumable.restore(found.synthetic.images, found.state)
            it, steps, before = (found.position.iteration, found.position.steps,
                                 found.position.seconds)
            resumed = {"iteration": it, "seconds": before}
            log.info("%s: resuming at iteration %d (%.1fs done) from %s", desc, it, before,
                     found.path)
        else:
            log.info("%s: no checkpoint in %s, starting afresh", desc, policy.directory)
    total = budget.iterations if budget.iterations is not None else math.inf
    bar = tqdm(total=None if math.isinf(total) else total, initial=it, desc=desc,
               disable=None if progress and world.is_main else True, leave=False)
    start = time.perf_counter() - before
    last_save, saved_at = time.perf_counter(), it
    loss = float("nan")

    def elapsed() -> float:
        return time.perf_counter() - start

    def out_of_time() -> bool:
        return budget.exhausted(it, elapsed())

    def checkpoint_due() -> bool:
        if policy is None or it == saved_at:
            return False
        return bool((policy.every_iterations and it % policy.every_iterations == 0) or (
            policy.every_seconds and time.perf_counter() - last_save >= policy.every_seconds))

    while True:
        stop, save_now = world.any(out_of_time(), checkpoint_due())
        if stop:
            break
        if save_now:
            assert policy is not None and resumable is not None
            position = checkpoint.Position(it, steps, elapsed())
            current, state = snapshot(it, steps, position.seconds), resumable.save()
            if world.is_main:
                checkpoint.save(policy.directory, position, current, state)
            last_save, saved_at = time.perf_counter(), it
        loss, done, completed = step(it, out_of_time)
        steps += done
        if not completed:
            break
        it += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_snapshot is not None and it in budget.snapshots:
            seconds = elapsed()
            current = snapshot(it, steps, seconds)
            if world.is_main:
                on_snapshot(it, seconds, current)
    bar.close()
    seconds = elapsed()
    log.info("%s: %d iterations (%d steps) in %.1fs, final loss %.4f", desc, it, steps,
             seconds, loss)
    result = snapshot(it, steps, seconds)
    result.metadata["final_loss"] = loss
    if resumed is not None:
        result.metadata["resumed_from"] = resumed
    return result
