"""The one place that knows about ranks: who this process is, which classes it owns, and the
few collectives the condensation loop needs (gather per-class tensors, agree on a stop flag).

A :class:`World` is created once per process (:func:`session`) and passed explicitly; the
default ``World()`` is a single process and never touches ``torch.distributed``. Under
``torchrun`` the process group uses NCCL when CUDA is available (each rank then computes on
``cuda:LOCAL_RANK``) and gloo otherwise.

Every collective here moves tensors only (no pickled objects). A collective that fails because
another rank died raises :class:`RankFailure`, whose message says how to continue. torch is
imported inside the functions, so the CLI can name :class:`RankFailure` without loading it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1_800.0  # a rank waits this long for its peers before giving up


class RankFailure(RuntimeError):
    """Another rank stopped (crashed, killed, out of memory) while this one waited for it."""


def backend_for(cuda_available: bool) -> str:
    """NCCL where ranks compute on GPUs, gloo on CPUs."""
    return "nccl" if cuda_available else "gloo"


def class_slice(num_classes: int, rank: int, size: int) -> range:
    """Contiguous, balanced blocks (sizes differ by at most one): rank r owns
    ``[r·C//N, (r+1)·C//N)``, so a rank reads one run of classes."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside a world of size {size}")
    return range(rank * num_classes // size, (rank + 1) * num_classes // size)


@dataclass(frozen=True)
class World:
    """This process's place in the job; ``World()`` is the single-process job."""

    rank: int = 0
    size: int = 1
    backend: str | None = None  # None: no process group (size 1)

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"invalid rank {self.rank} in a world of size {self.size}")
        if self.size > 1 and self.backend is None:
            raise ValueError("a world of more than one process needs a backend")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the outputs and records."""
        return self.rank == 0

    def owned_classes(self, num_classes: int) -> range:
        if num_classes < self.size:
            raise ValueError(f"{num_classes} classes cannot be shared by {self.size} ranks "
                             "(every rank needs at least one class)")
        return class_slice(num_classes, self.rank, self.size)

    def _device(self) -> torch.device:
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" \
            else torch.device("cpu")

    def _collective(self, what: str, fn) -> None:
        try:
            fn()
        except RankFailure:
            raise
        except RuntimeError as err:  # gloo/NCCL report a dead peer as a RuntimeError subclass
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise RankFailure(
                f"rank {self.rank}/{self.size}: another rank stopped during {what} ({first}); "
                "restart the job with --resume to continue from the last checkpoint") from err

    def gather_classes(self, local: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per-class blocks of every rank, in class order, on every rank.

        ``local`` is ``(k·n_owned, *rest)``, class-major with ``k`` rows per owned class (the
        same ``k`` and ``rest`` on every rank); returns ``(k·num_classes, *rest)`` on
        ``local``'s device. Blocks are padded to the largest rank's share for ``all_gather``.
        """
        import torch

        if self.size == 1:
            return local
        owned = len(self.owned_classes(num_classes))
        if local.shape[0] % owned:
            raise ValueError(f"{local.shape[0]} rows are not a whole number per class "
                             f"({owned} classes owned)")
        k = local.shape[0] // owned
        widest = -(-num_classes // self.size)
        device = self._device()
        padded = local.new_zeros((widest * k, *local.shape[1:]), device=device)
        padded[: local.shape[0]] = local.detach().to(device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._collective("a gather", lambda: torch.distributed.all_gather(parts, padded))
        blocks = [parts[r][: len(class_slice(num_classes, r, self.size)) * k]
                  for r in range(self.size)]
        return torch.cat(blocks).to(local.device)

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over the ranks: a stop (time budget) or checkpoint decision taken
        on one rank's clock is taken by all, at the same iteration."""
        import torch

        if self.size == 1:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64,
                         device=self._device())
        self._collective("a stop/checkpoint vote", lambda: torch.distributed.all_reduce(
            t, op=torch.distributed.ReduceOp.MAX))
        return tuple(bool(v) for v in t.cpu().tolist())

    def broadcast_int(self, values: Sequence[int]) -> list[int]:
        """Rank 0's ``values`` on every rank (e.g. the iteration a resumed job starts at)."""
        import torch

        if self.size == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.int64, device=self._device())
        self._collective("a broadcast", lambda: torch.distributed.broadcast(t, src=0))
        return [int(v) for v in t.cpu().tolist()]


def world_from_environment(environ: dict[str, str] | None = None) -> World:
    """The world torchrun (or Slurm + torchrun) describes in ``WORLD_SIZE``/``RANK``; joins the
    process group when there is more than one process. Without those variables: one process."""
    import torch

    env = os.environ if environ is None else environ
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(env["RANK"])
    backend = backend_for(torch.cuda.is_available())
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", "0")))  # "cuda" now means our GPU
    if not torch.distributed.is_initialized():
        timeout = float(env.get("HASHCONDENSE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        torch.distributed.init_process_group(backend, timeout=dt.timedelta(seconds=timeout))
    log.info("rank %d of %d (%s)", rank, size, backend)
    return World(rank=rank, size=size, backend=backend)


@contextlib.contextmanager
def session(environ: dict[str, str] | None = None) -> Iterator[World]:
    """The process's :class:`World` for the duration of a command; leaves the group at the end,
    all ranks together after a barrier (a rank that raised leaves without waiting for the
    others)."""
    import torch

    world = world_from_environment(environ)
    previous = None
    if world.size > 1:
        def stopped(signum: int, frame: object) -> None:
            raise RankFailure(f"rank {world.rank}/{world.size}: stopped by the launcher "
                              "(SIGTERM), most likely because another rank failed; restart "
                              "the job with --resume to continue from the last checkpoint")

        previous = signal.signal(signal.SIGTERM, stopped)  # torchrun stops the survivors so
    finished = False
    try:
        yield world
        finished = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if world.size > 1 and torch.distributed.is_initialized():
            # No rank tears its group down while a peer still uses it (a gloo rank that left
            # first could abort at exit); a peer dead by then gets the collectives' message.
            try:
                if finished:
                    world._collective("the closing barrier", torch.distributed.barrier)
            finally:
                torch.distributed.destroy_process_group()
