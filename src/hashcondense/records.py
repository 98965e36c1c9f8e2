"""Result records and safe file output.

Every benchmark and experiment appends to the same JSON-lines schema (one object per
(dataset, condenser, ipc, bits, hash method, seed, metric)); see the README for the fields.
Files are written to a temporary file in the target folder and renamed, so a crash never leaves a
half-written output.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RECORD_FIELDS = (
    "dataset", "condenser", "ipc", "bits", "hash_method", "seed", "metric", "map",
    "condense_seconds", "train_seconds", "profile", "machine",
)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def append_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Append rows by rewriting the file atomically (the stores are small; safety beats speed)."""
    existing = read_jsonl(path)
    lines = [json.dumps(r, sort_keys=True, default=str) for r in [*existing, *rows]]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def machine_info() -> dict[str, Any]:
    """A short description of where a number was measured."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict[str, str]:
    import numpy
    import torch

    from . import __version__

    out = {"hashcondense": __version__, "python": sys.version.split()[0],
           "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        if rev.returncode == 0:
            out["git"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def metric_records(base: Mapping[str, Any], metrics: Mapping[str, float]) -> list[dict]:
    """One record per metric (the schema's unit), each carrying the shared fields of ``base``."""
    missing = [f for f in RECORD_FIELDS if f not in ("metric", "map") and f not in base]
    if missing:
        raise ValueError(f"result record lacks fields {missing}")
    return [{**base, "metric": name, "map": float(value)} for name, value in metrics.items()]
