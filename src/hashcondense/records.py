"""Result records and safe file output.

Every judged set is recorded in one JSON-lines schema (``RESULT_FIELDS``: one object per
dataset, condenser, ipc, bits, hash method, seed and metric); micro-benchmarks record
measurements (``MEASUREMENT_FIELDS``).
Files are written to a temporary file in the target folder and renamed, so a crash never leaves a
half-written output.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Field:
    """One field of a result record: its name, the JSON types it may take, what it means."""

    name: str
    types: tuple[type, ...]
    meaning: str
    required: bool = True


_NUM = (int, float)
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))

# One schema for every judged training set, whoever wrote it (``hashcondense bench``, the demo,
# migrated records): one record per (set, task, hashing method, bits, metric). The README's
# "Results records" table is this tuple; tests check every committed record against it.
RESULT_FIELDS: tuple[Field, ...] = (
    Field("dataset", (str,), "built-in protocol name or your collection's path"),
    Field("condenser", (str,), "the set's label in tables (`iem`, `iem-na`, `random`, `whole`)"),
    Field("method", (str,), "the registered condenser (`whole`: the whole train split)"),
    Field("options", (dict,), "the condenser options the grid gave ({} = defaults)"),
    Field("ipc", _OPT_INT, "images per class (null for `whole`)"),
    Field("seed", (int,), "seed of the subset / condensation / training"),
    Field("task", (str,), "`retrieval` or `classification`"),
    Field("hash_method", _OPT_STR, "`dhd`, `dpn`, `orthohash` (null for classification)"),
    Field("bits", _OPT_INT, "code length K (null for classification)"),
    Field("metric", (str,), "`mAP@1000`, `mAP@all`, `mAP@all_tie_aware`, `P@H<=2`, `accuracy`"),
    Field("value", _NUM, "the metric's value, a fraction in [0, 1]"),
    Field("judge", (dict,), "the judge's training: recipe, steps trained, batch_size, epochs "
          "(and cutmix, strong_augment, strong_augment_mode where set)"),
    Field("budget", (dict, type(None)), "condensation budget: iterations, seconds, snapshots "
          "(null for coresets and the whole split)"),
    Field("condense_seconds", _NUM, "wall time of the condensation"),
    Field("train_seconds", _NUM, "wall time of the judge's training"),
    Field("profile", (str,), "compute profile (`smoke`, `cpu`, `paper`, `demo`)"),
    Field("machine", (str,), "CPU (and GPU) model it ran on"),
    Field("versions", (dict,), "hashcondense, python, torch, numpy, git revision"),
    Field("protocol", (str,), "`test` (the protocol's queries) or `validation` (carved from "
          "the database, for tuning)"),
    Field("protocol_fingerprint", (str,), "hash of the split's indices and images"),
    Field("cell", (str,), "content hash of the cell's config (the store's key)", False),
    Field("condense_cell", (str,), "content hash of the condensed set", False),
    Field("experiment", (str,), "the grid's name", False),
    Field("run_id", (str,), "the `bench` invocation that wrote it", False),
    Field("iteration", _OPT_INT, "snapshot iteration (null: the final set)", False),
    Field("iterations", _OPT_INT, "iterations the set was condensed for", False),
    Field("updates", _OPT_INT, "updates of every class's images the set had (one a DM / IEM "
          "iteration, `outer_loop` a DSA one, `inner_loop` an IDC one; its metadata's `steps`): "
          "Fig. 3's x axis", False),
    Field("resolution", _OPT_INT, "image side in pixels", False),
    Field("backbone", (str,), "the judge's backbone", False),
    Field("encode_seconds", _NUM, "wall time of encoding queries and database", False),
    Field("precision", (str,), "`auto`, `fp32`, `bf16`", False),
    Field("compute_dtype", (str,), "what `precision` resolved to on this machine: `fp32` or "
          "`bf16` (`auto` is bf16 only where the hardware has native bf16)", False),
    Field("algorithm_version", (int,), "the condenser's algorithm version (absent: 1)", False),
    Field("finished_at", (str,), "UTC time the cell finished", False),
    Field("provenance", (dict,), "where a migrated record came from (script, file, commit)",
          False),
)
RECORD_FIELDS = tuple(f.name for f in RESULT_FIELDS if f.required)

# Micro-benchmarks (speed, search, data scale, scale-out) measure time, not judged sets: their
# records are free-form beyond these fields, and never use a result field with another meaning.
MEASUREMENT_FIELDS: tuple[Field, ...] = (
    Field("what", (str,), "what was measured"),
    Field("machine", (str,), "CPU (and GPU) model it ran on"),
    Field("versions", (dict,), "hashcondense, python, torch, numpy, git revision"),
    Field("date", (str,), "when it was measured"),
)
# names of the schemas before this one, refused with the field that replaced them
RETIRED_FIELDS = dict(map="value", judge_steps="judge.steps", steps="judge.steps")


def record_problems(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``record`` under the one schema (empty: it conforms). A record with a
    ``what`` field is a measurement; any other is a result of a judged set."""
    problems = [f"field {k!r} is retired; use {v!r}" for k, v in RETIRED_FIELDS.items()
                if k in record]
    fields = MEASUREMENT_FIELDS if "what" in record else RESULT_FIELDS
    for f in fields:
        if f.name not in record:
            if f.required:
                problems.append(f"lacks field {f.name!r} ({f.meaning})")
            continue
        value = record[f.name]
        if isinstance(value, bool) or not isinstance(value, f.types):
            problems.append(f"field {f.name!r} is {type(value).__name__}, expected "
                            + " or ".join(t.__name__ for t in f.types))
    if fields is RESULT_FIELDS:
        known = {f.name for f in RESULT_FIELDS}
        problems += [f"unknown field {k!r}" for k in sorted(set(record) - known)]
        if isinstance(record.get("judge"), dict):
            missing = {"recipe", "steps", "batch_size", "epochs"} - set(record["judge"])
            problems += [f"judge lacks {sorted(missing)}"] if missing else []
    return problems


def check_records(path: str | os.PathLike) -> None:
    """Raise ValueError naming the file, line and problems of the first bad record."""
    for n, record in enumerate(read_jsonl(path), 1):
        problems = record_problems(record)
        if problems:
            raise ValueError(f"{path}:{n}: {'; '.join(problems)}")


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


def newest_generations(directory: str | os.PathLike, name: re.Pattern[str]) -> list[Path]:
    """The files of ``directory`` whose names match ``name`` (its group 1: a generation
    number), newest first: where a checkpoint loader starts, falling back to older ones."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in directory.iterdir()
                   if (m := name.match(p.name)))
    return [p for _, p in reversed(found)]


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


def machine_name(info: Mapping[str, Any] | None = None) -> str:
    """The short form records carry: the CPU model, and the GPU when there is one."""
    info = machine_info() if info is None else info
    name = str(info.get("cpu_model") or info.get("processor") or "unknown")
    return f"{name} + {info['gpu']}" if info.get("gpu") else name


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
    missing = [f for f in RECORD_FIELDS if f not in ("metric", "value") and f not in base]
    if missing:
        raise ValueError(f"result record lacks fields {missing}")
    return [{**base, "metric": name, "value": float(value)} for name, value in metrics.items()]
