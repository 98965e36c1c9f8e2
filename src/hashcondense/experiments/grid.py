"""Experiment grids declared in YAML: which datasets, condensers, ipcs, bit lengths, hashing
methods and seeds, under the compute profiles of ``hashcondense.recipes`` (``smoke`` for CI,
``cpu`` for a 2-core machine, ``paper`` for the paper's protocol on a GPU).

A file has a ``grid`` (the paper's protocol), optional ``variants`` (named overrides; a study
comparing whole settings runs each into a store of its own) and ``profiles``; a variant and then
a profile replace whole keys of the grid (lists and mappings are not merged, so a profile reads
as exactly what it runs)::

    name: table1
    description: Paper Table I
    metric: mAP@1000
    grid:
      datasets: {cifar10: {ipcs: [1, 10, 50]}, imagenet10: {ipcs: [1, 3], resolution: 32}}
      condensers: [random, dm, iem, {iem-na: {method: iem, options: {dataset_aug: false}}}]
      bits: [32, 64]
      hash_methods: [dhd]
      tasks: [retrieval]             # and/or classification
      seeds: [0]
      budgets: {default: {iterations: 200}, dsa: {seconds: 600, snapshots: [10, 50]}}
      judge: {recipe: paper, steps: null, epochs: null, whole_epochs: null, batch_size: null}
      protocol: test                 # or validation: judged on a split carved from the database
      judge_snapshots: true          # false: judge final sets only (snapshots still saved)
      precision: auto
      compile: auto
      report: []                     # the report's sections (empty: the report decides)
    variants:
      bf16: {precision: bf16}
      fp32: {precision: fp32}
    profiles:
      smoke: {datasets: {digits: {ipcs: [1]}}, budgets: {default: {iterations: 2}}}

Every part of a grid is a frozen dataclass that checks itself in ``__post_init__``; one generic
:func:`from_mapping` builds them from the YAML, led by their type hints. So a typo anywhere
(an unknown key, a bad value, an unknown hashing method, condenser or condenser option) fails
when the file is read, as one line naming the file and the key, before any data loads. Each
allowed value is declared once, where it lives: profiles, precisions, compile modes and tasks
in ``hashcondense.settings``, judge recipes in ``hashcondense.recipes``, hashing methods and
condensers in their registries, report sections in the report's; budgets are
``condense.Budget`` itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from ..augment import DSAConfig
from ..condense import CONDENSERS, Budget, Condenser, build_condenser
from ..hashing import HASH_METHODS
from ..recipes import RECIPES
from ..settings import COMPILES, DSA_MODES, PRECISIONS, PROFILES, TASKS

PROTOCOLS = ("test", "validation")  # what a grid's cells are judged on
# the split a ``protocol: validation`` grid judges on (RetrievalSplit.validation's arguments)
VALIDATION_SPLIT = {"query_per_class": 100, "database_size": 10_000, "seed": 0}
WHOLE = "whole"  # the pseudo-condenser "train on the whole train split": the reference line

T = TypeVar("T")


class FieldError(ValueError):
    """A spec's check of one of its fields failed; :func:`from_mapping` names the field by its
    path in the file (``datasets.cifar10.ipcs: must be >= 1, got [0]``)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


def canonical_number(value: Any) -> Any:
    """300.0 -> 300: numbers enter cell hashes, so one quantity must have one spelling."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _distinct(values: tuple, name: str, *, minimum: int | None = None,
              choices: typing.Sequence[str] | None = None) -> None:
    """A non-empty list without repeats, of integers >= ``minimum`` or of ``choices``."""
    if not values:
        raise FieldError(name, "must not be empty")
    if minimum is not None:
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < minimum]
        if bad:
            raise FieldError(name, f"must be integers >= {minimum}, got {list(values)}")
    if choices is not None:
        bad = sorted(set(values) - set(choices))
        if bad:
            raise FieldError(name, f"unknown {bad}; choose from {', '.join(choices)}")
    if len(set(values)) != len(values):
        raise FieldError(name, f"repeats a value: {list(values)}")


def _positive_or_none(spec: object, *names: str) -> None:
    for name in names:
        value = getattr(spec, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise FieldError(name, f"must be a positive int, got {value!r}")


def _choice(value: Any, name: str, choices: typing.Sequence[str]) -> None:
    if value not in choices:
        raise FieldError(name, f"must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # a built-in protocol (hashcondense.data.PROTOCOLS) or a collection's path
    ipcs: tuple[int, ...]
    resolution: int | None = None

    def __post_init__(self) -> None:
        _distinct(self.ipcs, "ipcs", minimum=1)
        _positive_or_none(self, "resolution")


def _plain(value: Any) -> Any:
    """A YAML option value in one hashable-where-possible shape: lists become tuples, mappings
    dicts with sorted keys (numbers stay as written; cell identity canonicalises them)."""
    if isinstance(value, Mapping):
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


@dataclass(frozen=True)
class CondenserSpec:
    """A condenser of the grid: ``label`` names it in tables ("iem-na"); ``method`` is the
    registered condenser (default: the label) built with ``options`` (nested mappings update
    the nested configs' defaults). Built once here, so a bad option fails at read time."""

    label: str
    method: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", self.method or self.label)
        options = self.options.items() if isinstance(self.options, Mapping) else self.options
        object.__setattr__(self, "options", tuple(sorted((k, _plain(v)) for k, v in options)))
        if self.method == WHOLE:
            if self.options:
                raise FieldError("options", "the whole train split takes no options")
            return
        if self.method not in CONDENSERS:
            raise FieldError("method", f"unknown condenser {self.method!r}; choose from "
                             f"{', '.join([*CONDENSERS.names(), WHOLE])}")
        try:
            self.build()
        except (TypeError, ValueError) as e:
            raise FieldError("options", str(e)) from None

    def option_dict(self) -> dict[str, Any]:
        """The options as the grid gave them (nested mappings with sorted keys)."""
        return dict(self.options)

    def build(self) -> Condenser | None:
        """The configured condenser (None for the whole train split)."""
        if self.method == WHOLE:
            return None
        return build_condenser(self.method, **self.option_dict())


@dataclass(frozen=True)
class JudgeSpec:
    """Training of the judge: a recipe of ``hashcondense.recipes`` with optional overrides."""

    recipe: str = "paper"
    steps: int | None = None  # optimiser steps for condensed sets (the recipe's min_steps)
    # at least this many epochs over a condensed set: its steps then grow with the decoded set
    # size (a multi-formation set has f² images per stored one), as the DC evaluation's
    # fixed-epoch protocol does; None keeps the recipe's (a step budget: equal compute)
    epochs: int | None = None
    whole_epochs: int | None = None  # epochs for the whole train split
    batch_size: int | None = None  # both kinds of set; None keeps the recipe's
    # CutMix on this share of batches (IDC evaluates its sets with 0.5); None keeps the
    # recipe's (off). Both kinds of set, so a whole-split reference is judged the same way
    cutmix: float | None = None
    # the DSA families of the second (strong) view; IDC drops cutout while CutMix is on
    # (color_crop_flip_scale_rotate); None keeps the recipe's. Both kinds of set
    strong_augment: str | None = None
    # how the second view composes them: "S" one family a batch (the recipe's); "C" IDC's
    # evaluation (flip and colour always, one of the other families, cutout last); "M" all
    # in turn. Both kinds of set; setting it at all (even to "S") makes new cells
    strong_augment_mode: str | None = None

    def __post_init__(self) -> None:
        _choice(self.recipe, "recipe", tuple(RECIPES))
        _positive_or_none(self, "steps", "epochs", "whole_epochs", "batch_size")
        if self.cutmix is not None and not 0 < self.cutmix <= 1:
            raise FieldError("cutmix", f"must be a probability in (0, 1], got {self.cutmix!r}")
        if self.strong_augment is not None:
            if not isinstance(self.strong_augment, str):
                raise FieldError("strong_augment", f"must be a string, got "
                                 f"{self.strong_augment!r}")
            try:
                DSAConfig(strategy=self.strong_augment)  # "none" is valid: no families
            except ValueError as err:
                raise FieldError("strong_augment", str(err)) from None
        if self.strong_augment_mode is not None:
            _choice(self.strong_augment_mode, "strong_augment_mode", DSA_MODES)

    def overrides(self, *, whole: bool) -> dict[str, float | str]:
        """The overrides that apply to a whole-split judge or to a condensed set's."""
        shared = ("batch_size", "cutmix", "strong_augment", "strong_augment_mode")
        names = ("whole_epochs", *shared) if whole else ("steps", "epochs", *shared)
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class Experiment:
    name: str
    profile: str
    description: str
    metric: str
    datasets: tuple[DatasetSpec, ...]
    condensers: tuple[CondenserSpec, ...]
    bits: tuple[int, ...] = (32,)
    hash_methods: tuple[str, ...] = ("dhd",)
    tasks: tuple[str, ...] = ("retrieval",)
    seeds: tuple[int, ...] = (0,)
    # a condenser label (or "default") -> its budget; a budget without iterations runs the
    # condenser's reference iteration count (within the seconds, if given)
    budgets: tuple[tuple[str, Budget], ...] = ()
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    precision: str = "auto"
    compile: str = "auto"
    split_seed: int = 0
    protocol: str = "test"
    # judge the budgets' snapshots too (a curve); false: final sets only, so a study can judge
    # on the test queries only the set a validation curve chose, from the same set cache
    judge_snapshots: bool = True
    report: tuple[str, ...] = ()  # the report's sections, in order; empty: the report decides
    variant: str | None = None  # which of the file's named variants this is (None: it has none)

    def __post_init__(self) -> None:
        _choice(self.profile, "profile", PROFILES)
        if not self.datasets:
            raise FieldError("datasets", "must name at least one dataset")
        if not self.condensers:
            raise FieldError("condensers", "must name at least one condenser")
        labels = [c.label for c in self.condensers]
        if len(set(labels)) != len(labels):
            raise FieldError("condensers", f"labels repeat: {labels}")
        _distinct(self.bits, "bits", minimum=1)
        _distinct(self.hash_methods, "hash_methods", choices=HASH_METHODS.names())
        _distinct(self.tasks, "tasks", choices=TASKS)
        _distinct(self.seeds, "seeds", minimum=0)
        strays = sorted({label for label, _ in self.budgets} - {"default", *labels})
        if strays:
            raise FieldError("budgets", f"for unknown condenser label(s) {strays}; labels: "
                             f"{labels} (or 'default')")
        _choice(self.precision, "precision", PRECISIONS)
        _choice(self.compile, "compile", COMPILES)
        _choice(self.protocol, "protocol", PROTOCOLS)
        if not isinstance(self.judge_snapshots, bool):
            raise FieldError("judge_snapshots", f"must be true or false, got "
                             f"{self.judge_snapshots!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) \
                or self.split_seed < 0:
            raise FieldError("split_seed", f"must be an integer >= 0, got {self.split_seed!r}")
        if self.report:
            _distinct(self.report, "report", choices=_report_sections())

    def budget_for(self, label: str) -> Budget | None:
        """The condenser's budget: its own entry, else ``default``, else None (its own)."""
        table = dict(self.budgets)
        return table.get(label, table.get("default"))

    def cells(self) -> Iterator[tuple[int, DatasetSpec, int, CondenserSpec]]:
        """(seed, dataset, ipc, condenser) in run order: every seed's full table before the next
        seed, small ipcs first and the whole set last, so a stopped grid has the cheapest
        complete picture."""
        for seed, ds in itertools.product(self.seeds, self.datasets):
            for ipc, cond in itertools.product(sorted(ds.ipcs), self.condensers):
                if cond.method != WHOLE:
                    yield seed, ds, ipc, cond
            for cond in self.condensers:  # the costly reference last; it ignores ipc
                if cond.method == WHOLE:
                    yield seed, ds, min(ds.ipcs), cond


def _report_sections() -> tuple[str, ...]:
    """The report's section names (its registry), imported late: the report is heavier."""
    from .report import SECTIONS

    return tuple(SECTIONS.names())


# -- building specs from YAML --------------------------------------------------------------

def _join(where: str, name: object) -> str:
    return f"{where}.{name}" if where else str(name)


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}" if where else message)


def from_mapping(cls: type[T], mapping: Any, where: str = "", **fixed: Any) -> T:
    """``cls`` (a spec dataclass) from a YAML mapping, converted by the fields' type hints:
    lists become tuples (a single value a 1-tuple), integral floats ints, nested spec
    dataclasses are built the same way, a mapping given for a tuple of (name, spec) pairs
    becomes those pairs, and a tuple of keyed specs (whose first field is their name) is
    given as ``{name: {fields}}`` or a list of names and ``{name: {fields}}``. ``fixed``
    fields come from the caller, not the file. Unknown keys are refused, naming the key and the
    known ones; ``cls``'s own checks then run, and every error names its path (``where``)."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise _fail(where, f"must be a mapping, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init and f.name not in fixed}
    unknown = sorted(str(k) for k in mapping if k not in known)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; known: {', '.join(known)}")
    values = dict(fixed)
    for name, value in mapping.items():
        if value is None and not _optional(hints[name]) and _has_default(known[name]):
            continue  # an empty YAML value: the default
        values[name] = _convert(hints[name], value, _join(where, name))
    missing = [n for n, f in known.items() if n not in values and not _has_default(f)]
    if missing:
        raise _fail(where, f"needs {', '.join(missing)}")
    try:
        return cls(**values)
    except FieldError as e:
        raise ValueError(f"{_join(where, e.name)}: {e.message}") from None
    except ValueError as e:
        raise _fail(where, str(e)) from None


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and \
        type(None) in typing.get_args(hint)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner, = (a for a in args if a is not type(None))
        return _convert(inner, value, where)
    if hint is Any:
        return _plain(value)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_mapping(hint, value, where)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _convert_items(args[0], value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(where, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        value = canonical_number(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, f"must be a number, got {value!r}")
        return canonical_number(value)
    if hint is str:
        if isinstance(value, bool):  # YAML reads a bare on/off as a boolean
            value = "on" if value else "off"
        if not isinstance(value, str):
            raise _fail(where, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"from_mapping cannot convert to {hint!r} ({where})")


def _convert_items(item: Any, value: Any, where: str) -> tuple:
    """A ``tuple[item, ...]`` field's value (see :func:`from_mapping`)."""
    pair = typing.get_origin(item) is tuple and len(typing.get_args(item)) == 2 \
        and typing.get_args(item)[1] is not Ellipsis
    keyed = dataclasses.is_dataclass(item)
    if isinstance(value, Mapping) and (pair or keyed):
        entries = list(value.items())
    elif isinstance(value, (list, tuple)) and keyed:
        entries = []
        for entry in value:
            if isinstance(entry, str):
                entries.append((entry, {}))
            elif isinstance(entry, Mapping) and len(entry) == 1:
                entries.append(next(iter(entry.items())))
            elif isinstance(entry, item):
                entries.append((None, entry))
            else:
                raise _fail(where, f"an entry is a name or {{name: {{fields}}}}, got {entry!r}")
    elif isinstance(value, Mapping):
        raise _fail(where, f"must be a list, got {value!r}")
    else:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_convert(item, v, where) for v in items)
    if pair:
        key_hint, value_hint = typing.get_args(item)
        return tuple((_convert(key_hint, k, where), _convert(value_hint, v, _join(where, k)))
                     for k, v in entries)
    key = fields(item)[0].name
    return tuple(v if k is None else from_mapping(item, v, _join(where, k), **{key: str(k)})
                 for k, v in entries)


# -- grids ---------------------------------------------------------------------------------

def restrict_datasets(exp: Experiment, names: list[str]) -> Experiment:
    """``exp`` on the named datasets only (e.g. the CIFAR-10 part of Table I)."""
    unknown = sorted(set(names) - {d.name for d in exp.datasets})
    if unknown:
        raise ValueError(f"{exp.name}/{exp.profile} has no dataset(s) {unknown}; it has "
                         f"{[d.name for d in exp.datasets]}")
    return dataclasses.replace(exp, datasets=tuple(d for d in exp.datasets if d.name in names))


def restrict_condensers(exp: Experiment, labels: list[str]) -> Experiment:
    """``exp`` with only the named condensers (labels), in the order named: a grid too long
    for one sitting (Fig. 3 on a CPU) fills its one store a condenser at a time. Cell keys
    ignore the order and the other condensers, so the cells are the full grid's; run it with
    ``run_experiment(..., partial=True)`` so the store's report keeps the other parts."""
    have = [c.label for c in exp.condensers]
    unknown = [label for label in labels if label not in have]
    if unknown:
        raise ValueError(f"{exp.name}/{exp.profile} has no condenser(s) {unknown}; it has "
                         f"{have}")
    by_label = {c.label: c for c in exp.condensers}
    keep = list(dict.fromkeys(labels))
    return dataclasses.replace(
        exp, condensers=tuple(by_label[label] for label in keep),
        budgets=tuple((label, b) for label, b in exp.budgets if label in {"default", *keep}))


def select_variants(experiments: list[Experiment], names: list[str]) -> list[Experiment]:
    """The named variants of a grid, in the order named: a long study runs its parts in the
    order the machine time allows, each into its own store as always."""
    by_name = {exp.variant: exp for exp in experiments}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        have = [v for v in by_name if v is not None]
        raise ValueError(f"{experiments[0].name} has no variant(s) {unknown}; it has "
                         f"{have or 'none'}")
    return [by_name[n] for n in dict.fromkeys(names)]


def cap_condense_seconds(exp: Experiment, seconds: float) -> Experiment:
    """``exp`` with every condensation stopped after ``seconds`` of wall time at most (the
    iteration budgets stay), so a whole grid fits a fixed slot of machine time. The cap is part
    of each budget, hence of each cell's identity."""
    if not seconds > 0:
        raise ValueError(f"the condensation time cap must be positive, got {seconds}")
    budgets = dict(exp.budgets)
    labels = {"default", *(c.label for c in exp.condensers)}
    capped = {}
    for label in labels:
        spec = budgets.get(label, budgets.get("default")) or Budget()
        limit = canonical_number(seconds if spec.seconds is None else min(spec.seconds, seconds))
        capped[label] = dataclasses.replace(spec, seconds=limit)
    return dataclasses.replace(exp, budgets=tuple(sorted(capped.items())))


def _dataset_name(name: str, source: str) -> str:
    """A built-in protocol as is; your own collection (or protocol file) as an absolute path,
    a relative one taken from the grid file's folder, so a grid runs from any directory."""
    from ..data import PROTOCOLS as DATA_PROTOCOLS

    if name in DATA_PROTOCOLS:
        return name
    path = Path(name).expanduser()
    if not path.is_absolute() and Path(source).is_file():
        path = Path(source).parent / path
    if not path.exists():
        raise ValueError(f"datasets.{name}: neither a built-in protocol "
                         f"({', '.join(DATA_PROTOCOLS)}) nor an existing folder, .zip, manifest "
                         "or protocol .yaml")
    return str(path.resolve())


TOP_LEVEL = ("name", "description", "metric", "grid", "variants", "profiles")


def parse_experiment(doc: Mapping[str, Any], profile: str, source: str = "<experiment>",
                     variant: str | None = None) -> Experiment:
    """Validate a YAML document and resolve ``profile`` (and ``variant``, for a file that
    names variants) into a concrete grid; every error is one line starting with ``source``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    try:
        return _parse(doc, profile, source, variant)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def variant_names(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """The named variants of a grid document (``variants:``), in file order; () for none."""
    variants = doc.get("variants") if isinstance(doc, Mapping) else None
    if variants is None:
        return ()
    if not isinstance(variants, Mapping) or not variants or not all(
            isinstance(v, Mapping) or v is None for v in variants.values()):
        raise ValueError("variants must be a mapping name -> grid keys it overrides")
    return tuple(str(name) for name in variants)


def _parse(doc: Mapping[str, Any], profile: str, source: str,
           variant: str | None) -> Experiment:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("grid"), Mapping):
        raise ValueError("needs a top-level 'grid' mapping")
    names = variant_names(doc)
    if variant is None and names:
        raise ValueError(f"names variants {list(names)}: choose one")
    if variant is not None and variant not in names:
        raise ValueError(f"has no variant {variant!r}; variants: {list(names)}")
    chosen = (doc["variants"].get(variant) or {}) if variant is not None else {}
    top = sorted(set(doc) - set(TOP_LEVEL))
    if top:
        raise ValueError(f"unknown top-level key(s) {top}; known: {', '.join(TOP_LEVEL)}")
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, Mapping) or sorted(set(profiles) - set(PROFILES)):
        raise ValueError(f"profiles must be a mapping with keys among {list(PROFILES)}, got "
                         f"{list(profiles) if isinstance(profiles, Mapping) else profiles!r}")
    overrides = profiles.get(profile) or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"profiles.{profile} must be a mapping of grid keys")
    exp = from_mapping(Experiment, {**doc["grid"], **chosen, **overrides}, "",
                       variant=variant,
                       name=str(doc.get("name", Path(source).stem)), profile=profile,
                       description=str(doc.get("description", "")),
                       metric=str(doc.get("metric", "mAP@1000")))
    datasets = tuple(dataclasses.replace(d, name=_dataset_name(d.name, source))
                     for d in exp.datasets)
    return dataclasses.replace(exp, datasets=datasets)


def builtin_experiments() -> list[str]:
    """Names of the experiments shipped with the package (``configs/<name>.yaml``)."""
    folder = resources.files("hashcondense.experiments") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read(name_or_path: str | os.PathLike) -> tuple[Any, str]:
    """The YAML document of a built-in experiment (``table1``) or of any file, and its name."""
    import yaml

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such experiment file")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        names = builtin_experiments()
        if str(name_or_path) not in names:
            raise ValueError(f"unknown experiment {str(name_or_path)!r}; choose from "
                             f"{', '.join(names)} or pass a .yaml file")
        res = resources.files("hashcondense.experiments") / "configs" / f"{name_or_path}.yaml"
        text, source = res.read_text(encoding="utf-8"), f"{name_or_path}.yaml"
    try:
        return yaml.safe_load(text), source
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML ({e})") from None


def load_experiment(name_or_path: str | os.PathLike, profile: str,
                    variant: str | None = None) -> Experiment:
    """A built-in experiment by name (``table1``) or any YAML file by path."""
    doc, source = _read(name_or_path)
    return parse_experiment(doc, profile, source, variant)


def load_experiments(name_or_path: str | os.PathLike, profile: str) -> list[Experiment]:
    """Every variant of a grid file (one experiment when it names none), so one command runs
    a study that compares whole settings; each variant keeps a store of its own."""
    doc, source = _read(name_or_path)
    try:
        names = variant_names(doc)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return [parse_experiment(doc, profile, source, v) for v in (names or (None,))]
