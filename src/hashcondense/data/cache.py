"""On-disk cache of decoded datasets.

Decoding 60,000 JPEGs costs seconds; loading one safetensors file costs a fraction of that.
Each entry is ``<digest>.safetensors`` (``images`` uint8, ``labels`` int64) plus
``<digest>.json`` (the key and the class names), where ``digest`` is the sha256 of the key.
The key names the source exactly (absolute path, size, mtime_ns or a digest of a directory
listing, split, resolution, reader version), so a changed file gets a new entry.

Both files are written to temporary names in the cache directory and moved into place with
``os.replace``, so a reader never sees a half-written file and two processes writing the same
entry cannot corrupt it (the last complete write wins; both write the same content).  An entry
that fails to load or does not match its key is ignored, and the caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "HASHCONDENSE_CACHE"
CACHE_FORMAT = 1


def cache_dir() -> pathlib.Path:
    """Directory of decoded-dataset entries: ``$HASHCONDENSE_CACHE/data`` or ``~/.cache/...``."""
    base = os.environ.get(CACHE_ENV)
    if base:
        root = pathlib.Path(base).expanduser()
    else:
        root = pathlib.Path.home() / ".cache" / "hashcondense"
    return root / "data"


def key_digest(key: Mapping[str, Any]) -> str:
    """Stable sha256 of a JSON-able key (sorted keys, so dict order does not matter)."""
    blob = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def entry_paths(key: Mapping[str, Any]) -> tuple[pathlib.Path, pathlib.Path]:
    """The (safetensors, json) paths of the entry for ``key``."""
    digest = key_digest(key)
    directory = cache_dir()
    return directory / f"{digest}.safetensors", directory / f"{digest}.json"


def load_entry(
    key: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]] | None:
    """Return ``(images, labels, classes)`` for ``key``, or None when absent or unusable."""
    from safetensors.torch import load_file

    tensor_path, meta_path = entry_paths(key)
    if not (tensor_path.is_file() and meta_path.is_file()):
        return None
    digest = key_digest(key)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("digest") != digest or meta.get("key") != json.loads(json.dumps(dict(key))):
            raise ValueError("key mismatch")
        tensors = load_file(str(tensor_path))
        images, labels = tensors["images"], tensors["labels"]
        classes = tuple(str(c) for c in meta["classes"])
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.dtype != torch.int64:
            raise ValueError("bad tensor dtype or shape")
        if labels.shape != (images.shape[0],) or images.shape[0] != meta["n"]:
            raise ValueError("bad tensor length")
    except Exception as exc:  # any unreadable entry is simply rebuilt
        log.warning("ignoring unusable cache entry %s (%s); rebuilding", tensor_path, exc)
        return None
    log.debug("cache hit %s", tensor_path)
    return images, labels, classes


def _atomic_write(path: pathlib.Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def store_entry(
    key: Mapping[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
) -> pathlib.Path | None:
    """Write an entry atomically; return its tensor path, or None when the cache is unwritable.

    A failure to cache is logged, not raised: the data was decoded fine, only slower next time.
    """
    from safetensors.torch import save_file

    tensor_path, meta_path = entry_paths(key)
    digest = key_digest(key)
    meta = {
        "digest": digest,
        "key": dict(key),
        "classes": list(classes),
        "n": int(images.shape[0]),
        "shape": list(images.shape),
    }
    try:
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"images": images.contiguous(), "labels": labels.contiguous()}
        _atomic_write(
            tensor_path,
            lambda tmp: save_file(tensors, tmp, metadata={"digest": digest}),
        )
        _atomic_write(
            meta_path,
            lambda tmp: pathlib.Path(tmp).write_text(json.dumps(meta, indent=1), encoding="utf-8"),
        )
    except OSError as exc:
        log.warning("could not write cache entry %s (%s); continuing without it", tensor_path, exc)
        return None
    log.debug("cached %s", tensor_path)
    return tensor_path
