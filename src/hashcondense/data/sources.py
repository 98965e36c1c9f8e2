"""Readers for the image datasets the project uses, decoded to uint8 tensors.

Formats:

* Any folder, ``.zip`` or manifest of labelled images (:mod:`hashcondense.data.collection`
  lists it and detects its layout; :mod:`hashcondense.data.cache` decodes it once into a
  memory map); the built-in ImageFolder datasets are read the same way.
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

import logging
import os
import pathlib
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

DATA_ENV = "HASHCONDENSE_DATA"
SOURCES: tuple[str, ...] = ("cifar10", "imagenette", "imagewoof", "digits")
SPLITS: tuple[str, ...] = ("train", "test")
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
    # where each image came from (a path, or "archive.zip!/member"); None without files
    sources: tuple[str, ...] | None = None

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
        if self.sources is not None and len(self.sources) != labels.shape[0]:
            raise DataError(f"{labels.shape[0]} labels but {len(self.sources)} sources")
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
        idx_np = np.asarray(index, dtype=np.int64).reshape(-1)
        idx = torch.as_tensor(idx_np)
        sources = None if self.sources is None else tuple(self.sources[i] for i in idx_np)
        return LabeledImages(self.images[idx], self.labels[idx], self.classes, sources)

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
    sources = None
    if all(p.sources is not None for p in parts):
        sources = tuple(s for p in parts for s in p.sources)  # type: ignore[union-attr]
    return LabeledImages(_cat_rows([p.images for p in parts]), torch.cat(labels), tuple(classes),
                         sources)


def _cat_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along rows, but a view when the parts are adjacent rows of one storage
    (the pools of one memory-mapped collection), so pooling train and test copies nothing."""
    first = tensors[0]
    pairs = zip(tensors[:-1], tensors[1:], strict=True)
    adjacent = all(t.is_contiguous() for t in tensors) and all(
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.data_ptr() + a.nbytes == b.data_ptr() for a, b in pairs)
    if adjacent:
        rows = sum(t.shape[0] for t in tensors)
        return first.as_strided((rows,) + tuple(first.shape[1:]), first.stride())
    return torch.cat(list(tensors))


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


# --------------------------------------------------------------------------- folders


def images_from_decoded(decoded: Any, pool: str) -> LabeledImages:
    """One pool of a decoded collection as a zero-copy view of its (memory-mapped) rows."""
    start, stop = decoded.pools[pool]
    # slice the whole map as one tensor, so adjacent pools share a storage (see _cat_rows)
    return LabeledImages(torch.from_numpy(decoded.images)[start:stop],
                         torch.from_numpy(np.asarray(decoded.labels[start:stop])),
                         decoded.classes, decoded.sources[start:stop])


def check_skipped(decoded: Any, skip_bad_images: bool) -> None:
    """Refuse a collection with unreadable images unless the caller chose to skip them."""
    if not decoded.skipped:
        return
    source, reason = decoded.skipped[0]
    more = f" (and {len(decoded.skipped) - 1} more)" if len(decoded.skipped) > 1 else ""
    if not skip_bad_images:
        raise DataError(f"{reason}{more}; pass --skip-bad-images to continue without "
                        f"{'them' if more else 'it'}")
    log.warning("skipped %d unreadable images, e.g. %s: %s", len(decoded.skipped), source,
                reason)


def load_collection(path: str | os.PathLike, *, resolution: int | None = None,
                    cache: bool = True, skip_bad_images: bool = False, progress: bool = True
                    ) -> tuple[Any, Any, dict[str, LabeledImages]]:
    """(collection, decoded, pools) of a folder, zip or manifest: every pool as LabeledImages.

    ``resolution`` None: the native side when the images are square and of one size (at most
    128 px), else a size chosen from the source (see ``choose_resolution``), stated in the log.
    """
    from .cache import decode_collection
    from .collection import choose_resolution, open_collection

    _check_resolution(resolution)
    coll = open_collection(path)
    if len(coll) == 0:
        raise DataError(f"no images found in {coll.path}")
    if resolution is None:
        resolution = choose_resolution(coll)
    decoded = decode_collection(coll, resolution, cache=cache, progress=progress)
    check_skipped(decoded, skip_bad_images)
    return coll, decoded, {p: images_from_decoded(decoded, p) for p in coll.pool_names}


def read_image_folder(
    path: str | os.PathLike,
    split: str,
    *,
    resolution: int | None = None,
) -> LabeledImages:
    """Decode ``<split>/<class>/<image>`` of a directory or zip (layout (b)) into uint8 tensors.

    ``split`` is ``train`` or ``test`` (``val`` is accepted for ``test``).  Not cached.
    """
    coll, _, pools = load_collection(path, resolution=resolution, cache=False, progress=False)
    if coll.layout != "split":
        raise DataError(f"split {split!r} not found in {path} (expected train/ and test/ or "
                        f"val/ folders, found layout {coll.layout!r})")
    return pools["test" if split == "val" else split]



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


def load_source(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    resolution: int | None = None,
    cache: bool = True,
    progress: bool = True,
) -> dict[str, LabeledImages]:
    """Load dataset ``name`` as ``{"train": ..., "test": ...}`` with shared classes.

    ``resolution`` resizes to that square side at decode time (None keeps the native size).
    Decoded images are cached on disk as a memory map unless ``cache`` is False; ``digits`` and
    the CIFAR-10 python release (fast to read) are never cached.
    """
    _check_resolution(resolution)
    if name == "digits":
        return load_digits_source(resolution=resolution)
    path, kind = find_source(name, root)
    if kind == "cifar-python":
        return read_cifar10_python(path, resolution=resolution)
    coll, _, pools = load_collection(path, resolution=resolution, cache=cache,
                                     progress=progress)
    if coll.layout != "split":
        raise DataError(f"{path}: expected train/ and test/ (or val/) class folders, found "
                        f"layout {coll.layout!r}")
    for split in SPLITS:
        missing = [c for c, n in zip(coll.classes, pools[split].class_counts(), strict=True)
                   if n == 0]
        if missing:
            raise DataError(f"{path}: train and test class folders differ (no {split} images "
                            f"of {', '.join(missing)})")
    return pools
