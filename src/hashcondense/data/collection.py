"""Any labelled image collection as named pools of (file, class) members.

A *collection* is a directory, a ``.zip`` archive or a manifest file.  Its layout is detected
(and logged) in this order:

* (c) ``given``:  ``train/``, ``query/`` and ``database/`` folders of ``<class>/<image>`` — the
  three parts of the retrieval split are used as they are;
* (b) ``split``:  ``train/<class>/…`` with ``test/`` or ``val/<class>/…`` — queries come from
  test/val, train images and database from train (the ``imagenet10`` rule);
* (a) ``pool``:   ``<class>/<image>`` — one pool that the split rule divides;
* (d) a manifest: a ``.csv`` (header ``path,label[,split]``) or ``.jsonl`` file (one object per
  line with ``path``, ``label`` and optionally ``split``); paths are relative to the manifest's
  folder.  ``split`` values ``train``/``test``/``val`` give layout (b), ``train``/``query``/
  ``database`` layout (c), none layout (a).

All of a directory or archive may sit under one top-level folder (as archives usually do).
Images may be nested below their class folder.  Hidden entries (``.DS_Store``, ``._*``,
``__MACOSX/``) and files without an image extension are ignored; an empty class folder is a
class with no images (the split rule then names it).  Classes are the sorted folder names, or
the manifest's labels (numerically sorted when they are all integers).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import pathlib
import zipfile
from dataclasses import dataclass
from typing import Any

from .images import is_image_name
from .sources import DataError

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
LAYOUTS = ("pool", "split", "given")
POOLS: dict[str, tuple[str, ...]] = {
    "pool": ("pool",),
    "split": ("train", "test"),
    "given": ("train", "query", "database"),
}
_TEST_ALIASES = ("test", "val")
_SPLIT_WORDS = frozenset({"train", "test", "val", "query", "database"})
ZIP_SEPARATOR = "!/"


@dataclass(frozen=True, eq=False)
class Collection:
    """The members of a collection, grouped into pools; nothing decoded yet.

    ``members[pool]`` are file names relative to ``base`` (zip member names for archives) and
    ``labels[pool]`` their class indices into ``classes``.
    """

    path: pathlib.Path
    kind: str  # "dir", "zip" or "manifest"
    layout: str  # one of LAYOUTS
    classes: tuple[str, ...]
    members: dict[str, list[str]]
    labels: dict[str, list[int]]
    signature: dict[str, Any]

    @property
    def pool_names(self) -> tuple[str, ...]:
        return POOLS[self.layout]

    @property
    def base(self) -> pathlib.Path:
        """What member names are relative to: the folder, the archive, the manifest's folder."""
        return self.path.parent if self.kind == "manifest" else self.path

    def __len__(self) -> int:
        return sum(len(m) for m in self.members.values())

    @property
    def source_prefix(self) -> str:
        """Prefix of every member's source string (see :meth:`source_of`)."""
        if self.kind == "zip":
            return f"{self.path}{ZIP_SEPARATOR}"
        return str(self.base) + "/"

    def source_of(self, member: str) -> str:
        """A string that :func:`read_source_bytes` reads back: a path or ``zip!/member``."""
        return self.source_prefix + member

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "layout": self.layout,
                "classes": len(self.classes),
                "images": {p: len(m) for p, m in self.members.items()}}


class MemberReader:
    """Reads member bytes of one collection; open one per process (zip handles are not shared)."""

    def __init__(self, path: pathlib.Path, kind: str) -> None:
        self.base = path.parent if kind == "manifest" else path
        self._zip = zipfile.ZipFile(path) if kind == "zip" else None

    def read(self, member: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(member)
        return (self.base / member).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> MemberReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_source_bytes(source: str) -> bytes:
    """The bytes of one image named by ``Collection.source_of`` (a path, or ``archive!/member``)."""
    if ZIP_SEPARATOR in source:
        archive, member = source.split(ZIP_SEPARATOR, 1)
        if pathlib.Path(archive).is_file():
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
    return pathlib.Path(source).read_bytes()


def is_collection_path(dataset: str) -> bool:
    """Whether ``dataset`` names a path (a folder, archive or manifest) rather than a protocol."""
    p = pathlib.Path(dataset).expanduser()
    return (os.sep in dataset or "/" in dataset or p.suffix.lower() in (".zip",) + MANIFEST_SUFFIXES
            or p.exists())


def open_collection(path: str | os.PathLike) -> Collection:
    """List a folder, zip or manifest and detect its layout (see the module docstring)."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise DataError(f"dataset path not found: {path}")
    path = path.resolve()
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        coll = _from_manifest(path)
    elif path.is_file():
        coll = _from_tree(path, "zip")
    elif path.is_dir():
        coll = _from_tree(path, "dir")
    else:
        raise DataError(f"{path} is neither a folder, a .zip nor a manifest (.csv/.jsonl)")
    log.info("%s: layout (%s) %s, %d classes, %s", path, "abc"[LAYOUTS.index(coll.layout)],
             coll.layout, len(coll.classes),
             ", ".join(f"{p} {len(m)}" for p, m in coll.members.items()))
    return coll


# --------------------------------------------------------------------------- folders and zips


def _list_tree(path: pathlib.Path, kind: str) -> tuple[list[tuple[str, ...]], set[tuple[str, ...]],
                                                      dict[str, Any]]:
    """(image files, folders, signature) of a folder or archive, hidden entries skipped."""
    files: list[tuple[str, ...]] = []
    dirs: set[tuple[str, ...]] = set()
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"cannot open archive {path}: {exc}") from None
        for name in names:
            parts = tuple(p for p in name.split("/") if p)
            if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            if name.endswith("/"):
                dirs.add(parts)
            elif is_image_name(name):
                files.append(parts)
            for i in range(1, len(parts)):
                dirs.add(parts[:i])
        st = path.stat()
        signature = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return files, dirs, signature
    h = hashlib.sha256()
    count = 0
    stack: list[tuple[str, ...]] = [()]
    while stack:  # scandir: one system call lists a folder with its entries' types and stats
        rel = stack.pop()
        with os.scandir(path.joinpath(*rel)) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for e in entries:
            if e.name.startswith(".") or e.name == "__MACOSX":
                continue
            if e.is_dir():
                subdirs.append(rel + (e.name,))
            elif e.is_file():
                st = e.stat()
                h.update(f"{'/'.join(rel + (e.name,))}\0{st.st_size}\0{st.st_mtime_ns}\n"
                         .encode())
                count += 1
                if is_image_name(e.name):
                    files.append(rel + (e.name,))
        dirs.update(subdirs)
        stack.extend(reversed(subdirs))
    return files, dirs, {"path": str(path), "files": count, "listing": h.hexdigest()}


def _children(dirs: set[tuple[str, ...]], prefix: tuple[str, ...]) -> list[str]:
    n = len(prefix)
    return sorted(d[n] for d in dirs if len(d) == n + 1 and d[:n] == prefix)


def _from_tree(path: pathlib.Path, kind: str) -> Collection:
    files, dirs, signature = _list_tree(path, kind)
    if not files:
        raise DataError(f"no images found in {path} (looked for "
                        "<class>/<image> or train/<class>/<image>; see 'Your own images')")
    prefix: tuple[str, ...] = ()
    top = _children(dirs, prefix)
    if len(top) == 1 and not any(len(f) == 1 for f in files) and top[0] not in _SPLIT_WORDS:
        inner = _children(dirs, (top[0],))
        if inner:  # everything under one folder, as archives usually are
            prefix = (top[0],)
            top = inner
    names = set(top)
    test = next((t for t in _TEST_ALIASES if t in names), None)
    if {"train", "query", "database"} <= names:
        layout, folders = "given", {"train": "train", "query": "query", "database": "database"}
    elif "train" in names and test is not None:
        layout, folders = "split", {"train": "train", "test": test}
    elif names & _SPLIT_WORDS:
        raise DataError(
            f"{path}: found split folders {sorted(names & _SPLIT_WORDS)} but no complete layout; "
            "expected train/ with test/ or val/, or train/, query/ and database/ "
            f"(found folders: {', '.join(top)})")
    else:
        layout, folders = "pool", {"pool": None}
    loose = [f for f in files if len(f) == len(prefix) + 1]
    if loose:
        log.warning("%s: %d images outside any class folder ignored (e.g. %s)", path,
                    len(loose), "/".join(loose[0]))
    pool_classes: dict[str, list[str]] = {}
    for pool, folder in folders.items():
        at = prefix + ((folder,) if folder else ())
        pool_classes[pool] = _children(dirs, at)
        if not pool_classes[pool]:
            raise DataError(f"{path}: {'/'.join(at) or 'the top level'} has no class folders "
                            "(expected <class>/<image>)")
    classes = sorted(set().union(*pool_classes.values()))
    index = {c: i for i, c in enumerate(classes)}
    members: dict[str, list[str]] = {}
    labels: dict[str, list[int]] = {}
    by_pool: dict[tuple[str, str], list[str]] = {}
    depth = {pool: len(prefix) + (1 if folder else 0) for pool, folder in folders.items()}
    folder_of = {folder: pool for pool, folder in folders.items()}
    for f in files:
        rest = f[len(prefix):]
        if len(rest) < 2 or f[:len(prefix)] != prefix:
            continue
        pool = folder_of.get(rest[0]) if layout != "pool" else "pool"
        if pool is None:
            continue
        d = depth[pool]
        if len(f) <= d + 1:
            continue  # an image directly in a split folder: not in a class folder
        by_pool.setdefault((pool, f[d]), []).append("/".join(f))
    for pool in folders:
        members[pool], labels[pool] = [], []
        for c in pool_classes[pool]:
            found = sorted(by_pool.get((pool, c), []))
            members[pool] += found
            labels[pool] += [index[c]] * len(found)
    return Collection(path, kind, layout, tuple(classes), members, labels, signature)


# --------------------------------------------------------------------------- manifests


def _manifest_rows(path: pathlib.Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in header or "label" not in header:
            raise DataError(f"manifest {path}: the header must name 'path' and 'label' "
                            f"(found: {', '.join(header) or 'nothing'})")
        for row in reader:
            rows.append({k.strip(): (v or "").strip() for k, v in row.items() if k})
        return rows
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"manifest {path} line {n}: not JSON ({exc})") from None
        if not isinstance(row, dict) or "path" not in row or "label" not in row:
            raise DataError(f"manifest {path} line {n}: needs 'path' and 'label'")
        rows.append(row)
    return rows


def _from_manifest(path: pathlib.Path) -> Collection:
    rows = _manifest_rows(path)
    if not rows:
        raise DataError(f"manifest {path} lists no images")
    splits = {str(r.get("split") or "").strip().lower() for r in rows}
    if splits == {""}:
        layout = "pool"
    elif splits <= {"train", "query", "database"}:
        layout = "given"
    elif splits <= {"train", "test", "val"}:
        layout = "split"
    else:
        raise DataError(f"manifest {path}: split values {sorted(splits)} must be train/test(val) "
                        "or train/query/database, on every row or on none")
    names = sorted({str(r["label"]).strip() for r in rows})
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    index = {c: i for i, c in enumerate(names)}
    base = path.parent
    members: dict[str, list[str]] = {p: [] for p in POOLS[layout]}
    labels: dict[str, list[int]] = {p: [] for p in POOLS[layout]}
    h = hashlib.sha256(path.read_bytes())
    for n, r in enumerate(rows, start=1):
        rel = str(r["path"]).strip()
        if not rel:
            raise DataError(f"manifest {path} row {n}: empty path")
        file = base / rel
        try:
            st = file.stat()
        except OSError:
            raise DataError(f"manifest {path} row {n}: image not found: {file}") from None
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        split = str(r.get("split") or "").strip().lower()
        pool = {"": "pool", "val": "test"}.get(split, split)
        members[pool].append(rel)
        labels[pool].append(index[str(r["label"]).strip()])
    for pool in POOLS[layout]:  # class order, then file order, like folders
        order = sorted(range(len(members[pool])),
                       key=lambda i, p=pool: (labels[p][i], members[p][i]))
        members[pool] = [members[pool][i] for i in order]
        labels[pool] = [labels[pool][i] for i in order]
    signature = {"path": str(path), "files": len(rows), "listing": h.hexdigest()}
    return Collection(path, "manifest", layout, tuple(names), members, labels, signature)


# --------------------------------------------------------------------------- resolution

RESOLUTION_STEPS = (32, 64, 128)
NATIVE_MAX = 128
PROBE_SAMPLES = 64


def choose_resolution(coll: Collection) -> int:
    """The default image side for a collection, from the sizes of up to 64 sampled images.

    Square images of one size up to 128 px keep it (CIFAR-10 stays 32, the 128-px Imagenette
    stays 128); otherwise the largest of 32 / 64 / 128 that does not upscale the median shorter
    side (or that side itself when it is under 32).  Larger sides cost condensation time
    quadratically, so 128 is the cap; pass ``--resolution`` for more.
    """
    from .images import probe_size

    members = [m for p in coll.pool_names for m in coll.members[p]]
    if not members:
        raise DataError(f"no images found in {coll.path}")
    step = max(1, len(members) // PROBE_SAMPLES)
    sizes = []
    with MemberReader(coll.path, coll.kind) as reader:
        for m in members[::step][:PROBE_SAMPLES]:
            try:
                sizes.append(probe_size(reader.read(m), name=coll.source_of(m)))
            except (DataError, OSError, KeyError):
                continue  # an unreadable image is reported by the decoder, with its name
    if not sizes:
        raise DataError(f"none of the sampled images of {coll.path} could be read "
                        f"(e.g. {coll.source_of(members[0])})")
    short = sorted(min(w, h) for w, h in sizes)[len(sizes) // 2]
    if len(set(sizes)) == 1 and sizes[0][0] == sizes[0][1] and short <= NATIVE_MAX:
        chosen, why = short, "the images' own square size"
    else:
        fits = [r for r in RESOLUTION_STEPS if r <= short]
        chosen = fits[-1] if fits else short
        why = f"median shorter side {short} px of {len(sizes)} sampled images"
    log.info("%s: resolution %d px (%s; --resolution to change)", coll.path, chosen, why)
    return chosen
