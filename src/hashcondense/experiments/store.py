"""A JSON-lines result store whose cells are identified by a hash of their full config, so a
grid that stops (killed or not) resumes where it stopped and never recomputes a finished cell."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..records import append_jsonl, read_jsonl
from .sharding import file_lock


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit identity of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def canonical(value: Any) -> Any:
    """``value`` in the one spelling an identity hashes: integral floats as ints (300.0 and
    300 are one budget), tuples as lists, mappings with string keys (sorted when hashed)."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ResultStore:
    """Records carry a ``cell`` field; a cell is done once any record with its hash is stored."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict]:
        return read_jsonl(self.path)

    def done(self) -> set[str]:
        return {r["cell"] for r in self.rows() if "cell" in r}

    def add(self, cell: str, records: Iterable[Mapping[str, Any]]) -> None:
        """Append under a file lock: the append rewrites the file, and workers of a sharded
        grid (``bench --shard``) share it."""
        with file_lock(self.path.parent):
            append_jsonl(self.path, [{**r, "cell": cell} for r in records])
