"""Retrieval protocols: one spec (source + split rule + top-k) turns any collection into a
query / train / database split.

A :class:`ProtocolSpec` names a source (built-in dataset names, or a user's folder, zip or
manifest) and a :class:`SplitRule`.  The built-in protocols are named instances of it
(:data:`BUILTIN_PROTOCOLS`), so CIFAR-10 and a user's photos take the same code path.

Every split is drawn with ``np.random.default_rng(seed)``, class by class in label order, so a
(protocol, seed, data) triple always gives the same indices; ``RetrievalSplit.save_indices``
records them (with the rule) so a run can be repeated exactly even if the sampling code changes.

Rules, by layout of the source (see :mod:`hashcondense.data.collection`):

* **pooled** (layout (a), and CIFAR-10 / digits, whose train and test splits are pooled): per
  class, after one permutation of the class's pool indices, the first ``query_per_class`` go to
  the query set, the next ``train_per_class`` to the train set; the database is the rest
  (``database: rest``, CIFAR-10: 1,000 / 5,000 / 54,000) or the train images plus the rest
  (``train+rest``, the default for your own images: every non-query image is searchable).
* **split** (layout (b), and ImageNet10/20): ``train_per_class`` train images per class from the
  train split, then ``query_per_class`` queries per class from the test (or val) split; the
  database is the whole train split (``train+rest``, as HashNet's ImageNet protocol) or the
  train split without the train images (``rest``).
* **given** (layout (c)): the train, query and database folders as they are.

Defaults for your own images (``None`` counts), per class of ``n`` images: queries
``min(100, max(1, n // 10))`` (split layout: ``min(100, n_test)``), train images
``min(500, max(1, (n - queries) // 2))`` (split layout: ``min(500, n_train)``), so small and
large classes both work and imbalance is kept.  Classes with fewer than ``min_per_class``
images are dropped (a warning lists each); a class too small for an explicit count is an error
naming it.  mAP is cut at ``topk`` (default 1,000), or taken over the whole database when it is
smaller.

Built-in protocols:

* ``cifar10`` (DeepHash-pytorch "cifar10"): CIFAR-10 train then test pooled (60,000), 100 query /
  500 train per class, database the rest.  mAP@1000.
* ``imagenet10``: Imagenette, 130 train per class from the train split, then 50 queries per class
  from the test split; database the whole train split.  mAP@1000.
* ``imagenet20``: Imagenette + Imagewoof (Imagewoof labels offset by 10); same rule.
* ``digits``: scikit-learn digits, its train then test split pooled (1,797); per class 20 query /
  50 train / rest database.  mAP over the whole database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from .sources import DataError, LabeledImages, concat_images, load_collection, load_source

log = logging.getLogger(__name__)

DATABASE_RULES = ("rest", "train+rest")
DEFAULT_TOPK = 1000
SPLIT_FILE_FORMAT = "hashcondense-split"
SPLIT_FILE_VERSION = 1


@dataclass(frozen=True)
class SplitRule:
    """How the pools of a source become query, train and database (see the module docstring)."""

    query_per_class: int | None = None  # None: the default rule for your own images
    train_per_class: int | None = None
    database: str = "train+rest"
    min_per_class: int = 0
    pooled: bool | None = None  # None: follow the layout; True pools a train/test source

    def __post_init__(self) -> None:
        for name in ("query_per_class", "train_per_class"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise DataError(f"{name} must be a positive integer, got {v!r}")
        if self.database not in DATABASE_RULES:
            raise DataError(f"database must be one of {', '.join(DATABASE_RULES)}, "
                            f"got {self.database!r}")
        if not isinstance(self.min_per_class, int) or self.min_per_class < 0:
            raise DataError(f"min_per_class must be a non-negative integer, "
                            f"got {self.min_per_class!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ProtocolSpec:
    """A retrieval protocol: where the images come from, how they are split, where mAP stops.

    ``sources`` are built-in dataset names (merged in order, labels offset) or one path to a
    folder, zip or manifest.
    """

    name: str
    sources: tuple[str, ...]
    rule: SplitRule = field(default_factory=SplitRule)
    topk: int | None = DEFAULT_TOPK
    builtin: bool = False

    def __post_init__(self) -> None:
        if self.topk is not None and (not isinstance(self.topk, int) or self.topk < 1):
            raise DataError(f"topk must be a positive integer, got {self.topk!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sources": list(self.sources), "rule": self.rule.to_dict(),
                "topk": self.topk, "builtin": self.builtin}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ProtocolSpec:
        """The spec :meth:`to_dict` wrote (built-ins by name, so they stay the shipped ones)."""
        if d.get("builtin"):
            return BUILTIN_PROTOCOLS[d["name"]]
        return ProtocolSpec(d["name"], tuple(d["sources"]), SplitRule(**d["rule"]), d["topk"])

    def identity(self) -> dict[str, Any] | None:
        """What the split fingerprint adds for non-built-in protocols (built-ins: nothing, so
        their fingerprints are those of the earlier closed protocol tables)."""
        return None if self.builtin else {"rule": self.rule.to_dict(), "topk": self.topk}


BUILTIN_PROTOCOLS: dict[str, ProtocolSpec] = {
    "cifar10": ProtocolSpec("cifar10", ("cifar10",), SplitRule(100, 500, "rest", pooled=True),
                            1000, builtin=True),
    "imagenet10": ProtocolSpec("imagenet10", ("imagenette",),
                               SplitRule(50, 130, "train+rest", pooled=False), 1000, builtin=True),
    "imagenet20": ProtocolSpec("imagenet20", ("imagenette", "imagewoof"),
                               SplitRule(50, 130, "train+rest", pooled=False), 1000, builtin=True),
    "digits": ProtocolSpec("digits", ("digits",), SplitRule(20, 50, "rest", pooled=True), None,
                           builtin=True),
}
PROTOCOLS: tuple[str, ...] = tuple(BUILTIN_PROTOCOLS)
PROTOCOL_FILE_KEYS = frozenset({"name", "source", "query_per_class", "train_per_class",
                                "database", "min_per_class", "topk"})


def load_protocol_file(path: str | os.PathLike) -> ProtocolSpec:
    """A protocol from YAML (``source`` relative to the file; the other keys as the CLI flags)."""
    import yaml

    path = pathlib.Path(path).expanduser()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read protocol file {path}: {exc}") from None
    if not isinstance(raw, dict) or "source" not in raw:
        raise DataError(f"protocol file {path} must be a mapping with a 'source' path")
    unknown = set(raw) - PROTOCOL_FILE_KEYS
    if unknown:
        raise DataError(f"protocol file {path}: unknown keys {sorted(unknown)}; "
                        f"allowed: {sorted(PROTOCOL_FILE_KEYS)}")
    source = pathlib.Path(str(raw["source"])).expanduser()
    if not source.is_absolute():
        source = path.parent / source
    rule_keys = ("query_per_class", "train_per_class", "database", "min_per_class")
    rule = SplitRule(**{k: raw[k] for k in rule_keys if raw.get(k) is not None})
    return ProtocolSpec(str(raw.get("name") or source.stem), (str(source.resolve()),), rule,
                        raw.get("topk", DEFAULT_TOPK))


def resolve_protocol(dataset: str | ProtocolSpec, *, query_per_class: int | None = None,
                     train_per_class: int | None = None, database: str | None = None,
                     min_per_class: int | None = None, topk: int | None = None) -> ProtocolSpec:
    """A protocol from a built-in name, a ``.yaml`` protocol file, or a collection path, with
    the split-rule options applied (they only apply to your own collections)."""
    from .collection import is_collection_path

    overrides = {k: v for k, v in (("query_per_class", query_per_class),
                                   ("train_per_class", train_per_class),
                                   ("database", database), ("min_per_class", min_per_class))
                 if v is not None}
    if isinstance(dataset, ProtocolSpec):
        spec = dataset
    elif dataset in BUILTIN_PROTOCOLS:
        if overrides or topk is not None:
            raise DataError(f"{dataset!r} is a built-in protocol with fixed rules; split options "
                            f"({', '.join(sorted(overrides) or ['topk'])}) apply to your own "
                            "collections")
        return BUILTIN_PROTOCOLS[dataset]
    elif str(dataset).lower().endswith((".yaml", ".yml")):
        spec = load_protocol_file(dataset)
    elif is_collection_path(str(dataset)):
        path = pathlib.Path(str(dataset)).expanduser()
        if not path.exists():
            raise DataError(f"dataset path not found: {path}")
        path = path.resolve()
        name = path.stem if path.is_file() else path.name
        spec = ProtocolSpec(name, (str(path),))
    else:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(PROTOCOLS)}, or "
                        "pass a folder, .zip, manifest (.csv/.jsonl) or protocol .yaml path")
    if spec.builtin and (overrides or topk is not None):
        raise DataError(f"{spec.name!r} is a built-in protocol with fixed rules")
    if overrides:
        spec = dataclasses.replace(spec, rule=dataclasses.replace(spec.rule, **overrides))
    if topk is not None:
        spec = dataclasses.replace(spec, topk=topk)
    return spec


Count = int | None | Callable[[int], int]


def split_per_class(
    labels: np.ndarray | Sequence[int],
    counts: Sequence[Count],
    rng: np.random.Generator,
    *,
    classes: Sequence[str] | None = None,
    part_names: Sequence[str] | None = None,
    pool_name: str = "pool",
    skip: frozenset[int] = frozenset(),
) -> list[np.ndarray]:
    """Partition indices per class: ``counts[j]`` images of each class go to part ``j``.

    Classes are visited in label order (0, 1, ...) and each is permuted once with ``rng``; the
    parts take consecutive slices.  A count is an int, a function of the class size and the
    images already taken (the default rules), or ``None`` as the last count: "all the rest".
    Each returned part is sorted.  A class with too few images raises :class:`DataError`;
    classes in ``skip`` (dropped ones) get no images and draw nothing from ``rng``.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    counts = list(counts)
    if any(c is None for c in counts[:-1]):
        raise ValueError("only the last count may be None (the rest)")
    n_classes = len(classes) if classes is not None else int(labels.max(initial=-1)) + 1
    names = part_names or [f"part{j}" for j in range(len(counts))]
    order = np.argsort(labels, kind="stable")  # per class: its indices in increasing order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_classes))])
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for c in range(n_classes):
        if c in skip:
            continue
        idx = order[bounds[c]:bounds[c + 1]]
        fixed, taken = [], 0
        for k in counts:
            if k is None:
                continue
            n = k(len(idx) - taken) if callable(k) else int(k)
            fixed.append(n)
            taken += n
        need = sum(fixed)
        if len(idx) < need or (any(callable(k) for k in counts) and min(fixed) < 1):
            cname = classes[c] if classes is not None else str(c)
            wants = " + ".join(f"{k} {n}" for k, n in zip(fixed, names, strict=False))
            raise DataError(
                f"class {cname!r} has {len(idx)} images in {pool_name}, "
                f"but the protocol needs {wants} = {max(need, len(fixed))} per class "
                "(drop small classes with --min-per-class N)"
            )
        perm = rng.permutation(idx)
        start = 0
        for j, k in enumerate(counts):
            stop = len(perm) if k is None else start + fixed[j]
            parts[j].append(perm[start:stop])
            start = stop
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def _default_query(n: int) -> int:
    return min(100, max(1, n // 10))


def _default_train(n_left: int) -> int:
    return min(500, max(1, n_left // 2))


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
    identity: Mapping[str, Any] | None = None  # the rule of a non-built-in protocol


@dataclass(frozen=True, eq=False)
class RetrievalSplit:
    """Query / train / database images of one protocol and seed.

    ``query_index``, ``train_index`` and ``database_index`` index the pool named in
    ``index_pool`` (see the module docstring); ``pools`` gives each pool's size and
    ``pool_data`` the pools themselves.  The three image sets are taken from the pools when
    first used, so a condensation that only touches ``train`` never copies the database.
    """

    protocol: str
    seed: int
    pool_data: Mapping[str, LabeledImages]
    query_index: np.ndarray
    train_index: np.ndarray
    database_index: np.ndarray
    topk: int | None
    index_pool: Mapping[str, str]
    classes: tuple[str, ...]
    label_map: np.ndarray | None = None  # pool label -> split label (-1: dropped class)
    identity: Mapping[str, Any] | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    @property
    def pools(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.pool_data.items()}

    def _take(self, name: str, idx: np.ndarray) -> LabeledImages:
        pool = self.pool_data[self.index_pool[name]]
        if (self.label_map is None and len(idx) == len(pool)
                and np.array_equal(idx, np.arange(len(pool)))):
            return pool  # the whole pool: share it instead of copying (database of imagenet*)
        sub = pool.subset(idx)
        if self.label_map is None:
            return sub
        labels = torch.from_numpy(self.label_map[sub.labels.numpy()])
        return LabeledImages(sub.images, labels, self.classes, sub.sources)

    @cached_property
    def query(self) -> LabeledImages:
        return self._take("query", self.query_index)

    @cached_property
    def train(self) -> LabeledImages:
        return self._take("train", self.train_index)

    @cached_property
    def database(self) -> LabeledImages:
        return self._take("database", self.database_index)

    def fingerprint(self) -> str:
        """sha256 over protocol, seed, pool sizes, classes, the three index arrays (and the
        rule of a non-built-in protocol)."""
        return _fingerprint(
            self.protocol, self.seed, self.pools, self.classes,
            self.query_index, self.train_index, self.database_index, identity=self.identity,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for logs and result files."""
        pool = next(iter(self.pool_data.values()))
        out = {
            "protocol": self.protocol,
            "seed": self.seed,
            "sizes": {
                "query": len(self.query_index),
                "train": len(self.train_index),
                "database": len(self.database_index),
            },
            "fingerprint": self.fingerprint(),
            "topk": self.topk,
            "classes": list(self.classes),
            "resolution": pool.resolution,
            "channels": pool.channels,
            "pools": dict(self.pools),
            "index_pool": dict(self.index_pool),
        }
        if self.identity is not None:
            out.update(identity=dict(self.identity), source=dict(self.source),
                       skipped=len(self.skipped))
        return out

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
        split = dataclasses.replace(
            self, protocol=f"{self.protocol}-validation", seed=seed,
            query_index=self.database_index[val_query], database_index=self.database_index[rest],
            index_pool={**self.index_pool, "query": self.index_pool["database"]},
        )
        split.__dict__["train"] = self.train  # the same train set, not a copy
        return split

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
            identity=payload.get("identity"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"malformed split file {path}: {exc}") from None
    if out.fingerprint is not None and "classes" in payload:
        got = _fingerprint(out.protocol, out.seed, out.pools, tuple(payload["classes"]),
                           out.query_index, out.train_index, out.database_index,
                           identity=out.identity)
        if got != out.fingerprint:
            raise DataError(f"split file {path} was edited: fingerprint does not match")
    return out


def _fingerprint(
    protocol: str,
    seed: int,
    pools: Mapping[str, int],
    classes: Sequence[str],
    *indices: np.ndarray,
    identity: Mapping[str, Any] | None = None,
) -> str:
    h = hashlib.sha256()
    head = {"protocol": protocol, "seed": int(seed), "pools": dict(sorted(pools.items())),
            "classes": list(classes)}
    if identity is not None:
        head["identity"] = dict(identity)
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, arr in zip(("query", "train", "database"), indices, strict=True):
        a = np.ascontiguousarray(np.asarray(arr, dtype="<i8"))
        h.update(f"\n{name}:{a.size}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Pools:
    """The loaded images of a protocol's source: its pools, layout and skipped files."""

    data: dict[str, LabeledImages]
    layout: str  # "pool", "split" or "given"
    source: dict[str, Any] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()


def load_pools(
    protocol: str | ProtocolSpec,
    root: str | os.PathLike | None = None,
    *,
    resolution: int | None = None,
    cache: bool = True,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> Pools:
    """The image pools a protocol's indices refer to (see the module docstring)."""
    spec = resolve_protocol(protocol)
    if not spec.builtin:
        coll, decoded, data = load_collection(spec.sources[0], resolution=resolution,
                                              cache=cache, skip_bad_images=skip_bad_images,
                                              progress=progress)
        pooled = spec.rule.pooled
        if pooled and coll.layout == "split":
            data = {"pool": concat_images([data["train"], data["test"]])}
        return Pools(data, "pool" if pooled else coll.layout, coll.describe(),
                     tuple(s for s, _ in decoded.skipped))
    sources = [load_source(n, root, resolution=resolution, cache=cache, progress=progress)
               for n in spec.sources]
    if spec.rule.pooled:
        return Pools({"pool": concat_images([s[k] for s in sources for k in ("train", "test")])},
                     "pool")
    if len(sources) == 1:
        return Pools(dict(sources[0]), "split")
    return Pools({split: concat_images([s[split] for s in sources], merge_classes=True)
                  for split in ("train", "test")}, "split")


def _drop_small_classes(spec: ProtocolSpec, pools: Pools) -> tuple[frozenset[int], np.ndarray |
                                                                  None]:
    """Classes under ``min_per_class`` images (counted over every pool), and the label map."""
    classes = next(iter(pools.data.values())).classes
    counts = np.sum([p.class_counts() for p in pools.data.values()], axis=0)
    small = [c for c in range(len(classes)) if counts[c] < spec.rule.min_per_class]
    if not small:
        return frozenset(), None
    log.warning("dropped %d classes with fewer than %d images: %s", len(small),
                spec.rule.min_per_class,
                ", ".join(f"{classes[c]} ({counts[c]})" for c in small))
    if len(small) == len(classes):
        raise DataError(f"every class has fewer than min_per_class={spec.rule.min_per_class} "
                        "images")
    label_map = np.full(len(classes), -1, dtype=np.int64)
    kept = [c for c in range(len(classes)) if c not in set(small)]
    label_map[kept] = np.arange(len(kept))
    return frozenset(small), label_map


def split_from_pools(
    protocol: str | ProtocolSpec,
    pools: Pools | Mapping[str, LabeledImages],
    *,
    seed: int = 0,
    indices: SplitIndices | None = None,
) -> RetrievalSplit:
    """Draw (or, with ``indices``, replay) a protocol's split from already loaded pools."""
    spec = resolve_protocol(protocol)
    if not isinstance(pools, Pools):
        layout = "pool" if set(pools) == {"pool"} else ("given" if "query" in pools else "split")
        pools = Pools(dict(pools), layout)
    if indices is not None and not spec.builtin and indices.identity is not None:
        # a saved split of your own images carries its rule and name: replay exactly that
        rule = SplitRule(**indices.identity["rule"])
        spec = dataclasses.replace(spec, name=indices.protocol, rule=rule,
                                   topk=indices.identity.get("topk"))
    layout, rule = pools.layout, spec.rule
    index_pool = {
        "pool": {"query": "pool", "train": "pool", "database": "pool"},
        "split": {"query": "test", "train": "train", "database": "train"},
        "given": {"query": "query", "train": "train", "database": "database"},
    }[layout]
    missing = set(index_pool.values()) - set(pools.data)
    if missing:
        raise DataError(f"protocol {spec.name!r} needs pools {sorted(missing)}")
    if layout == "given" and (rule.query_per_class or rule.train_per_class):
        raise DataError(f"{spec.name}: the source gives its train/query/database folders; "
                        "--query-per-class and --train-per-class do not apply")
    pool_sizes = {k: len(v) for k, v in pools.data.items()}
    skip, label_map = _drop_small_classes(spec, pools)
    all_classes = next(iter(pools.data.values())).classes
    classes = all_classes if label_map is None else tuple(
        c for i, c in enumerate(all_classes) if i not in skip)
    query_count = rule.query_per_class or _default_query
    train_count = rule.train_per_class or _default_train

    if indices is not None:
        seed = indices.seed
        if indices.protocol != spec.name:
            raise DataError(f"split file is for protocol {indices.protocol!r}, not {spec.name!r}")
        if indices.pools and dict(indices.pools) != pool_sizes:
            raise DataError(
                f"split file pools {dict(indices.pools)} do not match the data {pool_sizes}"
            )
        q_idx, t_idx, d_idx = indices.query_index, indices.train_index, indices.database_index
        for name, arr in (("query", q_idx), ("train", t_idx), ("database", d_idx)):
            size = pool_sizes[index_pool[name]]
            if arr.size and (arr.min() < 0 or arr.max() >= size):
                raise DataError(f"split file {name} indices out of range for a pool of {size}")
    elif layout == "given":
        q_idx, t_idx, d_idx = (_kept(pools.data[p], skip) for p in ("query", "train", "database"))
    elif layout == "pool":
        rng = np.random.default_rng(seed)
        pool = pools.data["pool"]
        q_idx, t_idx, rest = split_per_class(
            pool.labels.numpy(), (query_count, train_count, None), rng, classes=pool.classes,
            part_names=("query", "train"), pool_name=f"the {spec.name} pool", skip=skip,
        )
        d_idx = rest if rule.database == "rest" else np.sort(np.concatenate([t_idx, rest]))
    else:
        rng = np.random.default_rng(seed)
        train_pool, test_pool = pools.data["train"], pools.data["test"]
        (t_idx,) = split_per_class(
            train_pool.labels.numpy(), (train_count if rule.train_per_class else _all_train,),
            rng, classes=train_pool.classes, part_names=("train",),
            pool_name="the train split", skip=skip,
        )
        (q_idx,) = split_per_class(
            test_pool.labels.numpy(), (query_count if rule.query_per_class else _all_query,),
            rng, classes=test_pool.classes, part_names=("query",),
            pool_name="the test split", skip=skip,
        )
        d_idx = _kept(train_pool, skip)
        if rule.database == "rest":
            d_idx = np.setdiff1d(d_idx, t_idx)
    topk = spec.topk if spec.topk is None or spec.topk < len(d_idx) else None
    split = RetrievalSplit(
        protocol=spec.name,
        seed=int(seed),
        pool_data=pools.data,
        query_index=np.asarray(q_idx, dtype=np.int64),
        train_index=np.asarray(t_idx, dtype=np.int64),
        database_index=np.asarray(d_idx, dtype=np.int64),
        topk=topk,
        index_pool=index_pool,
        classes=classes,
        label_map=label_map,
        identity=spec.identity(),
        source=pools.source,
        skipped=pools.skipped,
    )
    if indices is not None and indices.fingerprint and split.fingerprint() != indices.fingerprint:
        raise DataError("split file fingerprint does not match the data (different classes?)")
    return split


def _all_query(n: int) -> int:
    return min(100, n)


def _all_train(n: int) -> int:
    return min(500, n)


def _kept(pool: LabeledImages, skip: frozenset[int]) -> np.ndarray:
    idx = np.arange(len(pool), dtype=np.int64)
    if not skip:
        return idx
    return idx[~np.isin(pool.labels.numpy(), list(skip))]


def make_split(
    protocol: str | ProtocolSpec,
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    resolution: int | None = None,
    cache: bool = True,
    indices: SplitIndices | str | os.PathLike | None = None,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> RetrievalSplit:
    """Load a protocol's data and draw its split for ``seed``.

    ``protocol`` is a built-in name, a folder / zip / manifest / protocol ``.yaml`` path, or a
    :class:`ProtocolSpec`.  ``indices`` (a :class:`SplitIndices` or a path written by
    ``save_indices``) replays a saved split exactly instead of sampling; its seed then overrides
    ``seed``.
    """
    spec = resolve_protocol(protocol)
    if indices is not None and not isinstance(indices, SplitIndices):
        indices = load_split_indices(indices)
    pools = load_pools(spec, root, resolution=resolution, cache=cache,
                       skip_bad_images=skip_bad_images, progress=progress)
    return split_from_pools(spec, pools, seed=seed, indices=indices)
