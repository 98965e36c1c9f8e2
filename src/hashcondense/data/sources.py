"""Readers for the image datasets the project uses, decoded to uint8 tensors.

Formats:

* ImageFolder trees ``<split>/<class>/<image>`` as a directory or a ``.zip`` (optionally under
  one top-level folder, as archives usually are); classes are the sorted folder names.
* The official CIFAR-10 python release ``cifar-10-batches-py/`` (pickles, read with a restricted
  unpickler that only rebuilds numpy arrays).
* scikit-learn's bundled 8x8 ``digits`` (no download), for demos and tests.

``load_source(name, root)`` finds a dataset under a data root and caches the decoded tensors
(see :mod:`hashcondense.data.cache`).  Lookup order per name, first match wins:

* ``cifar10``: ``cifar10.zip``, ``cifar10/`` (ImageFolder tree), ``cifar-10-batches-py/``
  (python release; also ``cifar10/cifar-10-batches-py/``).
* ``imagenette``: ``imagenette-128.zip``, then ``imagenette*.zip``, then ``imagenette*/``
  directories (sorted by name).  ``imagewoof`` likewise with ``imagewoof``.
* ``digits``: no files; ``root`` is ignored.

A split called ``test`` that is absent is looked up as ``val`` (fast.ai's Imagenette layout).
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import pickle
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import cache as _cache

log = logging.getLogger(__name__)

DATA_ENV = "HASHCONDENSE_DATA"
# Bump when decoding changes (resize method, layout rules) so stale cache entries are not used.
READER_VERSION = 1
SOURCES: tuple[str, ...] = ("cifar10", "imagenette", "imagewoof", "digits")
SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
_SPLIT_ALIASES = {"test": ("test", "val"), "train": ("train",)}
_ROOT_HINT = "pass --data-root or set HASHCONDENSE_DATA"


class DataError(ValueError):
    """A dataset is missing, malformed or cannot satisfy a request; the message says which."""


@dataclass(frozen=True, eq=False)
class LabeledImages:
    """Square uint8 images ``(N, C, H, W)`` with int64 labels indexing ``classes``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(
                f"images must be a 4-D uint8 tensor (N, C, H, W), got "
                f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}"
            )
        if images.shape[2] != images.shape[3]:
            raise DataError(f"images must be square, got {images.shape[2]}x{images.shape[3]}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            raise DataError(
                f"labels must be a 1-D int64 tensor, got "
                f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}"
            )
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(self.classes))
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise DataError(
                f"labels must lie in [0, {len(self.classes)}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        """Side of the square images in pixels."""
        return int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> LabeledImages:
        """The images at ``index`` (in that order), same classes."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64).reshape(-1))
        return LabeledImages(self.images[idx], self.labels[idx], self.classes)

    def class_counts(self) -> list[int]:
        """Number of images per class, in class order (zeros included)."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def concat_images(parts: Sequence[LabeledImages], *, merge_classes: bool = False) -> LabeledImages:
    """Concatenate datasets.

    With ``merge_classes`` the class lists are appended (labels of later parts shifted), which
    is how disjoint sources are combined; otherwise all parts must share their classes.
    """
    if not parts:
        raise DataError("nothing to concatenate")
    classes: list[str] = []
    labels = []
    for part in parts:
        if merge_classes:
            labels.append(part.labels + len(classes))
            classes.extend(part.classes)
        else:
            if part.classes != parts[0].classes:
                raise DataError(f"class lists differ: {parts[0].classes} vs {part.classes}")
            labels.append(part.labels)
    if not merge_classes:
        classes = list(parts[0].classes)
    shapes = {tuple(p.images.shape[1:]) for p in parts}
    if len(shapes) != 1:
        raise DataError(f"cannot concatenate images of different shapes {sorted(shapes)}")
    return LabeledImages(
        torch.cat([p.images for p in parts]), torch.cat(labels), tuple(classes)
    )


def resize_images(images: torch.Tensor, resolution: int, *, chunk: int = 4096) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 ``(N, C, H, W)`` to ``resolution`` squared."""
    if images.shape[2] == resolution and images.shape[3] == resolution:
        return images
    out = torch.empty(
        (images.shape[0], images.shape[1], resolution, resolution), dtype=torch.uint8
    )
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].float()
        block = torch.nn.functional.interpolate(
            block, size=(resolution, resolution), mode="bilinear", antialias=True,
            align_corners=False,
        )
        out[start : start + chunk] = block.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _check_resolution(resolution: int | None) -> None:
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise DataError(f"resolution must be a positive int or None, got {resolution!r}")


# --------------------------------------------------------------------------- ImageFolder


class _Tree:
    """Uniform listing and reading of a directory or a zip archive."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.is_zip = path.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_zip:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"cannot open archive {path}: {exc}") from None
        elif not path.is_dir():
            raise DataError(f"dataset path not found: {path}")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def entries(self) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
        """(file paths, directory paths) as tuples of path parts, hidden entries skipped."""
        files: list[tuple[str, ...]] = []
        dirs: list[tuple[str, ...]] = []
        if self._zip is not None:
            for name in self._zip.namelist():
                parts = tuple(p for p in name.split("/") if p)
                if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
                    continue
                (dirs if name.endswith("/") else files).append(parts)
                # implicit parent folders (zips need not list directories)
                for i in range(1, len(parts)):
                    dirs.append(parts[:i])
        else:
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = pathlib.Path(dirpath).relative_to(self.path).parts
                dirs.extend(rel + (d,) for d in dirnames)
                files.extend(rel + (f,) for f in filenames if not f.startswith("."))
        return files, sorted(set(dirs))

    def read(self, parts: tuple[str, ...]) -> bytes:
        if self._zip is not None:
            return self._zip.read("/".join(parts))
        return self.path.joinpath(*parts).read_bytes()

    def describe(self, parts: tuple[str, ...]) -> str:
        if self.is_zip:
            return f"{self.path}:{'/'.join(parts)}"
        return str(self.path.joinpath(*parts))


def _is_image(parts: tuple[str, ...]) -> bool:
    return os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


def _find_prefix(
    files: list[tuple[str, ...]], dirs: list[tuple[str, ...]]
) -> tuple[str, ...]:
    """The folder holding the split folders: the root, or its single top-level folder."""
    top = {p[0] for p in files if len(p) > 1} | {d[0] for d in dirs}
    known = {s for aliases in _SPLIT_ALIASES.values() for s in aliases}
    if top & known:
        return ()
    if len(top) == 1:
        return (next(iter(top)),)
    return ()


def _split_members(
    tree: _Tree, split: str
) -> tuple[tuple[str, ...], list[tuple[str, list[tuple[str, ...]]]]]:
    """Return (split folder parts, [(class name, sorted image paths)]) for ``split``."""
    files, dirs = tree.entries()
    images = [p for p in files if _is_image(p)]
    if not images:
        raise DataError(f"no images found in {tree.path}")
    prefix = _find_prefix(files, dirs)
    dirset = set(dirs)
    split_dir: tuple[str, ...] | None = None
    for alias in _SPLIT_ALIASES.get(split, (split,)):
        if prefix + (alias,) in dirset:
            split_dir = prefix + (alias,)
            break
    if split_dir is None:
        depth = len(prefix)
        found = sorted(d[-1] for d in dirs if len(d) == depth + 1 and d[:depth] == prefix)
        raise DataError(
            f"split {split!r} not found in {tree.path} (expected <split>/<class>/<image>; "
            f"found folders: {', '.join(found) or 'none'})"
        )
    depth = len(split_dir)
    class_names = sorted(d[depth] for d in dirs if len(d) == depth + 1 and d[:depth] == split_dir)
    if not class_names:
        raise DataError(f"split folder {tree.describe(split_dir)} has no class folders")
    by_class: dict[str, list[tuple[str, ...]]] = {c: [] for c in class_names}
    for p in images:
        if len(p) > depth + 1 and p[:depth] == split_dir:
            by_class[p[depth]].append(p)
    out = []
    for c in class_names:
        if not by_class[c]:
            raise DataError(f"class folder {tree.describe(split_dir + (c,))} has no images")
        out.append((c, sorted(by_class[c])))
    return split_dir, out


def _decode(data: bytes, resolution: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        if resolution is not None and img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def read_image_folder(
    path: str | os.PathLike,
    split: str,
    *,
    resolution: int | None = None,
) -> LabeledImages:
    """Decode ``<split>/<class>/<image>`` from a directory or zip into RGB uint8 tensors.

    Classes are the sorted class-folder names of that split.  Without ``resolution`` all images
    must already be square and of one size; with it every image is resized (whole image, aspect
    not kept, bilinear with Pillow's antialiasing) so mixed sizes are fine.
    """
    from tqdm import tqdm

    _check_resolution(resolution)
    tree = _Tree(pathlib.Path(path))
    try:
        _, members = _split_members(tree, split)
        items = [(p, label) for label, (_, paths) in enumerate(members) for p in paths]
        classes = tuple(c for c, _ in members)
        n = len(items)

        images: np.ndarray | None = None
        # A plain loop: on small JPEGs Pillow's per-call overhead holds the GIL, and threads
        # measured no faster (cifar10.zip: ~6 s for 60,000 images either way on 2 cores).
        for i, (parts, _) in enumerate(
            tqdm(items, desc=f"decode {pathlib.Path(path).name} [{split}]", unit="img",
                 disable=None, leave=False, mininterval=0.5)
        ):
            try:
                arr = _decode(tree.read(parts), resolution)
            except Exception as exc:
                msg = str(exc).replace("\n", " ")
                raise DataError(f"cannot decode image {tree.describe(parts)}: {msg}") from None
            if images is None:
                h, w = arr.shape[:2]
                if h != w:
                    raise DataError(
                        f"image {tree.describe(parts)} is {w}x{h}, not square; "
                        f"pass a resolution to resize"
                    )
                images = np.empty((n, h, w, 3), dtype=np.uint8)
            if arr.shape != images.shape[1:]:
                raise DataError(
                    f"image {tree.describe(parts)} is {arr.shape[1]}x{arr.shape[0]}, "
                    f"others are {images.shape[2]}x{images.shape[1]}; pass a resolution to resize"
                )
            images[i] = arr
    finally:
        tree.close()
    assert images is not None
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    log.info("decoded %d images (%d classes) from %s [%s]", n, len(classes), path, split)
    return LabeledImages(tensor, labels, classes)


# --------------------------------------------------------------------------- CIFAR python


def _allowed_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    return {
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): multiarray.scalar,
        ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, lists, dicts and strings, and nothing else.

    Pickles can run arbitrary code through ``find_class``; CIFAR batches only need numpy's
    array reconstructors, so every other global is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a pickle "
                f"(only numpy array reconstruction is allowed)"
            ) from None


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler` (bytes keys kept as bytes)."""
    with open(path, "rb") as fh:
        try:
            return RestrictedUnpickler(fh, encoding="bytes").load()
        except pickle.UnpicklingError as exc:
            raise DataError(f"unsafe or unreadable pickle {path}: {exc}") from None
        except Exception as exc:
            raise DataError(f"unreadable pickle {path}: {exc}") from None


def _get(d: Any, key: str, path: pathlib.Path) -> Any:
    if not isinstance(d, dict):
        raise DataError(f"{path} does not hold a dict")
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path} has no {key!r} entry")


def read_cifar10_python(
    directory: str | os.PathLike, *, resolution: int | None = None
) -> dict[str, LabeledImages]:
    """Read the official ``cifar-10-batches-py`` release into ``{"train", "test"}``."""
    _check_resolution(resolution)
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DataError(f"CIFAR-10 python directory not found: {directory}")
    meta_path = directory / "batches.meta"
    if not meta_path.is_file():
        raise DataError(f"missing {meta_path} (expected the cifar-10-batches-py release)")
    names = _get(safe_unpickle(meta_path), "label_names", meta_path)
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    out: dict[str, LabeledImages] = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]),
                         ("test", ["test_batch"])):
        datas, labels = [], []
        for fname in files:
            path = directory / fname
            if not path.is_file():
                raise DataError(f"missing CIFAR-10 batch {path}")
            batch = safe_unpickle(path)
            data = np.asarray(_get(batch, "data", path))
            lab = np.asarray(_get(batch, "labels", path), dtype=np.int64).reshape(-1)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(f"{path}: data must be uint8 rows of 3072, got "
                                f"{data.dtype} {data.shape}")
            if len(lab) != len(data):
                raise DataError(f"{path}: {len(data)} rows but {len(lab)} labels")
            datas.append(data)
            labels.append(lab)
        images = torch.from_numpy(np.concatenate(datas).reshape(-1, 3, 32, 32).copy())
        if resolution is not None:
            images = resize_images(images, resolution)
        out[split] = LabeledImages(images, torch.from_numpy(np.concatenate(labels)), classes)
    return out


# --------------------------------------------------------------------------- digits


def load_digits_source(
    *, resolution: int | None = None, seed: int = 0, train_fraction: float = 0.75
) -> dict[str, LabeledImages]:
    """scikit-learn's 1,797 8x8 digits as 1-channel uint8 (0..16 scaled to 0..255).

    Split per class with ``np.random.default_rng(seed)``: ``round(train_fraction * n_c)`` to
    "train", the rest to "test", so the split is stratified and the same on every machine.
    """
    from sklearn.datasets import load_digits

    _check_resolution(resolution)
    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)
    pixels = np.rint(raw * 255.0 / 16.0).clip(0, 255).astype(np.uint8)
    images = torch.from_numpy(pixels[:, None, :, :].copy())
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    if resolution is not None:
        images = resize_images(images, resolution)
    full = LabeledImages(images, labels, tuple(str(c) for c in range(10)))
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    lab = labels.numpy()
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(lab == c))
        k = int(round(train_fraction * len(idx)))
        train_idx.append(idx[:k])
        test_idx.append(idx[k:])
    return {
        "train": full.subset(np.sort(np.concatenate(train_idx))),
        "test": full.subset(np.sort(np.concatenate(test_idx))),
    }


# --------------------------------------------------------------------------- lookup


def resolve_data_root(root: str | os.PathLike | None) -> pathlib.Path:
    """The data root: ``root`` if given, else ``$HASHCONDENSE_DATA``; must be a directory."""
    if root is None or str(root) == "":
        env = os.environ.get(DATA_ENV)
        if not env:
            raise DataError(f"no data root given: {_ROOT_HINT}")
        root = env
    path = pathlib.Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root not found: {path}; {_ROOT_HINT}")
    return path.resolve()


def _candidates(name: str, root: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """(path, kind) candidates in lookup order; kind is "folder" or "cifar-python"."""
    if name == "cifar10":
        return [
            (root / "cifar10.zip", "folder"),
            (root / "cifar10", "folder"),
            (root / "cifar-10-batches-py", "cifar-python"),
            (root / "cifar10" / "cifar-10-batches-py", "cifar-python"),
        ]
    out = [(root / f"{name}-128.zip", "folder")]
    out += [(p, "folder") for p in sorted(root.glob(f"{name}*.zip"))]
    out += [(p, "folder") for p in sorted(root.glob(f"{name}*")) if p.is_dir()]
    return out


def find_source(name: str, root: str | os.PathLike | None) -> tuple[pathlib.Path, str]:
    """Locate dataset ``name`` under the data root; returns (path, kind)."""
    if name not in SOURCES or name == "digits":
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(SOURCES)}")
    base = resolve_data_root(root)
    candidates = _candidates(name, base)
    for path, kind in candidates:
        if kind == "cifar-python" and (path / "batches.meta").is_file():
            return path, kind
        if kind == "folder" and (path.is_file() or (path.is_dir() and _looks_like_tree(path))):
            return path, kind
    looked = ", ".join(
        dict.fromkeys(p.name + ("" if p.suffix == ".zip" else "/") for p, _ in candidates)
    )
    raise DataError(f"dataset {name!r} not found in {base} (looked for {looked}); {_ROOT_HINT}")


def _looks_like_tree(path: pathlib.Path) -> bool:
    """A directory with split folders directly or under one subfolder."""
    known = {s for aliases in _SPLIT_ALIASES.values() for s in aliases}
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(p.name in known for p in subdirs):
        return True
    return len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in known)


def _source_signature(path: pathlib.Path) -> dict[str, Any]:
    """Identity of a file (size, mtime) or a directory tree (digest of its listing)."""
    import hashlib

    st = path.stat()
    if path.is_file():
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    count = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for f in sorted(filenames):
            fst = os.stat(os.path.join(dirpath, f))
            rel = os.path.relpath(os.path.join(dirpath, f), path)
            h.update(f"{rel}\0{fst.st_size}\0{fst.st_mtime_ns}\n".encode())
            count += 1
    return {"path": str(path.resolve()), "files": count, "listing": h.hexdigest()}


def _cached(
    key: dict[str, Any], build: Callable[[], LabeledImages], use_cache: bool
) -> LabeledImages:
    if use_cache:
        hit = _cache.load_entry(key)
        if hit is not None:
            return LabeledImages(*hit)
    data = build()
    if use_cache:
        _cache.store_entry(key, data.images, data.labels, data.classes)
    return data


def load_source(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    resolution: int | None = None,
    cache: bool = True,
) -> dict[str, LabeledImages]:
    """Load dataset ``name`` as ``{"train": ..., "test": ...}`` with shared classes.

    ``resolution`` resizes to that square side at decode time (None keeps the native size).
    Decoded tensors are cached on disk unless ``cache`` is False; ``digits`` is never cached.
    """
    _check_resolution(resolution)
    if name == "digits":
        return load_digits_source(resolution=resolution)
    path, kind = find_source(name, root)
    signature = _source_signature(path)
    out: dict[str, LabeledImages] = {}
    if kind == "cifar-python":
        keys = {s: {"reader": READER_VERSION, "kind": kind, "split": s,
                    "resolution": resolution, **signature} for s in SPLITS}
        hits = {s: _cache.load_entry(k) for s, k in keys.items()} if cache else {}
        if cache and all(h is not None for h in hits.values()):
            out = {s: LabeledImages(*h) for s, h in hits.items()}  # type: ignore[misc]
        else:
            out = read_cifar10_python(path, resolution=resolution)
            if cache:
                for s, data in out.items():
                    _cache.store_entry(keys[s], data.images, data.labels, data.classes)
    else:
        for split in SPLITS:
            key = {"reader": READER_VERSION, "kind": kind, "split": split,
                   "resolution": resolution, **signature}
            out[split] = _cached(
                key,
                lambda split=split: read_image_folder(path, split, resolution=resolution),
                cache,
            )
    if out["train"].classes != out["test"].classes:
        raise DataError(
            f"{path}: train and test class folders differ "
            f"({len(out['train'].classes)} vs {len(out['test'].classes)} classes: "
            f"{sorted(set(out['train'].classes) ^ set(out['test'].classes))})"
        )
    return out

