"""Experiment grids declared in YAML: which datasets, condensers, ipcs, bit lengths, hashing
methods and seeds, under three compute profiles (``smoke`` for CI, ``cpu`` for a 2-core
machine, ``paper`` for the paper's protocol on a GPU).

A file has a ``grid`` (the paper's protocol) and ``profiles``; a profile replaces whole keys of
the grid (lists and mappings are not merged, so a profile reads as exactly what it runs)::

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
      judge: {recipe: paper, steps: null, epochs: null}
      precision: auto
      compile: auto
    profiles:
      smoke: {datasets: {digits: {ipcs: [1]}}, budgets: {default: {iterations: 2}}}
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

PROFILES = ("smoke", "cpu", "paper")
TASKS = ("retrieval", "classification")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILES = ("auto", "on", "off")
WHOLE = "whole"  # the pseudo-condenser "train on the whole train split": the reference line


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # a built-in protocol (hashcondense.data.PROTOCOLS) or a collection's path
    ipcs: tuple[int, ...]
    resolution: int | None = None


@dataclass(frozen=True)
class CondenserSpec:
    label: str  # the name in tables ("iem-na"); ``method`` is the registered condenser
    method: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class BudgetSpec:
    iterations: int | None = None
    seconds: float | None = None
    snapshots: tuple[int, ...] = ()


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


@dataclass(frozen=True)
class Experiment:
    name: str
    profile: str
    description: str
    metric: str
    datasets: tuple[DatasetSpec, ...]
    condensers: tuple[CondenserSpec, ...]
    bits: tuple[int, ...]
    hash_methods: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    budgets: tuple[tuple[str, BudgetSpec], ...] = ()
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    precision: str = "auto"
    compile: str = "auto"
    split_seed: int = 0

    def budget_for(self, label: str) -> BudgetSpec | None:
        """The condenser's budget: its own entry, else ``default``, else its built-in one."""
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


def restrict_datasets(exp: Experiment, names: list[str]) -> Experiment:
    """``exp`` on the named datasets only (e.g. the CIFAR-10 part of Table I)."""
    unknown = sorted(set(names) - {d.name for d in exp.datasets})
    if unknown:
        raise ValueError(f"{exp.name}/{exp.profile} has no dataset(s) {unknown}; it has "
                         f"{[d.name for d in exp.datasets]}")
    return dataclasses.replace(exp, datasets=tuple(d for d in exp.datasets if d.name in names))


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
        spec = budgets.get(label, budgets.get("default")) or BudgetSpec()
        limit = _canonical(seconds if spec.seconds is None else min(spec.seconds, seconds))
        capped[label] = dataclasses.replace(spec, seconds=limit)
    return dataclasses.replace(exp, budgets=tuple(sorted(capped.items())))


def _err(source: str, msg: str) -> ValueError:
    return ValueError(f"{source}: {msg}")


def _ints(value: Any, key: str, source: str) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                            for v in items):
        raise _err(source, f"{key} must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(items)) != len(items):
        raise _err(source, f"{key} repeats a value: {value!r}")
    return tuple(items)


def _strs(value: Any, key: str, source: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) for v in items):
        raise _err(source, f"{key} must be a non-empty list of names, got {value!r}")
    if len(set(items)) != len(items):
        raise _err(source, f"{key} repeats a value: {value!r}")
    return tuple(items)


def _choice(value: Any, key: str, choices: tuple[str, ...], source: str) -> str:
    if value is False:  # YAML reads a bare `off` as false
        value = "off"
    if value not in choices:
        raise _err(source, f"{key} must be one of {list(choices)}, got {value!r}")
    return value


def _number(value: Any, key: str, source: str, kind: type = float) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not isinstance(value, int)) or value < 0:
        raise _err(source, f"{key} must be a non-negative {kind.__name__}, got {value!r}")
    return _canonical(value)


def _canonical(value: float) -> float:
    """300.0 -> 300: numbers enter cell hashes, so one quantity must have one spelling."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _record(cls: type, value: Any, key: str, source: str):
    if not isinstance(value, Mapping):
        raise _err(source, f"{key} must be a mapping, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise _err(source, f"{key}: unknown field(s) {unknown}; known: {sorted(known)}")
    return value


def _datasets(value: Any, source: str) -> tuple[DatasetSpec, ...]:
    if not isinstance(value, Mapping) or not value:
        raise _err(source, f"datasets must be a mapping name -> {{ipcs: [...]}}, got {value!r}")
    out = []
    for name, spec in value.items():
        if not isinstance(spec or {}, Mapping):
            raise _err(source, f"datasets.{name} must be a mapping like {{ipcs: [1, 10]}}, "
                       f"got {spec!r}")
        spec = _record(DatasetSpec, {**(spec or {}), "name": name}, f"datasets.{name}", source)
        if "ipcs" not in spec:
            raise _err(source, f"datasets.{name}: needs ipcs")
        ipcs = _ints(spec["ipcs"], f"datasets.{name}.ipcs", source)
        if min(ipcs) < 1:
            raise _err(source, f"datasets.{name}.ipcs must be >= 1, got {list(ipcs)}")
        out.append(DatasetSpec(name=_dataset_name(name, source), ipcs=ipcs,
                               resolution=spec.get("resolution")))
    return tuple(out)


def _dataset_name(name: str, source: str) -> str:
    """A built-in protocol as is; your own collection (or protocol file) as an absolute path,
    a relative one taken from the grid file's folder, so a grid runs from any directory."""
    from ..data import PROTOCOLS

    if name in PROTOCOLS:
        return name
    path = Path(name).expanduser()
    if not path.is_absolute() and Path(source).is_file():
        path = Path(source).parent / path
    if not path.exists():
        raise _err(source, f"datasets.{name}: neither a built-in protocol "
                   f"({', '.join(PROTOCOLS)}) nor an existing folder, .zip, manifest or "
                   "protocol .yaml")
    return str(path.resolve())


def _condensers(value: Any, source: str) -> tuple[CondenserSpec, ...]:
    if not isinstance(value, list) or not value:
        raise _err(source, f"condensers must be a non-empty list, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(CondenserSpec(item, item))
        elif isinstance(item, Mapping) and len(item) == 1:
            (label, spec), = item.items()
            spec = _record(CondenserSpec, spec or {}, f"condensers.{label}", source)
            options = spec.get("options") or {}
            if not isinstance(options, Mapping):
                raise _err(source, f"condensers.{label}.options must be a mapping")
            out.append(CondenserSpec(label, spec.get("method", label),
                                     tuple(sorted(options.items()))))
        else:
            raise _err(source, f"a condenser is a name or {{label: {{method, options}}}}, "
                       f"got {item!r}")
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise _err(source, f"condenser labels repeat: {labels}")
    return tuple(out)


def _budgets(value: Any, source: str) -> tuple[tuple[str, BudgetSpec], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise _err(source, f"budgets must be a mapping condenser -> budget, got {value!r}")
    out = []
    for label, spec in value.items():
        spec = _record(BudgetSpec, spec or {}, f"budgets.{label}", source)
        snapshots = _ints(spec["snapshots"], f"budgets.{label}.snapshots", source) \
            if spec.get("snapshots") else ()
        out.append((label, BudgetSpec(
            _number(spec.get("iterations"), f"budgets.{label}.iterations", source, int),
            _number(spec.get("seconds"), f"budgets.{label}.seconds", source),
            tuple(sorted(snapshots)))))
    return tuple(out)


def parse_experiment(doc: Mapping[str, Any], profile: str, source: str = "<experiment>"
                     ) -> Experiment:
    """Validate a YAML document and resolve ``profile`` into a concrete grid."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if not isinstance(doc, Mapping) or not isinstance(doc.get("grid"), Mapping):
        raise _err(source, "needs a top-level 'grid' mapping")
    top = sorted(set(doc) - {"name", "description", "metric", "grid", "profiles"})
    if top:
        raise _err(source, f"unknown top-level key(s) {top}; known: name, description, "
                   "metric, grid, profiles")
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, Mapping) or sorted(set(profiles) - set(PROFILES)):
        raise _err(source, f"profiles must be a mapping with keys among {list(PROFILES)}, got "
                   f"{list(profiles) if isinstance(profiles, Mapping) else profiles!r}")
    overrides = profiles.get(profile) or {}
    if not isinstance(overrides, Mapping):
        raise _err(source, f"profiles.{profile} must be a mapping of grid keys")
    grid = {**doc["grid"], **overrides}
    known = {"datasets", "condensers", "bits", "hash_methods", "tasks", "seeds", "budgets",
             "judge", "precision", "compile", "split_seed"}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise _err(source, f"unknown grid key(s) {unknown}; known: {sorted(known)}")
    tasks = _strs(grid.get("tasks", ["retrieval"]), "tasks", source)
    bad = sorted(set(tasks) - set(TASKS))
    if bad:
        raise _err(source, f"unknown task(s) {bad}; choose from {list(TASKS)}")
    judge = _record(JudgeSpec, grid.get("judge") or {}, "judge", source)
    for key in ("steps", "epochs", "whole_epochs"):
        value = judge.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise _err(source, f"judge.{key} must be a positive int, got {value!r}")
    condensers = _condensers(grid.get("condensers"), source)
    budgets = _budgets(grid.get("budgets"), source)
    strays = sorted({label for label, _ in budgets} - {"default", *(c.label for c in condensers)})
    if strays:
        raise _err(source, f"budgets for unknown condenser label(s) {strays}; labels: "
                   f"{[c.label for c in condensers]} (or 'default')")
    return Experiment(
        name=str(doc.get("name", Path(source).stem)),
        profile=profile,
        description=str(doc.get("description", "")),
        metric=str(doc.get("metric", "mAP@1000")),
        datasets=_datasets(grid.get("datasets"), source),
        condensers=condensers,
        bits=_ints(grid.get("bits", [32]), "bits", source),
        hash_methods=_strs(grid.get("hash_methods", ["dhd"]), "hash_methods", source),
        tasks=tasks,
        seeds=_ints(grid.get("seeds", [0]), "seeds", source),
        budgets=budgets,
        judge=JudgeSpec(**judge),
        precision=_choice(grid.get("precision", "auto"), "precision", PRECISIONS, source),
        compile=_choice(grid.get("compile", "auto"), "compile", COMPILES, source),
        split_seed=int(grid.get("split_seed", 0)),
    )


def builtin_experiments() -> list[str]:
    """Names of the experiments shipped with the package (``configs/<name>.yaml``)."""
    folder = resources.files("hashcondense.experiments") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_experiment(name_or_path: str | os.PathLike, profile: str) -> Experiment:
    """A built-in experiment by name (``table1``) or any YAML file by path."""
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
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML ({e})") from None
    return parse_experiment(doc, profile, source)
