"""Retrieval splits (query / train / database) for the benchmark protocols.

Every split is drawn with ``np.random.default_rng(seed)``, class by class in label order, so a
(protocol, seed, data) triple always gives the same indices; ``RetrievalSplit.save_indices``
records them so a run can be repeated exactly even if the sampling code changes.

Protocols (per-class counts in :data:`PER_CLASS`, as (query, train)):

* ``cifar10`` (DeepHash-pytorch "cifar10"): pool ``"pool"`` = CIFAR-10 train then test
  (60,000; index = position in that concatenation).  Per class, after one permutation of the
  class's pool indices: first 100 -> query, next 500 -> train, rest -> database, giving
  1,000 / 5,000 / 54,000; the database excludes query and train.  mAP@1000.
* ``imagenet10``: Imagenette.  Pools ``"train"`` (train split) and ``"test"`` (test split).
  First, per class, 130 train images are sampled from the train split; then, per class, 50
  queries from the test split.  The database is the whole train split, training images
  included (as in HashNet's ImageNet protocol).  ``train_index`` and ``database_index`` index
  the train split, ``query_index`` the test split.  mAP@1000.
* ``imagenet20``: Imagenette + Imagewoof (Imagewoof labels offset by 10); pools are the two
  train splits concatenated (Imagenette first) and the two test splits likewise; same rules.
* ``digits``: scikit-learn digits, pool = its train then test split (1,797); per class
  20 query / 50 train / rest database (200 / 500 / 1,097).  mAP over the whole database.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sources import DataError, LabeledImages, concat_images, load_source

PROTOCOLS: tuple[str, ...] = ("cifar10", "imagenet10", "imagenet20", "digits")
# (query, train) images per class.  Module-level so tests can shrink them.
PER_CLASS: dict[str, tuple[int, int]] = {
    "cifar10": (100, 500),
    "imagenet10": (50, 130),
    "imagenet20": (50, 130),
    "digits": (20, 50),
}
TOPK: dict[str, int | None] = {
    "cifar10": 1000,
    "imagenet10": 1000,
    "imagenet20": 1000,
    "digits": None,
}
# Pooled protocols draw query/train/database from one pool; the others use train/test splits.
_POOLED = frozenset({"cifar10", "digits"})
SPLIT_FILE_FORMAT = "hashcondense-split"
SPLIT_FILE_VERSION = 1


def split_per_class(
    labels: np.ndarray | Sequence[int],
    counts: Sequence[int | None],
    rng: np.random.Generator,
    *,
    classes: Sequence[str] | None = None,
    part_names: Sequence[str] | None = None,
    pool_name: str = "pool",
) -> list[np.ndarray]:
    """Partition indices per class: ``counts[j]`` images of each class go to part ``j``.

    Classes are visited in label order (0, 1, ...) and each is permuted once with ``rng``; the
    parts take consecutive slices.  ``None`` as the last count means "all the rest".  Each
    returned part is sorted.  A class with too few images raises :class:`DataError`.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    counts = list(counts)
    if any(c is None for c in counts[:-1]):
        raise ValueError("only the last count may be None (the rest)")
    n_classes = len(classes) if classes is not None else int(labels.max(initial=-1)) + 1
    names = part_names or [f"part{j}" for j in range(len(counts))]
    fixed = [int(c) for c in counts if c is not None]
    need = sum(fixed)
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < need:
            cname = classes[c] if classes is not None else str(c)
            wants = " + ".join(f"{k} {n}" for k, n in zip(fixed, names, strict=False))
            raise DataError(
                f"class {cname!r} has {len(idx)} images in {pool_name}, "
                f"but the protocol needs {wants} = {need} per class"
            )
        perm = rng.permutation(idx)
        start = 0
        for j, k in enumerate(counts):
            stop = len(perm) if k is None else start + int(k)
            parts[j].append(perm[start:stop])
            start = stop
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


@dataclass(frozen=True, eq=False)
class SplitIndices:
    """The index lists of a split, as saved by :meth:`RetrievalSplit.save_indices`."""

    protocol: str
    seed: int
    query_index: np.ndarray
    train_index: np.ndarray
    database_index: np.ndarray
    pools: Mapping[str, int] = field(default_factory=dict)
    fingerprint: str | None = None


@dataclass(frozen=True, eq=False)
class RetrievalSplit:
    """Query / train / database images of one protocol and seed.

    ``query_index``, ``train_index`` and ``database_index`` index the pool named in
    ``index_pool`` (see the module docstring); ``pools`` gives each pool's size.
    """

    protocol: str
    seed: int
    query: LabeledImages
    train: LabeledImages
    database: LabeledImages
    query_index: np.ndarray
    train_index: np.ndarray
    database_index: np.ndarray
    topk: int | None
    pools: Mapping[str, int] = field(default_factory=dict)
    index_pool: Mapping[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    def fingerprint(self) -> str:
        """sha256 over protocol, seed, pool sizes, classes and the three index arrays."""
        return _fingerprint(
            self.protocol, self.seed, self.pools, self.classes,
            self.query_index, self.train_index, self.database_index,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for logs and result files."""
        return {
            "protocol": self.protocol,
            "seed": self.seed,
            "sizes": {
                "query": len(self.query),
                "train": len(self.train),
                "database": len(self.database),
            },
            "fingerprint": self.fingerprint(),
            "topk": self.topk,
            "classes": list(self.classes),
            "resolution": self.train.resolution,
            "channels": self.train.channels,
            "pools": dict(self.pools),
            "index_pool": dict(self.index_pool),
        }

    def validation(self, *, query_per_class: int = 100, database_size: int | None = 10_000,
                   seed: int = 0) -> RetrievalSplit:
        """A validation protocol carved from the database, for tuning without the query set.

        Validation queries (``query_per_class`` per class) are database images that are not
        training images; the validation database is the rest of the database (a random
        ``database_size`` of it when given, to keep tuning cheap). The train split is unchanged.
        """
        rng = np.random.default_rng(seed)
        db_labels = self.database.labels.numpy()
        is_train = np.zeros(len(db_labels), dtype=bool)
        if self.index_pool.get("train") == self.index_pool.get("database"):
            is_train = np.isin(self.database_index, self.train_index)
        picks = []
        for c in range(len(self.classes)):
            members = np.flatnonzero((db_labels == c) & ~is_train)
            if len(members) < query_per_class:
                raise DataError(f"class {self.classes[c]!r} has {len(members)} non-training "
                                f"database images, fewer than {query_per_class} queries")
            picks.append(rng.permutation(members)[:query_per_class])
        val_query = np.sort(np.concatenate(picks))
        rest = np.setdiff1d(np.arange(len(db_labels)), val_query)
        if database_size is not None and database_size < len(rest):
            rest = np.sort(rng.permutation(rest)[:database_size])
        return RetrievalSplit(
            protocol=f"{self.protocol}-validation", seed=seed,
            query=self.database.subset(val_query), train=self.train,
            database=self.database.subset(rest),
            query_index=self.database_index[val_query], train_index=self.train_index,
            database_index=self.database_index[rest], topk=self.topk,
            pools=self.pools, index_pool={**self.index_pool,
                                          "query": self.index_pool["database"]},
        )

    def save_indices(self, path: str | os.PathLike) -> None:
        """Write the exact index lists as JSON (atomically) for :func:`make_split` to reuse."""
        payload = {
            "format": SPLIT_FILE_FORMAT,
            "version": SPLIT_FILE_VERSION,
            **{k: v for k, v in self.describe().items() if k != "sizes"},
            "query_index": self.query_index.tolist(),
            "train_index": self.train_index.tolist(),
            "database_index": self.database_index.tolist(),
        }
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @staticmethod
    def indices_from_json(path: str | os.PathLike) -> SplitIndices:
        """Read a file written by :meth:`save_indices` (pass it to ``make_split(indices=)``)."""
        return load_split_indices(path)


def load_split_indices(path: str | os.PathLike) -> SplitIndices:
    """Read a split file; checks its format and that its fingerprint matches its contents."""
    path = pathlib.Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != SPLIT_FILE_FORMAT:
        raise DataError(f"{path} is not a hashcondense split file")
    try:
        out = SplitIndices(
            protocol=str(payload["protocol"]),
            seed=int(payload["seed"]),
            query_index=np.asarray(payload["query_index"], dtype=np.int64),
            train_index=np.asarray(payload["train_index"], dtype=np.int64),
            database_index=np.asarray(payload["database_index"], dtype=np.int64),
            pools={str(k): int(v) for k, v in payload.get("pools", {}).items()},
            fingerprint=payload.get("fingerprint"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"malformed split file {path}: {exc}") from None
    if out.fingerprint is not None and "classes" in payload:
        got = _fingerprint(out.protocol, out.seed, out.pools, tuple(payload["classes"]),
                           out.query_index, out.train_index, out.database_index)
        if got != out.fingerprint:
            raise DataError(f"split file {path} was edited: fingerprint does not match")
    return out


def _fingerprint(
    protocol: str,
    seed: int,
    pools: Mapping[str, int],
    classes: Sequence[str],
    *indices: np.ndarray,
) -> str:
    h = hashlib.sha256()
    head = {"protocol": protocol, "seed": int(seed), "pools": dict(sorted(pools.items())),
            "classes": list(classes)}
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, arr in zip(("query", "train", "database"), indices, strict=True):
        a = np.ascontiguousarray(np.asarray(arr, dtype="<i8"))
        h.update(f"\n{name}:{a.size}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_pools(
    protocol: str,
    root: str | os.PathLike | None = None,
    *,
    resolution: int | None = None,
    cache: bool = True,
) -> dict[str, LabeledImages]:
    """The image pools a protocol's indices refer to (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if protocol in _POOLED:
        src = load_source(protocol, root, resolution=resolution, cache=cache)
        return {"pool": concat_images([src["train"], src["test"]])}
    names = ["imagenette"] if protocol == "imagenet10" else ["imagenette", "imagewoof"]
    sources = [load_source(n, root, resolution=resolution, cache=cache) for n in names]
    if len(sources) == 1:
        return {"train": sources[0]["train"], "test": sources[0]["test"]}
    return {
        split: concat_images([s[split] for s in sources], merge_classes=True)
        for split in ("train", "test")
    }


def split_from_pools(
    protocol: str,
    pools: Mapping[str, LabeledImages],
    *,
    seed: int = 0,
    indices: SplitIndices | None = None,
) -> RetrievalSplit:
    """Draw (or, with ``indices``, replay) a protocol's split from already loaded pools."""
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    n_query, n_train = PER_CLASS[protocol]
    pool_sizes = {k: len(v) for k, v in pools.items()}
    if protocol in _POOLED:
        index_pool = {"query": "pool", "train": "pool", "database": "pool"}
    else:
        index_pool = {"query": "test", "train": "train", "database": "train"}
    missing = set(index_pool.values()) - set(pools)
    if missing:
        raise DataError(f"protocol {protocol!r} needs pools {sorted(missing)}")

    if indices is not None:
        seed = indices.seed
        if indices.protocol != protocol:
            raise DataError(f"split file is for protocol {indices.protocol!r}, not {protocol!r}")
        if indices.pools and dict(indices.pools) != pool_sizes:
            raise DataError(
                f"split file pools {dict(indices.pools)} do not match the data {pool_sizes}"
            )
        q_idx, t_idx, d_idx = indices.query_index, indices.train_index, indices.database_index
        for name, arr in (("query", q_idx), ("train", t_idx), ("database", d_idx)):
            size = pool_sizes[index_pool[name]]
            if arr.size and (arr.min() < 0 or arr.max() >= size):
                raise DataError(f"split file {name} indices out of range for a pool of {size}")
    else:
        rng = np.random.default_rng(seed)
        if protocol in _POOLED:
            pool = pools["pool"]
            q_idx, t_idx, d_idx = split_per_class(
                pool.labels.numpy(), (n_query, n_train, None), rng, classes=pool.classes,
                part_names=("query", "train"), pool_name=f"the {protocol} pool",
            )
        else:
            train_pool, test_pool = pools["train"], pools["test"]
            (t_idx,) = split_per_class(
                train_pool.labels.numpy(), (n_train,), rng, classes=train_pool.classes,
                part_names=("train",), pool_name="the train split",
            )
            (q_idx,) = split_per_class(
                test_pool.labels.numpy(), (n_query,), rng, classes=test_pool.classes,
                part_names=("query",), pool_name="the test split",
            )
            d_idx = np.arange(len(train_pool), dtype=np.int64)

    def take(name: str, idx: np.ndarray) -> LabeledImages:
        pool = pools[index_pool[name]]
        if len(idx) == len(pool) and np.array_equal(idx, np.arange(len(pool))):
            return pool  # the whole pool: share it instead of copying (database of imagenet*)
        return pool.subset(idx)

    split = RetrievalSplit(
        protocol=protocol,
        seed=int(seed),
        query=take("query", q_idx),
        train=take("train", t_idx),
        database=take("database", d_idx),
        query_index=np.asarray(q_idx, dtype=np.int64),
        train_index=np.asarray(t_idx, dtype=np.int64),
        database_index=np.asarray(d_idx, dtype=np.int64),
        topk=TOPK[protocol],
        pools=pool_sizes,
        index_pool=index_pool,
    )
    if indices is not None and indices.fingerprint and split.fingerprint() != indices.fingerprint:
        raise DataError("split file fingerprint does not match the data (different classes?)")
    return split


def make_split(
    protocol: str,
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    resolution: int | None = None,
    cache: bool = True,
    indices: SplitIndices | str | os.PathLike | None = None,
) -> RetrievalSplit:
    """Load a protocol's data and draw its split for ``seed``.

    ``indices`` (a :class:`SplitIndices` or a path written by ``save_indices``) replays a saved
    split exactly instead of sampling; its seed then overrides ``seed``.
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if indices is not None and not isinstance(indices, SplitIndices):
        indices = load_split_indices(indices)
    pools = load_pools(protocol, root, resolution=resolution, cache=cache)
    return split_from_pools(protocol, pools, seed=seed, indices=indices)
