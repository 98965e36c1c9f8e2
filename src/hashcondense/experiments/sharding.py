"""Several workers on one grid: which cells a worker takes, and the file locks that let them
share one result store and one set cache.

- A cell belongs to shard ``int(cell key, 16) mod N``: the key is a hash of the cell's full
  config, so the assignment needs no coordination, is stable across reruns and spreads the
  cells of one set over the workers (each judges its own cells of a shared set).
- The store is one JSON-lines file rewritten atomically on every append; two workers would
  lose each other's rows, so an append holds an exclusive ``flock`` on a lock file beside it
  (held for milliseconds). One file keeps the report, the dry run and resume unchanged (per-
  worker files would need every reader to merge them).
- A synthetic set is condensed under a lock on its cache folder; another worker that needs the
  same set first does its other cells and then waits, and finds the set done.

``flock`` works between processes on one machine and on most cluster file systems (NFSv4,
Lustre, GPFS with locking on); where the file system has no locks, give each worker its own
``--out`` and ``--cache-dir``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".hashcondense-lock"  # ignored by the repository's .gitignore


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` (``0/1`` is the whole grid)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N")

    def owns(self, cell_key: str) -> bool:
        return int(cell_key, 16) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"1/4"`` → worker 1 of 4; ``SLURM_ARRAY_TASK_ID`` fits straight in as I."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/4")
    return Shard(int(m.group(1)), int(m.group(2)))


@contextlib.contextmanager
def file_lock(folder: str | os.PathLike, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``folder``'s lock file; yields False (holding nothing) when
    ``wait`` is off and another process holds it. Released on exit, also by a kill."""
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
