"""Glue between a trained hashing network and a :class:`~hashcondense.retrieval.index.CodeIndex`:
encode images (files, uploads, dataset splits) exactly as the judge does, build and grow index
folders, and answer searches. The CLI and the web app are thin layers over this module.

Codes are made with :func:`hashcondense.hashing.trainer.encode_images` (the judge's encoder).
An index defaults to fp32 encoding, recorded in ``index.json`` and reused for every query:
bf16 rounds differently with the batch, so a database image searched alone could lose
its distance 0 to itself.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..retrieval.index import CodeIndex, IndexParams
from . import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "NotFound",
    "QueryEncoder",
    "SearchEngine",
    "add_run",
    "decode_image",
    "index_run",
    "model_fingerprint",
    "search_run",
]

THUMB_SIDE = 128
SPLITS = ("database", "query", "train")


class NotFound(LookupError):
    """An id that the index does not hold (the web app answers 404)."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> dict[str, str]:
    """SHA-256 of ``model.safetensors`` and ``model.json`` and one digest over both: an index
    remembers it so codes of another (or retrained) model can never be mixed in."""
    from ..hashing.checkpoint import META, WEIGHTS

    model_dir = Path(model_dir).resolve()
    parts = {}
    for key, name in (("weights_sha256", WEIGHTS), ("meta_sha256", META)):
        path = model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (is {model_dir} a trained-model folder?)")
        parts[key] = _file_sha256(path)
    combined = hashlib.sha256(f"{parts['weights_sha256']}:{parts['meta_sha256']}".encode())
    return {"fingerprint": combined.hexdigest(), **parts, "path": str(model_dir)}


def decode_image(
    data: bytes, *, resolution: int, channels: int, name: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Image bytes → uint8 (C, R, R), by the dataset loader's rule (``data.images``: EXIF
    orientation, any mode to RGB, shorter side resized then centre-cropped); a 1-channel model
    gets the luminance.

    Refuses non-images and images over ``max_pixels`` (checked from the header, before the
    pixels are decoded) with a ``ValueError`` naming ``name``.
    """
    from PIL import Image

    from ..data import DataError
    from ..data.images import decode_image as decode_file
    from ..data.images import probe_size

    try:
        w, h = probe_size(data, name=name)
        if w * h > max_pixels:
            raise ValueError(f"{name}: {w}x{h} pixels is over the limit of {max_pixels:,}")
        arr, _ = decode_file(data, resolution, name=name)
    except DataError as e:
        raise ValueError(f"{name}: not a readable image ({e})") from None
    if channels == 1:
        return np.array(Image.fromarray(arr).convert("L"), dtype=np.uint8)[None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass
class QueryEncoder:
    """A trained network with its input contract (resolution, channels, normalisation)."""

    model: Any
    meta: dict[str, Any]
    fingerprint: dict[str, str]
    precision: str = "fp32"
    compile: str = "off"
    batch_size: int = 500

    @classmethod
    def load(cls, model_dir: str | Path, *, precision: str = "fp32", compile: str = "off",
             batch_size: int = 500) -> QueryEncoder:
        from ..hashing.checkpoint import load_hashing_model

        fingerprint = model_fingerprint(model_dir)
        model, meta = load_hashing_model(Path(model_dir))
        return cls(model, meta, fingerprint, precision, compile, batch_size)

    @property
    def bits(self) -> int:
        return int(self.meta["bits"])

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def channels(self) -> int:
        return int(self.meta["in_channels"])

    def encode(self, images: Any, *, progress: bool = False) -> np.ndarray:
        """uint8 images (N, C, R, R) → codes (N, K) int8 in {-1, +1}, via the judge's encoder."""
        import torch

        from ..hashing.trainer import encode_images
        from ..normalization import Normalization

        images = torch.as_tensor(images)
        expected = (self.channels, self.resolution, self.resolution)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images: expected uint8 (N, {', '.join(map(str, expected))}) for "
                             f"this model, got {images.dtype} {tuple(images.shape)}")
        norm = self.meta["normalization"]
        normalization = Normalization(tuple(norm["mean"]), tuple(norm["std"]))
        codes = encode_images(self.model, images, normalization.normalize,
                              batch_size=self.batch_size, precision=self.precision,
                              compile=self.compile, progress=progress)
        return codes.numpy()

    def decode(self, data: bytes, name: str = "image",
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        return decode_image(data, resolution=self.resolution, channels=self.channels, name=name,
                            max_pixels=max_pixels)


# ---------------------------------------------------------------------------------- runs


def _load_split_images(dataset: str, data_root: str | None, split: str | None, split_seed: int,
                       resolution: int) -> tuple[Any, dict[str, Any]]:
    """The images to index: a protocol's split (default its database), or a whole collection
    that has no splits (layout ``<class>/<image>``) when no split is asked for."""
    from ..data import load_collection, make_split, resolve_protocol

    if split is not None and split not in SPLITS:
        raise ValueError(f"--split: choose one of {', '.join(SPLITS)}, got {split!r}")
    spec = resolve_protocol(dataset)
    desc: dict[str, Any] = {"dataset": dataset if spec.builtin else spec.sources[0],
                            "split": split, "split_seed": split_seed}
    if split is None and not spec.builtin:
        coll, _, pools = load_collection(spec.sources[0], resolution=resolution)
        if coll.layout == "pool":
            images = pools["pool"]
            desc.update(split="all", count=len(images))
            return images, _stamp(desc)
    protocol = make_split(spec, data_root, seed=split_seed, resolution=resolution)
    images = getattr(protocol, split or "database")
    desc.update(split=split or "database", protocol_fingerprint=protocol.fingerprint(),
                count=len(images))
    return images, _stamp(desc)


def _stamp(desc: dict[str, Any]) -> dict[str, Any]:
    return {**desc, "added_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _encode_collection(encoder: QueryEncoder, images: Any, progress: bool
                       ) -> tuple[np.ndarray, list[str | None] | None, np.ndarray | None]:
    if images.channels != encoder.channels or images.resolution != encoder.resolution:
        raise ValueError(f"dataset: {images.channels}-channel {images.resolution}px images, the "
                         f"model takes {encoder.channels}-channel {encoder.resolution}px")
    codes = encoder.encode(images.images, progress=progress)
    sources = images.sources
    # Without source files, keep the pixels the model saw so the page can still show them.
    thumbs = images.images.numpy() if sources is None else None
    return codes, (list(sources) if sources is not None else None), thumbs


def index_run(
    *, model_dir: Path, dataset: str, out: Path, data_root: str | None = None,
    split: str = "database", split_seed: int = 0, kind: str = "auto",
    params: IndexParams | None = None, precision: str = "fp32", compile: str = "off",
    batch_size: int = 500, progress: bool = True,
) -> dict[str, Any]:
    """Encode a dataset split with a trained model and write an index folder to ``out``."""
    encoder = QueryEncoder.load(model_dir, precision=precision, compile=compile,
                                batch_size=batch_size)
    images, batch = _load_split_images(dataset, data_root, split, split_seed, encoder.resolution)
    start = time.perf_counter()
    codes, sources, thumbs = _encode_collection(encoder, images, progress)
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    info = {"resolution": encoder.resolution, "channels": encoder.channels,
            "precision": precision, "batches": [{**batch, "first_id": 0}]}
    index = CodeIndex.create(codes, images.labels.numpy(), sources=sources,
                             classes=images.classes, model=encoder.fingerprint, kind=kind,
                             params=params, thumbs=thumbs, info=info)
    build_seconds = time.perf_counter() - start
    index.save(out)
    log.info("indexed %d images in %s (%s)", len(index), out, index.kind)
    return {"index": str(out), "count": len(index), "bits": index.bits, "kind": index.kind,
            "encode_seconds": encode_seconds, "build_seconds": build_seconds}


def _encoder_for(index: CodeIndex, model_dir: Path | None, index_dir: Path,
                 **kwargs: Any) -> QueryEncoder:
    path = model_dir or Path(str(index.model.get("path", "")))
    if not str(path):
        raise ValueError(f"{index_dir}: records no model path; pass --model")
    precision = str(index.info.get("precision", "fp32"))
    encoder = QueryEncoder.load(path, precision=precision, **kwargs)
    if encoder.fingerprint["fingerprint"] != index.model.get("fingerprint"):
        raise ValueError(f"{index_dir}: built with model "
                         f"{str(index.model.get('fingerprint'))[:12]}, but {path} is "
                         f"{encoder.fingerprint['fingerprint'][:12]} (another or retrained model)")
    if encoder.bits != index.bits:
        raise ValueError(f"{path}: {encoder.bits}-bit model, {index_dir} holds {index.bits}-bit "
                         "codes")
    return encoder


def add_run(
    *, index_dir: Path, dataset: str, data_root: str | None = None, split: str = "database",
    split_seed: int = 0, model_dir: Path | None = None, batch_size: int = 500,
    progress: bool = True,
) -> dict[str, Any]:
    """Append a dataset split to an index, encoded by the index's own model (checked)."""
    index = CodeIndex.load(index_dir)
    encoder = _encoder_for(index, model_dir, index_dir, batch_size=batch_size)
    images, batch = _load_split_images(dataset, data_root, split, split_seed, encoder.resolution)
    if index.classes and tuple(images.classes) != index.classes:
        raise ValueError(f"--dataset {dataset}: classes {list(images.classes)[:5]}… differ from "
                         f"the index's {list(index.classes)[:5]}…")
    codes, sources, thumbs = _encode_collection(encoder, images, progress)
    first = len(index)
    index.add(codes, images.labels.numpy(), sources=sources, thumbs=thumbs)
    index.info.setdefault("batches", []).append({**batch, "first_id": first})
    index.save(index_dir)
    return {"index": str(index_dir), "added": len(codes), "count": len(index)}


class SearchEngine:
    """An index and its model, loaded once: searches by image bytes or by indexed id."""

    def __init__(self, index_dir: str | Path, *, model_dir: str | Path | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.index_dir = Path(index_dir)
        self.index = CodeIndex.load(self.index_dir)
        self.encoder = _encoder_for(self.index, Path(model_dir) if model_dir else None,
                                    self.index_dir, batch_size=64)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.index)

    def info(self) -> dict[str, Any]:
        idx = self.index
        return {"count": len(idx), "bits": idx.bits, "kind": idx.kind, "classes":
                list(idx.classes), "labelled": bool((idx.labels >= 0).any()),
                "tie_seed": idx.tie_seed, "model": idx.model.get("fingerprint", "")[:12],
                "resolution": self.encoder.resolution, "channels": self.encoder.channels,
                "batches": idx.info.get("batches", [])}

    def _check_id(self, item: int) -> int:
        if not 0 <= item < len(self.index):
            raise NotFound(f"id {item}: not in the index (0..{len(self.index) - 1})")
        return int(item)

    def describe(self, item: int) -> dict[str, Any]:
        item = self._check_id(item)
        label = int(self.index.labels[item])
        classes = self.index.classes
        return {"id": item, "label": label if label >= 0 else None,
                "class": classes[label] if 0 <= label < len(classes) else None,
                "source": self.index.sources[item]}

    def _results(self, packed: np.ndarray, k: int, label: int | None) -> dict[str, Any]:
        start = time.perf_counter()
        hits = self.index.search_packed(packed, k)
        search_ms = 1000 * (time.perf_counter() - start)
        results = [{"rank": r + 1, "distance": int(d), **self.describe(int(i))}
                   for r, (i, d) in enumerate(zip(hits.ids[0], hits.distances[0], strict=True))
                   if i >= 0]
        precision = None
        if label is not None and results:
            precision = sum(r["label"] == label for r in results) / len(results)
        return {"k": len(results), "results": results, "precision_at_k": precision,
                "search_ms": search_ms}

    def search_bytes(self, data: bytes, k: int = 10, name: str = "image") -> dict[str, Any]:
        """Decode, encode and search one image; latency split into its three steps."""
        t0 = time.perf_counter()
        pixels = self.encoder.decode(data, name, self.max_pixels)
        t1 = time.perf_counter()
        codes = self.encoder.encode(pixels[None])
        t2 = time.perf_counter()
        from ..retrieval import pack_codes

        out = self._results(pack_codes(codes), k, None)
        out["query"] = {"name": name, "label": None}
        out["latency_ms"] = {"decode": 1000 * (t1 - t0), "encode": 1000 * (t2 - t1),
                             "search": out.pop("search_ms"),
                             "total": 1000 * (time.perf_counter() - t0)}
        return out

    def search_id(self, item: int, k: int = 10) -> dict[str, Any]:
        """Search with the stored code of an indexed item; precision@k against its label."""
        t0 = time.perf_counter()
        query = self.describe(item)
        out = self._results(self.index.codes[item : item + 1], k, query["label"])
        out["query"] = query
        out["latency_ms"] = {"search": out.pop("search_ms"),
                             "total": 1000 * (time.perf_counter() - t0)}
        return out

    def random_ids(self, n: int, seed: int | None = None) -> list[int]:
        rng = np.random.default_rng(seed)
        n = max(0, min(int(n), len(self.index)))
        return sorted(rng.choice(len(self.index), n, replace=False).tolist())

    def thumbnail(self, item: int) -> bytes:
        """PNG thumbnail of an indexed item: its source file when known, else the stored
        pixels the model saw (shown enlarged by the page); never a caller-supplied path."""
        import zipfile

        from PIL import Image, ImageOps

        from ..data import read_source_bytes

        item = self._check_id(item)
        source = self.index.sources[item]
        if source is not None:
            try:
                data = read_source_bytes(source)
            except (OSError, KeyError, zipfile.BadZipFile) as e:
                raise NotFound(f"id {item}: source unreadable ({e})") from None
            try:
                with Image.open(io.BytesIO(data)) as img:
                    if img.size[0] * img.size[1] > self.max_pixels:
                        raise NotFound(f"id {item}: source image too large for a thumbnail")
                    img = ImageOps.exif_transpose(img).convert("RGB")  # as a viewer shows it
                    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
                    return _png(img)
            except (OSError, SyntaxError, Image.DecompressionBombError) as e:
                raise NotFound(f"id {item}: source is not a readable image ({e})") from None
        if self.index.thumbs is None:
            raise NotFound(f"id {item}: no source file and no stored pixels")
        arr = self.index.thumbs[item]
        img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        return _png(img)


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def search_run(*, index_dir: Path, images: Sequence[Path], k: int = 10,
               model_dir: Path | None = None) -> list[dict[str, Any]]:
    """Search each image file; one result dict per image (see :meth:`SearchEngine.search_bytes`)."""
    engine = SearchEngine(index_dir, model_dir=model_dir)
    out = []
    for path in images:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found")
        result = engine.search_bytes(path.read_bytes(), k, name=str(path))
        out.append(result)
    return out
