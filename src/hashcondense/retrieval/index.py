"""A searchable index of binary hash codes: packed codes + ids + labels + sources on disk, and a
faiss binary index in memory, ranking exactly as the metrics do.

Files in an index folder (written atomically, see :meth:`CodeIndex.save`):

* ``index.json`` — format, bit length, count, kind and its parameters, tie seed, classes,
  per-item source strings, the fingerprint of the model that produced the codes, free-form
  ``info`` (how the codes were made), and the name + SHA-256 of the two files below;
* ``tensors-<sha12>.safetensors`` — ``codes`` (n, ceil(K/8)) uint8 packed as
  :func:`~hashcondense.retrieval.codes.pack_codes`, ``ids`` (n,) int64 = 0..n-1 (the database
  order of the tie rule), ``labels`` (n,) int64 (-1 = unknown), optional ``thumbs`` (n, C, h, w)
  uint8 for items without a source file;
* ``faiss-<sha12>.index`` — only for approximate kinds (``hnsw``, ``ivf``, ``mih``): they take
  seconds to minutes to build, so they are serialised. The ``exact`` kind (``IndexBinaryFlat``)
  is rebuilt from the codes at load time instead: that is a memory copy (~10 ms per million
  64-bit codes), and it lets the flat index hold the codes in tie-rule order (below), which
  changes whenever items are added.

The JSON is replaced last, and data files carry their hash in their name, so a crash at any
point leaves the previous index readable; loading recomputes both hashes and refuses a
truncated or tampered file with a one-line error.

TIE RULE (the same as :mod:`hashcondense.retrieval.metrics`): rank by Hamming distance, then by
database order after ``perm = np.random.default_rng(tie_seed).permutation(n)``, i.e. item
``perm[j]`` comes before item ``perm[j + 1]`` at equal distance. The exact index stores the codes
in ``perm`` order, so faiss's (distance, position) order *is* that rule; results are re-sorted
by (distance, position) anyway so they never depend on faiss's tie handling. Approximate kinds
fetch ``candidates * k`` neighbours and re-rank them by the same key; they are exact only when
their candidates contain the exact top-k. Adding items changes ``n`` and therefore ``perm``:
rankings follow the metric on the whole, grown database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..records import atomic_write_bytes, write_json
from .codes import _check_packed, as_numpy, pack_codes

log = logging.getLogger(__name__)

__all__ = [
    "INDEX_META",
    "KINDS",
    "AUTO_EXACT_MAX",
    "CodeIndex",
    "IndexParams",
    "SearchHits",
    "tie_ranks",
]

INDEX_META = "index.json"
FORMAT = "hashcondense-index"
VERSION = 1
KINDS = ("exact", "hnsw", "ivf", "mih")
# ``--kind auto`` stays exact up to this many codes: exact faiss search over 1M 64-bit codes
# runs at hundreds of queries/s on 2 cores (benchmarks/results/search.md), so only larger
# collections trade exactness for speed.
AUTO_EXACT_MAX = 2_000_000
AUTO_APPROX_KIND = "ivf"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tie_ranks(n: int, tie_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(perm, rank): ``perm`` is the metric's tie permutation of ``n`` items and
    ``rank[i]`` the position of item ``i`` in it (smaller rank wins a distance tie)."""
    perm = np.random.default_rng(tie_seed).permutation(n)
    rank = np.empty(n, dtype=np.int64)
    rank[perm] = np.arange(n, dtype=np.int64)
    return perm, rank


@dataclass(frozen=True)
class IndexParams:
    """Build and search parameters of the faiss index; defaults measured in
    ``benchmarks/search.py`` (64-bit clustered codes, 1M items)."""

    hnsw_m: int = 16
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64
    ivf_nlist: int | None = None  # None: sqrt(n), at most 2048 and n / 39 (k-means needs ~40
    # points per list); 1024 lists over 1M clustered codes reach recall@10 >= 0.95 at nprobe 1
    ivf_nprobe: int = 16
    mih_nhash: int = 4
    mih_bits: int = 16
    mih_nflip: int = 2
    candidates: int = 2  # approximate kinds fetch candidates * k neighbours to re-rank

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            low = 0 if name == "mih_nflip" else 1
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"index parameter {name}: must be an int >= {low}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "index parameters") -> IndexParams:
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"{source}: unexpected index parameter ({e})") from None


@dataclass
class SearchHits:
    """Ranked results: ``ids`` (nq, k) int64 and ``distances`` (nq, k) int32, best first.

    Approximate kinds may find fewer than k items: missing slots hold id -1, distance -1.
    """

    ids: np.ndarray
    distances: np.ndarray


def resolve_kind(kind: str, n: int) -> str:
    """``auto`` → exact up to :data:`AUTO_EXACT_MAX` codes, else :data:`AUTO_APPROX_KIND`."""
    if kind == "auto":
        return "exact" if n <= AUTO_EXACT_MAX else AUTO_APPROX_KIND
    if kind not in KINDS:
        raise ValueError(f"--kind: unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")
    return kind


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ValueError("faiss is not installed: pip install 'hashcondense[search]'") from None
    return faiss


def _ivf_nlist(params: IndexParams, n: int) -> int:
    if params.ivf_nlist is not None:
        return params.ivf_nlist
    return max(1, min(2048, int(math.sqrt(n)), n // 39))


def _build_approx(kind: str, codes: np.ndarray, params: IndexParams) -> Any:
    """A faiss binary index over ``codes`` in id order (faiss label = item id)."""
    faiss = _faiss()
    d = 8 * codes.shape[1]
    if kind == "hnsw":
        index = faiss.IndexBinaryHNSW(d, params.hnsw_m)
        index.hnsw.efConstruction = params.hnsw_ef_construction
    elif kind == "ivf":
        nlist = min(_ivf_nlist(params, len(codes)), len(codes))
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(d), d, nlist)  # keeps a reference
        # k-means needs ~40 points per list; more only slows training.
        sample = codes
        if len(codes) > 64 * nlist:
            pick = np.random.default_rng(0).choice(len(codes), 64 * nlist, replace=False)
            sample = codes[np.sort(pick)]
        index.train(np.ascontiguousarray(sample))
    elif kind == "mih":
        if d % params.mih_bits or params.mih_nhash * params.mih_bits > d:
            raise ValueError(f"mih: {params.mih_nhash} tables of {params.mih_bits} bits do not "
                             f"fit {d}-bit codes")
        index = faiss.IndexBinaryMultiHash(d, params.mih_nhash, params.mih_bits)
    else:  # pragma: no cover - guarded by resolve_kind
        raise ValueError(f"unknown kind {kind!r}")
    index.add(np.ascontiguousarray(codes))
    return index


def _set_search_params(kind: str, index: Any, params: IndexParams) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = params.hnsw_ef_search
    elif kind == "ivf":
        index.nprobe = params.ivf_nprobe
    elif kind == "mih":
        index.nflip = params.mih_nflip


def _check_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels if labels is not None else np.full(n, -1), dtype=np.int64)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    return arr


@dataclass
class CodeIndex:
    """Packed binary codes with ids, labels, sources and a faiss index (see module doc).

    Build with :meth:`create`, grow with :meth:`add`, persist with :meth:`save` /
    :meth:`load`, query with :meth:`search`.
    """

    codes: np.ndarray  # (n, B) uint8 packed
    bits: int
    labels: np.ndarray  # (n,) int64, -1 = unknown
    sources: list[str | None]
    classes: tuple[str, ...] = ()
    model: dict[str, Any] = field(default_factory=dict)  # fingerprint of the encoder
    kind: str = "exact"
    params: IndexParams = field(default_factory=IndexParams)
    tie_seed: int = 0
    thumbs: np.ndarray | None = None  # (n, C, h, w) uint8 or None
    info: dict[str, Any] = field(default_factory=dict)
    _faiss_index: Any = field(default=None, repr=False)
    _perm: np.ndarray | None = field(default=None, repr=False)
    _rank: np.ndarray | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ building

    @classmethod
    def create(
        cls,
        codes: Any,
        labels: Any = None,
        *,
        sources: Sequence[str | None] | None = None,
        classes: Sequence[str] = (),
        model: dict[str, Any] | None = None,
        kind: str = "auto",
        params: IndexParams | None = None,
        thumbs: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
        tie_seed: int = 0,
    ) -> CodeIndex:
        """Index ``codes`` (n, K) in any convention of :func:`pack_codes` (±1, 0/1, real)."""
        bits_matrix = np.asarray(codes)
        if bits_matrix.ndim != 2 or bits_matrix.shape[0] == 0:
            raise ValueError(f"codes: expected a non-empty (n, K) array, got {bits_matrix.shape}")
        packed = pack_codes(codes, "codes")
        return cls.from_packed(
            packed, int(bits_matrix.shape[1]), labels, sources=sources, classes=classes,
            model=model, kind=kind, params=params, thumbs=thumbs, info=info, tie_seed=tie_seed,
        )

    @classmethod
    def from_packed(
        cls,
        packed: np.ndarray,
        bits: int,
        labels: Any = None,
        *,
        sources: Sequence[str | None] | None = None,
        classes: Sequence[str] = (),
        model: dict[str, Any] | None = None,
        kind: str = "auto",
        params: IndexParams | None = None,
        thumbs: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
        tie_seed: int = 0,
    ) -> CodeIndex:
        """Index already packed codes (n, ceil(bits/8)) uint8 (padding bits must be 0)."""
        packed = np.ascontiguousarray(_check_packed(packed, "codes"))
        n = packed.shape[0]
        if n == 0:
            raise ValueError("codes: nothing to index (0 rows)")
        _check_width(packed, bits, "codes")
        index = cls(
            codes=packed, bits=int(bits), labels=_check_labels(labels, n),
            sources=_check_sources(sources, n), classes=tuple(classes), model=dict(model or {}),
            kind=resolve_kind(kind, n), params=params or IndexParams(),
            thumbs=_check_thumbs(thumbs, n), info=dict(info or {}), tie_seed=int(tie_seed),
        )
        index._build()
        return index

    def _build(self) -> None:
        n = len(self.codes)
        self._perm, self._rank = tie_ranks(n, self.tie_seed)
        if self.kind == "exact":
            faiss = _faiss()
            flat = faiss.IndexBinaryFlat(8 * self.codes.shape[1])
            flat.add(np.ascontiguousarray(self.codes[self._perm]))
            self._faiss_index = flat
        elif self._faiss_index is None:
            log.info("building a %s index over %d codes", self.kind, n)
            self._faiss_index = _build_approx(self.kind, self.codes, self.params)
        _set_search_params(self.kind, self._faiss_index, self.params)

    def add(
        self,
        codes: Any,
        labels: Any = None,
        *,
        sources: Sequence[str | None] | None = None,
        thumbs: np.ndarray | None = None,
        packed: bool = False,
    ) -> np.ndarray:
        """Append items (ids continue from ``len(self)``); returns their ids."""
        if packed:
            new = np.ascontiguousarray(_check_packed(codes, "codes"))
        else:
            arr = as_numpy(codes, "codes")
            if arr.ndim != 2 or arr.shape[1] != self.bits:
                raise ValueError(f"codes: shape {arr.shape} cannot join a {self.bits}-bit "
                                 "index: bit length mismatch")
            new = pack_codes(arr, "codes")
        _check_width(new, self.bits, "codes")
        m = new.shape[0]
        if m == 0:
            raise ValueError("codes: nothing to add (0 rows)")
        new_labels = _check_labels(labels, m)
        new_sources = _check_sources(sources, m)
        new_thumbs = _check_thumbs(thumbs, m)
        if (self.thumbs is None) != (new_thumbs is None) or (
            self.thumbs is not None and new_thumbs.shape[1:] != self.thumbs.shape[1:]
        ):
            raise ValueError("thumbs: the added items' thumbnails do not match the index's "
                             "(present in one, absent in the other, or another size)")
        start = len(self)
        self.codes = np.concatenate([self.codes, new])
        self.labels = np.concatenate([self.labels, new_labels])
        self.sources = self.sources + new_sources
        if self.thumbs is not None:
            self.thumbs = np.concatenate([self.thumbs, new_thumbs])
        if self.kind != "exact":
            self._faiss_index.add(new)  # approximate kinds keep id order: append
        self._build()
        return np.arange(start, start + m, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    # ------------------------------------------------------------------ searching

    def search(self, query_codes: Any, k: int = 10) -> SearchHits:
        """Top-``k`` items per query (codes in any :func:`pack_codes` convention)."""
        q = as_numpy(query_codes, "query codes")
        if q.ndim != 2 or q.shape[1] != self.bits:
            raise ValueError(f"query codes: expected shape (nq, {self.bits}), got {q.shape}: "
                             "bit length mismatch")
        return self.search_packed(pack_codes(q, "query codes"), k)

    def search_packed(self, query_packed: np.ndarray, k: int = 10) -> SearchHits:
        """Top-``k`` items per packed query row (nq, ceil(bits/8)) uint8, tie rule applied."""
        q = np.ascontiguousarray(_check_packed(query_packed, "query codes"))
        if q.shape[1] != self.codes.shape[1]:
            raise ValueError(f"query codes: {q.shape[1]} bytes per code, the index has "
                             f"{self.codes.shape[1]} ({self.bits} bits)")
        if int(k) != k or k < 1:
            raise ValueError(f"k: must be a positive integer, got {k!r}")
        k = min(int(k), len(self))
        if self.kind == "exact":
            dist, pos = self._faiss_index.search(q, k)
            # (distance, position) is the tie rule; faiss already returns it, re-sorting makes
            # the result independent of faiss's tie handling.
            order = np.lexsort((pos, dist), axis=1)
            pos = np.take_along_axis(pos, order, 1)
            dist = np.take_along_axis(dist, order, 1)
            return SearchHits(self._perm[pos].astype(np.int64), dist.astype(np.int32))
        fetch = min(len(self), k * self.params.candidates)
        if self.kind == "hnsw":
            self._faiss_index.hnsw.efSearch = max(self.params.hnsw_ef_search, fetch)
        dist, ids = self._faiss_index.search(q, fetch)
        dist = dist.astype(np.int64)
        missing = ids < 0
        # Re-rank by (distance, tie rank); missing slots sort last.
        key = np.where(missing, np.iinfo(np.int64).max,
                       dist * (len(self) + 1) + self._rank[np.where(missing, 0, ids)])
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(ids, order, 1).astype(np.int64)
        dist = np.take_along_axis(dist, order, 1).astype(np.int32)
        dist[ids < 0] = -1
        return SearchHits(ids, dist)

    def tune(self, **overrides: Any) -> IndexParams:
        """Change search-time parameters (``ivf_nprobe``, ``hnsw_ef_search``, ``mih_nflip``,
        ``candidates``) in place; build-time ones need a rebuild and are refused."""
        build_only = {"hnsw_m", "hnsw_ef_construction", "ivf_nlist", "mih_nhash", "mih_bits"}
        if bad := build_only & overrides.keys():
            raise ValueError(f"index parameters {sorted(bad)} are fixed once the index is built")
        self.params = replace(self.params, **overrides)
        _set_search_params(self.kind, self._faiss_index, self.params)
        return self.params

    def faiss_index(self) -> Any:
        """The underlying faiss index (exact kind: codes in tie-rule order)."""
        return self._faiss_index

    # ------------------------------------------------------------------ persistence

    def _describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "bits": self.bits, "count": len(self),
            "kind": self.kind, "params": self.params.to_dict(), "tie_seed": self.tie_seed,
            "classes": list(self.classes), "model": self.model, "info": self.info,
            "sources": self.sources,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index folder atomically (data files first, ``index.json`` last)."""
        from safetensors.numpy import save as st_save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"codes": self.codes, "ids": np.arange(len(self), dtype=np.int64),
                   "labels": self.labels}
        if self.thumbs is not None:
            tensors["thumbs"] = np.ascontiguousarray(self.thumbs)
        blob = st_save(tensors)
        digest = _sha256(blob)
        meta = self._describe()
        meta["tensors"] = {"file": f"tensors-{digest[:12]}.safetensors", "sha256": digest}
        atomic_write_bytes(directory / meta["tensors"]["file"], blob)
        meta["faiss"] = None
        if self.kind != "exact":
            data = _faiss().serialize_index_binary(self._faiss_index).tobytes()
            fdigest = _sha256(data)
            meta["faiss"] = {"file": f"faiss-{fdigest[:12]}.index", "sha256": fdigest}
            atomic_write_bytes(directory / meta["faiss"]["file"], data)
        write_json(directory / INDEX_META, meta)
        keep = {meta["tensors"]["file"], (meta["faiss"] or {}).get("file")}
        for stale in [*directory.glob("tensors-*.safetensors"), *directory.glob("faiss-*.index")]:
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike,
             expect_model: str | None = None) -> CodeIndex:
        """Read an index folder, verifying hashes, shapes and (when given) the model fingerprint.

        Any inconsistency raises ``ValueError`` naming the file.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load as st_load

        directory = Path(directory)
        meta_path = directory / INDEX_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not found (is {directory} an index folder "
                                    "written by 'hashcondense index'?)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: not a hashcondense index")
        if meta.get("version") != VERSION:
            raise ValueError(f"{meta_path}: index format version {meta.get('version')!r}, "
                             f"this hashcondense reads {VERSION}")
        try:
            bits, count, kind = int(meta["bits"]), int(meta["count"]), str(meta["kind"])
            tensor_file = directory / Path(meta["tensors"]["file"]).name
            tensor_sha = str(meta["tensors"]["sha256"])
            model = dict(meta["model"])
            params = IndexParams.from_dict(meta["params"], str(meta_path))
            sources = list(meta["sources"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{meta_path}: missing or malformed field ({e})") from None
        if expect_model is not None and model.get("fingerprint") != expect_model:
            raise ValueError(
                f"{meta_path}: built with model {str(model.get('fingerprint'))[:12]} "
                f"({model.get('path', '?')}), not with this model {expect_model[:12]}"
            )
        blob = _read_checked(tensor_file, tensor_sha)
        try:
            tensors = st_load(blob)
        except (SafetensorError, ValueError) as e:
            raise ValueError(f"{tensor_file}: unreadable safetensors ({e})") from None
        codes = tensors.get("codes")
        if codes is None or codes.dtype != np.uint8 or codes.ndim != 2:
            raise ValueError(f"{tensor_file}: no uint8 (n, bytes) 'codes' tensor")
        if codes.shape[0] != count:
            raise ValueError(f"{tensor_file}: {codes.shape[0]} codes, {meta_path} says {count}")
        _check_width(codes, bits, str(tensor_file))
        ids = tensors.get("ids")
        if ids is None or not np.array_equal(ids, np.arange(count)):
            raise ValueError(f"{tensor_file}: 'ids' must be 0..{count - 1}")
        labels = tensors.get("labels")
        if labels is None or labels.shape != (count,):
            raise ValueError(f"{tensor_file}: 'labels' must have shape ({count},)")
        if len(sources) != count:
            raise ValueError(f"{meta_path}: {len(sources)} sources for {count} codes")
        thumbs = tensors.get("thumbs")
        if thumbs is not None and (thumbs.dtype != np.uint8 or thumbs.ndim != 4
                                   or thumbs.shape[0] != count):
            raise ValueError(f"{tensor_file}: 'thumbs' must be (n, C, h, w) uint8")
        index = cls(
            codes=np.ascontiguousarray(codes), bits=bits, labels=labels.astype(np.int64),
            sources=sources, classes=tuple(meta.get("classes") or ()), model=model,
            kind=resolve_kind(kind, count), params=params, tie_seed=int(meta.get("tie_seed", 0)),
            thumbs=thumbs, info=dict(meta.get("info") or {}),
        )
        if index.kind != "exact":
            fmeta = meta.get("faiss") or {}
            if "file" not in fmeta or "sha256" not in fmeta:
                raise ValueError(f"{meta_path}: a {kind} index needs its 'faiss' file entry")
            fpath = directory / Path(fmeta["file"]).name
            data = _read_checked(fpath, str(fmeta["sha256"]))
            try:
                fi = _faiss().deserialize_index_binary(np.frombuffer(data, dtype=np.uint8))
            except RuntimeError as e:
                raise ValueError(f"{fpath}: unreadable faiss index ({e})") from None
            if fi.ntotal != count or fi.d != 8 * codes.shape[1]:
                raise ValueError(f"{fpath}: holds {fi.ntotal} codes of {fi.d} bits, the index "
                                 f"has {count} of {bits}")
            index._faiss_index = fi
        index._build()
        return index


def _read_checked(path: Path, sha256: str) -> bytes:
    if not path.is_file():
        raise ValueError(f"{path}: missing (the index folder is incomplete)")
    data = path.read_bytes()
    if _sha256(data) != sha256:
        raise ValueError(f"{path}: SHA-256 differs from {INDEX_META} (truncated or modified)")
    return data


def _check_width(packed: np.ndarray, bits: int, name: str) -> None:
    if bits < 1:
        raise ValueError(f"{name}: bit length must be positive, got {bits}")
    if packed.shape[1] != -(-bits // 8):
        raise ValueError(f"{name}: {packed.shape[1]} bytes per code do not hold {bits}-bit "
                         f"codes (expected {-(-bits // 8)}): bit length mismatch")
    if bits % 8 and (packed[:, -1] & np.uint8((1 << (8 - bits % 8)) - 1)).any():
        raise ValueError(f"{name}: padding bits beyond bit {bits} are set: bit length mismatch")


def _check_sources(sources: Sequence[str | None] | None, n: int) -> list[str | None]:
    if sources is None:
        return [None] * n
    out = list(sources)
    if len(out) != n:
        raise ValueError(f"sources: {len(out)} entries for {n} codes")
    if any(s is not None and not isinstance(s, str) for s in out):
        raise ValueError("sources: entries must be strings or None")
    return out


def _check_thumbs(thumbs: np.ndarray | None, n: int) -> np.ndarray | None:
    if thumbs is None:
        return None
    arr = np.asarray(thumbs)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n:
        raise ValueError(f"thumbs: expected ({n}, C, h, w) uint8, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)
