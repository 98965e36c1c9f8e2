"""The condensed training set: stored (optimised) images, their labels and how to decode them.

A :class:`SyntheticSet` is the artefact every condenser produces and every hashing trainer
consumes.  Images are kept in *normalised* space because that is what the condenser optimises;
the :class:`~hashcondense.normalization.Normalization` travels with them so that exports and
other codebases see the same pixels.

Multi-formation (IDC, Kim et al., ICML 2022; IEM Eq. 5-6): each stored image of side ``H`` holds
``f x f`` tiles.  Decoding cuts it into ``f**2`` tiles of side ``ceil(H / f)`` and upsamples each
bilinearly to the training resolution ``R`` (normally ``R = H``), so a storage budget of ``S``
images trains on ``S * f**2`` images.  Where ``f`` does not divide ``H`` the stored image is
zero-padded at the bottom/right to the next multiple of ``f`` before cutting, as IDC does.  IDC
pads with the constant 0.5; we pad with 0, which in normalised space is the per-channel mean
colour (a neutral value for any normalisation, not a dataset-dependent grey).

On disk a set is ``<stem>.safetensors`` (tensors) plus ``<stem>.json`` (everything else and the
SHA-256 of the tensor file).  Both are written atomically; the tensor file goes first, so a crash
between the two leaves a JSON whose digest does not match and :meth:`SyntheticSet.load` refuses
the pair instead of silently mixing old and new.  Pickle is never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .normalization import Normalization
from .records import atomic_write_bytes, current_umask, write_json

FORMAT = "hashcondense-synthetic"
VERSION = 1
DEFAULT_STEM = "synthetic"
_TENSOR_DTYPES = {"images": torch.float32, "labels": torch.int64}
_DTYPE_NAMES = {torch.float32: "float32", torch.int64: "int64"}


# --------------------------------------------------------------------------- multi-formation


GRID_CLASSES_PER_BLOCK = 40
GRID_MAX_IMAGES = 1000

def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def multi_formation_decode(images: torch.Tensor, factor: int, resolution: int) -> torch.Tensor:
    """Stored ``(S, C, H, W)`` → training images ``(S*f*f, C, R, R)``, differentiably.

    Order is image-major: the ``f*f`` tiles of image 0 first, in row-major tile order.  With
    ``factor == 1`` and ``H == W == resolution`` the input is returned as-is (no copy), so the
    identity costs nothing inside a condenser's inner loop.
    """
    _check_positive_int("factor", factor)
    _check_positive_int("resolution", resolution)
    if images.ndim != 4:
        raise ValueError(f"images must be (S, C, H, W), got shape {tuple(images.shape)}")
    s, c, h, w = images.shape
    if factor > min(h, w):
        raise ValueError(f"factor {factor} exceeds the stored image size {h}x{w}")
    if factor == 1 and h == resolution and w == resolution:
        return images
    pad_h, pad_w = -h % factor, -w % factor
    x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    th, tw = (h + pad_h) // factor, (w + pad_w) // factor
    tiles = (
        x.reshape(s, c, factor, th, factor, tw)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(s * factor * factor, c, th, tw)
    )
    if (th, tw) != (resolution, resolution):
        tiles = F.interpolate(tiles, size=(resolution, resolution), mode="bilinear",
                              align_corners=False)
    return tiles


def decoded_labels(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """Labels matching :func:`multi_formation_decode` (each repeated ``f*f`` times in place)."""
    _check_positive_int("factor", factor)
    return labels.repeat_interleave(factor * factor)


def multi_formation_init(real_images: torch.Tensor, factor: int, side: int) -> torch.Tensor:
    """Mosaics of real images, the inverse of decoding used to initialise a synthetic set.

    Each group of ``f*f`` consecutive images of ``(S*f*f, C, R, R)`` is downsized (bilinear,
    antialiased) to the tile side ``ceil(side / f)`` and placed row-major into one ``side x side``
    image, cropping the bottom/right overhang when ``f`` does not divide ``side`` (exactly the
    part decoding replaces by padding).  Thus ``decode(init(x)) ≈ x`` at low frequencies.
    Returns a fresh, detached, contiguous tensor, ready to become a parameter.
    """
    _check_positive_int("factor", factor)
    _check_positive_int("side", side)
    if real_images.ndim != 4 or not real_images.is_floating_point():
        raise ValueError(
            f"real_images must be a float (N, C, R, R) tensor, got {real_images.dtype} "
            f"{tuple(real_images.shape)}"
        )
    n, c = real_images.shape[:2]
    group = factor * factor
    if n == 0 or n % group:
        raise ValueError(f"need a positive multiple of factor**2 = {group} images, got {n}")
    if factor > side:
        raise ValueError(f"factor {factor} exceeds side {side}")
    tile = math.ceil(side / factor)
    x = real_images.detach()
    if tuple(x.shape[2:]) != (tile, tile):
        x = F.interpolate(x, size=(tile, tile), mode="bilinear", antialias=True,
                          align_corners=False)
    s = n // group
    mosaic = (
        x.reshape(s, factor, factor, c, tile, tile)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(s, c, factor * tile, factor * tile)
    )
    return mosaic[:, :, :side, :side].clone(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------- the artefact


def _stem(path: str | os.PathLike) -> Path:
    """``dir`` (existing) → ``dir/synthetic``; ``x.json``/``x.safetensors``/``x`` → ``x``."""
    p = Path(path)
    if p.is_dir():
        return p / DEFAULT_STEM
    if p.suffix in (".json", ".safetensors"):
        return p.with_suffix("")
    return p


def _safe_class_dir(name: str) -> str:
    if not name or name in (".", "..") or any(ch in name for ch in "/\\\0"):
        raise ValueError(f"class name {name!r} cannot be used as a folder name")
    return name


def _pil_image(pixels: torch.Tensor) -> Image.Image:
    """uint8 ``(C, H, W)`` with C in {1, 3} → a Pillow image."""
    c = pixels.shape[0]
    if c == 1:
        return Image.fromarray(pixels[0].numpy())  # 2-D uint8 → "L"
    if c == 3:
        return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())  # → "RGB"
    raise ValueError(f"only 1- or 3-channel images can be exported as PNG, got {c} channels")


def _to_uint8(x: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    with torch.no_grad():
        pixels = normalization.denormalize(x.detach().cpu())
        return (pixels * 255).round_().clamp_(0, 255).to(torch.uint8)


@dataclass(eq=False)
class SyntheticSet:
    """Stored synthetic images (normalised space) with labels, classes and decoding parameters.

    ``resolution`` defaults to the stored side ``H`` (IDC decodes back to the original size).
    ``metadata`` must be JSON-serialisable (method, dataset, protocol fingerprint, ipc, seed,
    iterations, hyperparameters, wall time...); tuples come back as lists after a round trip.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    normalization: Normalization
    factor: int = 1
    resolution: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.float32 \
                or images.ndim != 4:
            raise ValueError(
                "images must be a 4-D float32 tensor (S, C, H, W), got "
                f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}"
            )
        s, c, h, w = images.shape
        if h != w:
            raise ValueError(f"stored images must be square, got {h}x{w}")
        if s == 0:
            raise ValueError("a synthetic set needs at least one image")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            raise ValueError(
                "labels must be a 1-D int64 tensor, got "
                f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}"
            )
        if labels.shape[0] != s:
            raise ValueError(f"{s} images but {labels.shape[0]} labels")
        if isinstance(self.classes, str):
            raise ValueError("classes must be a sequence of names, not a single string")
        self.classes = tuple(self.classes)
        if not self.classes or not all(isinstance(n, str) and n for n in self.classes):
            raise ValueError(f"classes must be non-empty strings, got {self.classes!r}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {self.classes!r}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(self.classes):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got [{lo}, {hi}]")
        if not isinstance(self.normalization, Normalization):
            raise ValueError(f"normalization must be a Normalization, got {self.normalization!r}")
        if len(self.normalization.mean) != c:
            raise ValueError(
                f"normalization has {len(self.normalization.mean)} channels, images have {c}"
            )
        _check_positive_int("factor", self.factor)
        if self.factor > h:
            raise ValueError(f"factor {self.factor} exceeds the stored image side {h}")
        if self.resolution is None:
            self.resolution = h
        _check_positive_int("resolution", self.resolution)
        if not bool(torch.isfinite(images.detach()).all()):
            raise ValueError("images contain NaN or infinite values")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata)  # NaN allowed: a diverged loss must not crash a snapshot
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata must be JSON-serialisable ({e})") from None

    # ------------------------------------------------------------------ sizes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        """Stored images per class, in class order (zeros included)."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()

    @property
    def ipc(self) -> int:
        """Stored images per class; the budget papers report.  Requires balanced classes."""
        counts = self.class_counts()
        if len(set(counts)) != 1:
            raise ValueError(f"classes are unbalanced, stored images per class: {counts}")
        return counts[0]

    @property
    def decoded_ipc(self) -> int:
        """Training images per class after multi-formation (``ipc * f**2``)."""
        return self.ipc * self.factor * self.factor

    # ------------------------------------------------------------------ decoding

    def decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images ``(S*f*f, C, R, R)`` (normalised, differentiable) and their labels."""
        assert self.resolution is not None
        return (multi_formation_decode(self.images, self.factor, self.resolution),
                decoded_labels(self.labels, self.factor))

    def to_uint8(self) -> torch.Tensor:
        """Decoded images de-normalised to uint8 ``(N, C, R, R)`` on the CPU."""
        with torch.no_grad():
            return _to_uint8(self.decode()[0], self.normalization)

    # ------------------------------------------------------------------ files

    def _document(self, digest: str, size: int) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "classes": list(self.classes),
            "normalization": self.normalization.to_dict(),
            "factor": self.factor,
            "resolution": self.resolution,
            "metadata": self.metadata,
            "tensors": {
                "images": {"shape": list(self.images.shape), "dtype": "float32"},
                "labels": {"shape": list(self.labels.shape), "dtype": "int64"},
            },
            "safetensors_sha256": digest,
            "safetensors_bytes": size,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<stem>.safetensors`` then ``<stem>.json``; returns the JSON path.

        ``path`` is an existing folder (stem ``<folder>/synthetic``), a stem, or either file name.
        """
        stem = _stem(path)
        tensors = {
            "images": self.images.detach().cpu().contiguous(),
            "labels": self.labels.detach().cpu().contiguous(),
        }
        data = _st_save(tensors, metadata={"format": FORMAT, "version": str(VERSION)})
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(stem.with_suffix(".safetensors"), data)
        return write_json(stem.with_suffix(".json"), self._document(digest, len(data)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SyntheticSet:
        """Read and verify a saved set (format, version, digest, shapes, dtypes, labels)."""
        stem = _stem(path)
        meta_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: not found (is {stem} a saved synthetic set?)")
        try:
            doc = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"{meta_path}: not a {FORMAT} file (format {got!r})")
        if doc.get("version") != VERSION:
            raise ValueError(
                f"{meta_path}: unsupported {FORMAT} version {doc.get('version')!r} "
                f"(this code reads version {VERSION})"
            )
        data = tensor_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != doc.get("safetensors_sha256"):
            raise ValueError(
                f"{tensor_path}: SHA-256 {digest[:16]}... does not match the digest recorded in "
                f"{meta_path.name}; the file was modified, truncated or belongs to another save"
            )
        try:
            tensors = _st_load(data)
        except Exception as e:  # safetensors raises its own error type for malformed headers
            raise ValueError(f"{tensor_path}: not a valid safetensors file ({e})") from None
        specs = doc.get("tensors")
        if set(tensors) != set(_TENSOR_DTYPES) or not isinstance(specs, dict):
            raise ValueError(
                f"{tensor_path}: expected tensors {sorted(_TENSOR_DTYPES)}, found {sorted(tensors)}"
            )
        for name, dtype in _TENSOR_DTYPES.items():
            t, spec = tensors[name], specs.get(name)
            if not isinstance(spec, dict):
                raise ValueError(f"{meta_path}: no shape/dtype recorded for {name!r}")
            if t.dtype != dtype or spec.get("dtype") != _DTYPE_NAMES[dtype]:
                raise ValueError(
                    f"{tensor_path}: {name} has dtype {t.dtype}, {meta_path.name} records "
                    f"{spec.get('dtype')!r}, expected {_DTYPE_NAMES[dtype]}"
                )
            if list(t.shape) != spec.get("shape"):
                raise ValueError(
                    f"{tensor_path}: {name} has shape {list(t.shape)}, {meta_path.name} records "
                    f"{spec.get('shape')!r}"
                )
        classes = doc.get("classes")
        if not isinstance(classes, list) or not all(isinstance(n, str) for n in classes):
            raise ValueError(f"{meta_path}: classes must be a list of strings")
        metadata = doc.get("metadata", {})
        norm = doc.get("normalization")
        try:
            if not isinstance(norm, dict):
                raise ValueError("normalization missing")
            normalization = Normalization(tuple(norm["mean"]), tuple(norm["std"]))
            return cls(
                images=tensors["images"], labels=tensors["labels"], classes=tuple(classes),
                normalization=normalization, factor=doc.get("factor"),
                resolution=doc.get("resolution"), metadata=metadata,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{meta_path}: invalid synthetic set ({e})") from None

    # ------------------------------------------------------------------ exports

    def export_grid_png(self, path: str | os.PathLike, *, max_per_class: int = 10,
                        upscale: int | None = None, decoded: bool = False,
                        gap: int = 2) -> Path:
        """One row per class (up to ``max_per_class`` images), white gaps; for a quick look.

        Beyond 40 classes the rows wrap into blocks side by side and each class shows fewer
        images (about 1,000 in all), so 200 or 1,000 classes still give a viewable picture.

        Stored images are shown by default so the ``f x f`` mosaic is visible; ``decoded=True``
        shows training images.  ``upscale`` (nearest) defaults to making cells ~64 px or more.
        """
        _check_positive_int("max_per_class", max_per_class)
        if decoded:
            pixels, labels = self.to_uint8(), decoded_labels(self.labels.cpu(), self.factor)
        else:
            pixels, labels = _to_uint8(self.images, self.normalization), self.labels.cpu()
        side = pixels.shape[-1]
        if upscale is None:
            upscale = max(1, 64 // side)
        _check_positive_int("upscale", upscale)
        if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
            raise ValueError(f"gap must be a non-negative int, got {gap!r}")
        cell = side * upscale
        counts = torch.bincount(labels, minlength=self.num_classes)
        cols = max(1, min(max_per_class, int(counts.max())))
        n_classes = self.num_classes
        if n_classes > GRID_CLASSES_PER_BLOCK:  # many classes: fewer images each, in blocks
            cols = max(1, min(cols, GRID_MAX_IMAGES // n_classes))
        rows = min(n_classes, GRID_CLASSES_PER_BLOCK)
        blocks = -(-n_classes // rows)
        block_w = cols * cell + (cols + 1) * gap
        sep = 4 * max(gap, 1)  # blocks of classes side by side, a wider gap between them
        c = pixels.shape[1]
        canvas = torch.full((c, rows * cell + (rows + 1) * gap,
                             blocks * block_w + (blocks - 1) * sep), 255, dtype=torch.uint8)
        for klass in range(n_classes):
            b, r = divmod(klass, rows)
            members = torch.nonzero(labels == klass).flatten()[:cols]
            for col, i in enumerate(members.tolist()):
                img = pixels[i].repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
                y = gap + r * (cell + gap)
                x = b * (block_w + sep) + gap + col * (cell + gap)
                canvas[:, y : y + cell, x : x + cell] = img
        buf = io.BytesIO()
        _pil_image(canvas).save(buf, format="PNG")
        return atomic_write_bytes(path, buf.getvalue())

    def export_image_folder(self, directory: str | os.PathLike, *,
                            overwrite: bool = False) -> Path:
        """``<dir>/<class>/<index>.png`` of the decoded images, for other hashing codebases.

        The tree is built in a temporary sibling folder and renamed into place, so readers never
        see half an export.  Every class gets a folder, even an empty one; ImageFolder readers
        number classes by sorted folder name, which matches ``labels`` only when ``classes`` is
        sorted.  ``<index>`` counts within the class, zero-padded to 5 digits.  An existing
        non-empty ``directory`` is replaced only with ``overwrite=True``.
        """
        directory = Path(directory)
        names = [_safe_class_dir(n) for n in self.classes]
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"{directory}: exists and is not a folder")
        if directory.is_dir() and any(directory.iterdir()) and not overwrite:
            raise FileExistsError(f"{directory}: folder is not empty (pass overwrite=True)")
        pixels = self.to_uint8()
        labels = decoded_labels(self.labels.cpu(), self.factor).tolist()
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.",
                                    suffix=".tmp"))
        try:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; exports are shared
            for name in names:
                (tmp / name).mkdir()
            seen = [0] * self.num_classes
            for i, label in enumerate(labels):
                _pil_image(pixels[i]).save(tmp / names[label] / f"{seen[label]:05d}.png",
                                           format="PNG")
                seen[label] += 1
            old = None
            if directory.is_dir() and any(directory.iterdir()):
                old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.",
                                            suffix=".old"))
                os.replace(directory, old / "tree")
            try:
                os.replace(tmp, directory)  # POSIX rename may replace an empty folder
            except BaseException:
                if old is not None:
                    os.replace(old / "tree", directory)  # put the previous export back
                    old.rmdir()
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory
