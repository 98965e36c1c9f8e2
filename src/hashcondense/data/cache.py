"""Decode a collection once into a memory-mapped uint8 file; later runs map it in milliseconds.

An entry is three files in the cache directory, named by the sha256 of its key (the
collection's path, size and mtime or a digest of its listing, its layout, the resolution and the
reader version, so a changed collection or decoder gets a new entry):

* ``<digest>.npy``  — images ``(N, C, R, R)`` uint8 in numpy's ``.npy`` format, opened with
  ``np.load(mmap_mode="c")``: nothing is read until a row is touched, so a condensation's memory
  follows the rows it uses (its per-class batches), not the collection's size;
* ``<digest>.labels.npy`` — int64 labels;
* ``<digest>.json`` — the key, classes, pool row ranges, member names and skipped files.

Decoding runs in worker processes (one per core) that write disjoint rows of one temporary
``.npy``; the files are renamed into place only when complete (the JSON last, so a reader that
finds it finds the rest).  A per-entry lock file (``fcntl.flock``) makes a second process that
asks for the same entry wait for the first instead of decoding twice; an entry that fails to
load or does not match its key is ignored and rebuilt, never misread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np

from .collection import Collection, MemberReader
from .images import decode_image
from .sources import DataError

log = logging.getLogger(__name__)

CACHE_ENV = "HASHCONDENSE_CACHE"
CACHE_FORMAT = 2  # 1: safetensors entries (read fully into memory); 2: memory-mapped .npy
READER_VERSION = 2  # bump when decoding changes, so stale entries are never used
CHUNK = 512  # images per worker task
PARALLEL_MIN = 4096  # fewer images decode in-process (starting workers costs ~2 s)


def cache_dir() -> pathlib.Path:
    """Directory of decoded-dataset entries: ``$HASHCONDENSE_CACHE/data`` or ``~/.cache/...``."""
    base = os.environ.get(CACHE_ENV)
    root = pathlib.Path(base).expanduser() if base else pathlib.Path.home() / ".cache/hashcondense"
    return root / "data"


def key_digest(key: Mapping[str, Any]) -> str:
    """Stable sha256 of a JSON-able key (sorted keys, so dict order does not matter)."""
    blob = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)
class Decoded:
    """A decoded collection: rows of ``images`` in pool order (``pools[name] = (start, stop)``)."""

    images: np.ndarray  # (N, C, R, R) uint8, usually a copy-on-write memory map
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    pools: dict[str, tuple[int, int]]
    sources: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (source, reason) of images that failed to decode


def decode_collection(coll: Collection, resolution: int, *, cache: bool = True,
                      workers: int | None = None, progress: bool = True) -> Decoded:
    """Decoded images of every pool of ``coll`` at ``resolution``, from the cache when present."""
    key = {"reader": READER_VERSION, "layout": coll.layout, "resolution": int(resolution),
           **coll.signature}
    if not cache:
        with tempfile.TemporaryDirectory(prefix="hashcondense-decode-") as tmp:
            path = pathlib.Path(tmp) / "entry"
            _build(coll, resolution, key, path, workers, progress)
            entry = _load(path, key, mmap=False)
        assert entry is not None
        return entry
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cache directory %s unusable (%s); decoding without a cache", directory, exc)
        return decode_collection(coll, resolution, cache=False, workers=workers,
                                 progress=progress)
    stem = directory / key_digest(key)
    hit = _load(stem, key)
    if hit is not None:
        return hit
    with _lock(stem):
        hit = _load(stem, key)  # another process may have built it while we waited
        if hit is not None:
            return hit
        _build(coll, resolution, key, stem, workers, progress)
    entry = _load(stem, key)
    if entry is None:
        raise DataError(f"decoded {coll.path} but could not read back cache entry {stem}")
    return entry


@contextlib.contextmanager
def _lock(stem: pathlib.Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no lock; atomic renames still keep entries whole
        yield
        return
    with open(f"{stem}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _paths(stem: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    return (stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".labels.npy"),
            stem.with_name(stem.name + ".json"))


def _load(stem: pathlib.Path, key: Mapping[str, Any], *, mmap: bool = True) -> Decoded | None:
    images_path, labels_path, meta_path = _paths(stem)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != json.loads(json.dumps(dict(key))):
            raise ValueError("key mismatch")
        images = np.load(images_path, mmap_mode="c" if mmap else None, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
        n = int(meta["n"])
        if images.dtype != np.uint8 or images.ndim != 4 or list(images.shape) != meta["shape"]:
            raise ValueError(f"images are {images.dtype} {images.shape}, expected {meta['shape']}")
        if labels.dtype != np.int64 or labels.shape != (n,) or images.shape[0] != n:
            raise ValueError("labels do not match the images")
        base = meta["base"]
        sources = tuple(base + m for m in meta["members"])
        pools = {k: (int(a), int(b)) for k, (a, b) in meta["pools"].items()}
        if len(sources) != n or max((b for _, b in pools.values()), default=0) != n:
            raise ValueError("member list does not match the images")
    except Exception as exc:  # any unusable entry is rebuilt
        log.warning("ignoring unusable cache entry %s (%s); rebuilding", meta_path, exc)
        return None
    log.debug("cache hit %s", images_path)
    return Decoded(images, labels, tuple(meta["classes"]), pools, sources,
                   tuple((base + m, r) for m, r in meta["skipped"]))


# --------------------------------------------------------------------------- decoding

_worker_state: dict[str, Any] = {}  # per worker process: its open reader and output map


def _worker_init(path: str, kind: str, out: str, prefix: str) -> None:
    _worker_state["reader"] = MemberReader(pathlib.Path(path), kind)
    _worker_state["out"] = np.load(out, mmap_mode="r+")
    _worker_state["prefix"] = prefix  # errors name the whole source, not just the member


def _decode_rows(start: int, members: list[str], resolution: int
                 ) -> tuple[int, list[bool], list[tuple[int, str]]]:
    reader, out = _worker_state["reader"], _worker_state["out"]
    gray: list[bool] = []
    bad: list[tuple[int, str]] = []
    for i, member in enumerate(members):
        try:
            name = _worker_state["prefix"] + member
            arr, is_gray = decode_image(reader.read(member), resolution, name=name)
        except (OSError, KeyError) as exc:
            bad.append((start + i, f"cannot read image {name}: {exc}".replace("\n", " ")))
            continue
        except DataError as exc:
            bad.append((start + i, str(exc).replace("\n", " ")))
            gray.append(True)
            continue
        out[start + i] = arr.transpose(2, 0, 1)
        gray.append(is_gray)
    out.flush()
    return start, gray, bad


def _build(coll: Collection, resolution: int, key: Mapping[str, Any], stem: pathlib.Path,
           workers: int | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    members = [m for p in coll.pool_names for m in coll.members[p]]
    labels = np.asarray([lab for p in coll.pool_names for lab in coll.labels[p]], dtype=np.int64)
    n = len(members)
    images_path, labels_path, meta_path = _paths(stem)
    tmp = images_path.with_name(f".{images_path.name}.{os.getpid()}.tmp.npy")
    workers = workers or min(os.cpu_count() or 1, 8)
    if n < PARALLEL_MIN:
        workers = 1
    start_time = time.perf_counter()
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                  shape=(n, 3, resolution, resolution)).flush()
        gray = np.ones(n, dtype=bool)
        bad: list[tuple[int, str]] = []
        tasks = [(s, members[s:s + CHUNK]) for s in range(0, n, CHUNK)]
        bar = tqdm(total=n, desc=f"decode {coll.path.name}", unit="img", disable=not progress,
                   mininterval=0.5, leave=False)
        if workers == 1:
            _worker_init(str(coll.path), coll.kind, str(tmp), coll.source_prefix)
            try:
                for s, chunk in tasks:
                    _collect(_decode_rows(s, chunk, resolution), gray, bad, bar)
            finally:
                _worker_state.pop("reader").close()
                _worker_state.clear()
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP can deadlock
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(str(coll.path), coll.kind, str(tmp),
                                               coll.source_prefix)) as pool:
                futures = [pool.submit(_decode_rows, s, chunk, resolution) for s, chunk in tasks]
                for fut in as_completed(futures):
                    _collect(fut.result(), gray, bad, bar)
        bar.close()
        keep = np.ones(n, dtype=bool)
        keep[[i for i, _ in bad]] = False
        channels = 1 if keep.any() and gray[keep].all() else 3
        final = _finish(tmp, keep, channels)
        pools, pos = {}, 0
        for p in coll.pool_names:
            size = len(coll.members[p])
            pools[p] = (int(keep[:pos].sum()), int(keep[:pos + size].sum()))
            pos += size
        base = coll.source_prefix
        meta = {"key": dict(key), "classes": list(coll.classes), "n": int(keep.sum()),
                "shape": [int(keep.sum()), channels, resolution, resolution], "pools": pools,
                "base": base, "members": [m for m, k in zip(members, keep, strict=True) if k],
                "skipped": [(members[i], reason) for i, reason in sorted(bad)],
                "layout": coll.layout, "seconds": time.perf_counter() - start_time}
        _atomic(labels_path, lambda p: np.save(p, labels[keep], allow_pickle=False), ".npy")
        os.replace(final, images_path)
        _atomic(meta_path, lambda p: pathlib.Path(p).write_text(json.dumps(meta),
                                                                encoding="utf-8"), ".json")
    finally:
        for leftover in (tmp, tmp.with_suffix(".c1.npy")):
            with contextlib.suppress(OSError):
                leftover.unlink()
    seconds = time.perf_counter() - start_time
    log.info("decoded %d images of %s at %d px in %.1fs (%.0f images/s, %d workers)%s", n,
             coll.path, resolution, seconds, n / max(seconds, 1e-9), workers,
             f"; {len(bad)} unreadable" if bad else "")


def _collect(result: tuple[int, list[bool], list[tuple[int, str]]], gray: np.ndarray,
             bad: list[tuple[int, str]], bar: Any) -> None:
    start, flags, errors = result
    gray[start:start + len(flags)] = flags
    bad.extend(errors)
    bar.update(len(flags))


def _finish(tmp: pathlib.Path, keep: np.ndarray, channels: int) -> pathlib.Path:
    """Drop unreadable rows and, for an all-grey collection, keep one channel."""
    if keep.all() and channels == 3:
        return tmp
    src = np.load(tmp, mmap_mode="r")
    out_path = tmp.with_suffix(".c1.npy")
    rows = np.flatnonzero(keep)
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8,
                                    shape=(len(rows), channels) + src.shape[2:])
    for s in range(0, len(rows), 4096):
        out[s:s + 4096] = src[rows[s:s + 4096], :channels]
    out.flush()
    del out, src
    os.replace(out_path, tmp)
    return tmp


def _atomic(path: pathlib.Path, write: Any, suffix: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
