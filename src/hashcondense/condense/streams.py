"""Counter-based random streams: every draw of a condensation comes from a generator seeded by
a hash of (seed, purpose, class, iteration), never from a generator that earlier draws advanced.

Two properties follow, and the distributed and resumable loops rest on them:
- a rank that owns any subset of the classes draws exactly what a single process draws for
  those classes (results do not depend on the number of ranks);
- the state of every stream at an iteration is a function of that iteration, so a checkpoint
  needs only the iteration number to restore all of them.
"""

from __future__ import annotations

import hashlib

import torch

STREAMS_VERSION = 1  # bump if the derivation below changes (it changes every number)


def stream_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed for the stream ``purpose`` at ``keys`` (class, iteration, ...)."""
    text = ":".join(["hashcondense-stream", str(STREAMS_VERSION), purpose, str(seed),
                     *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def stream(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """A fresh CPU generator for ``purpose`` at ``keys`` (draws on the CPU, so results do not
    depend on the device)."""
    return torch.Generator().manual_seed(stream_seed(seed, purpose, *keys))
