"""Read a results folder — ``results.jsonl`` (one record per (cell, metric)) and ``run.json``
(experiment, profile, primary metric, the grid's spec, versions, machine, protocols) — into
typed records, and the Context every section builder reads them through.

Condensers are told apart by what they are, not by what the grid called them: run.json's
``spec.condensers`` gives each label its method and options, and the Context derives each
label's *kind* from them — the method, except for IEM, whose kind is the paper's Table II row
its two augmentation switches select (``iem-none``, ``iem-na``, ``iem-da`` or ``iem``).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...records import read_jsonl
from ..grid import WHOLE
from ..paper import ABLATION_ORDER, ABLATION_SWITCHES, CONDENSER_ORDER, HASH_ORDER
from . import common
from .common import DEFAULT_METRIC, PAPER_HASH, Block, Image, Text, num, ordered

log = logging.getLogger(__name__)

IEM = "iem"
# (network augmentation, dataset augmentation) -> the paper's Table II row (paper.py's key).
ABLATION_KINDS: dict[tuple[bool, bool], str] = {v: k for k, v in ABLATION_SWITCHES.items()}
KIND_ORDER: tuple[str, ...] = tuple(dict.fromkeys((*CONDENSER_ORDER, *ABLATION_ORDER)))


@dataclass(frozen=True, order=True)
class DatasetKey:
    name: str
    resolution: int | None


@dataclass
class Record:
    cell: str | None
    condense_cell: str | None
    experiment: str | None
    profile: str | None
    dataset: DatasetKey
    condenser: str  # the grid's label for the condenser
    ipc: int | None
    seed: int | None
    iteration: int | None
    task: str
    hash_method: str | None
    bits: int | None
    metric: str
    value: float  # percent
    condense_seconds: float
    train_seconds: float
    encode_seconds: float
    iterations: int | None = None  # iterations the set's condensation actually ran
    # updates of every class's images the judged set had: one per DM/IEM iteration, outer_loop
    # per DSA iteration, inner_loop per IDC one (None: recorded before runs kept it)
    updates: int | None = None
    method: str | None = None  # the condenser's method (its label may be anything)
    options: dict[str, Any] | None = None  # the options the grid gave it (None: not recorded)
    protocol: str = "test"  # "validation": carved from the database, not the paper's queries

    @property
    def whole(self) -> bool:
        """The whole-train-split reference, whatever the grid named it (stores without a
        method field: the only record without an ipc)."""
        return self.method == WHOLE if self.method else self.ipc is None


def load(results_dir: Path) -> tuple[list[Record], dict[str, Any]]:
    """The records of the current grid in ``results_dir`` and its run.json (``{}`` without).

    A (cell, metric) written twice counts once, the later record winning; cells outside
    run.json's ``cells`` (an earlier config in the same folder) are left out; records without
    dataset, metric or a finite ``value`` are skipped. Raises ValueError when the folder or its
    records are missing, or when it mixes profiles and run.json does not name one.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"results directory {results_dir} does not exist (nothing to report)")
    results = results_dir / "results.jsonl"
    raw = read_jsonl(results)
    if not raw:
        raise ValueError(f"no results to report: {results} is missing or empty")
    run: dict[str, Any] = {}
    run_path = results_dir / "run.json"
    if run_path.exists():
        try:
            run = json.loads(run_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{run_path}: not valid JSON ({e.msg})") from None
        if not isinstance(run, dict):
            raise ValueError(f"{run_path}: expected a JSON object")
    else:
        log.warning("%s has no run.json; the report header will be sparse", results_dir)

    # A (cell, metric) written twice (a rerun) counts once: the later record wins.
    unique: dict[Any, dict] = {}
    for n, r in enumerate(raw):
        key = (r["cell"], r.get("metric")) if r.get("cell") is not None else ("#", n)
        unique[key] = r
    current = run.get("cells")
    if current is not None:  # cells of an earlier config in the same folder stay out of it
        current = set(current)
        stale = [k for k, r in unique.items() if r.get("cell") not in current]
        if stale:
            log.info("%s: %d records of cells outside the current grid are not reported",
                     results, len(stale))
        unique = {k: r for k, r in unique.items() if r.get("cell") in current}
    records, skipped = [], 0
    for r in unique.values():
        value = r.get("value")
        if r.get("dataset") is None or r.get("metric") is None or not math.isfinite(
                num(value, math.nan)):
            skipped += 1
            continue
        records.append(Record(
            cell=r.get("cell"), condense_cell=r.get("condense_cell"),
            experiment=r.get("experiment"), profile=r.get("profile"),
            dataset=DatasetKey(str(r["dataset"]), r.get("resolution")),
            condenser=str(r.get("condenser", r.get("method", "?"))), ipc=r.get("ipc"),
            seed=r.get("seed"), iteration=r.get("iteration"), task=r.get("task", "retrieval"),
            hash_method=r.get("hash_method"), bits=r.get("bits"), metric=str(r["metric"]),
            value=100.0 * float(value), condense_seconds=num(r.get("condense_seconds")),
            train_seconds=num(r.get("train_seconds")),
            encode_seconds=num(r.get("encode_seconds")), iterations=r.get("iterations"),
            updates=r.get("updates"),
            method=r.get("method"),
            options=r["options"] if isinstance(r.get("options"), dict) else None,
            protocol=str(r.get("protocol", "test"))))
    if skipped:
        log.warning("%s: skipped %d records without dataset, metric or a finite value",
                    results, skipped)
    if not records:
        raise ValueError(f"no usable records in {results}")
    # Numbers from different profiles (budgets) must never be averaged together.
    profiles = {r.profile for r in records}
    if len(profiles) > 1:
        if run.get("profile") in profiles:
            log.warning("%s mixes profiles %s; reporting only %r (run.json)", results,
                        sorted(map(str, profiles)), run["profile"])
            records = [r for r in records if r.profile == run["profile"]]
        else:
            raise ValueError(f"{results} mixes profiles {sorted(map(str, profiles))} and "
                             "run.json does not name one; report them from separate folders")
    return records, run


def condenser_kind(method: str, options: Mapping[str, Any]) -> str:
    """What a condenser is, from its method and options: the method itself, except IEM, whose
    kind is the Table II row (paper.py's key) its ``network_aug``/``dataset_aug`` options
    select — both on (their default) is plain ``iem``."""
    if method != IEM:
        return method
    switches = (bool(options.get("network_aug", True)), bool(options.get("dataset_aug", True)))
    return ABLATION_KINDS[switches]


def condenser_kinds(records: Iterable[Record], run: Mapping[str, Any]) -> dict[str, str]:
    """Each condenser label's kind, from its method and options: as run.json's
    ``spec.condensers`` lists them (label, method, options), else as its records carry them.
    A store that records neither (written before condensers' options were recorded) keeps the
    paper's ablation labels (``iem-none``, ``iem-na``, ``iem-da``) as their own kinds; any
    other label there is its method with default options."""
    spec = run.get("spec") if isinstance(run.get("spec"), Mapping) else {}
    listed: dict[str, tuple[str, dict[str, Any]]] = {}
    for c in spec.get("condensers") or ():
        if isinstance(c, Mapping) and "label" in c:
            options = c.get("options") or ()
            options = dict(options.items() if isinstance(options, Mapping) else options)
            listed[str(c["label"])] = (str(c.get("method") or c["label"]), options)
    recorded: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for r in records:
        method, options = recorded.get(r.condenser, (r.method or r.condenser, None))
        recorded[r.condenser] = (method, options if options is not None else r.options)
    kinds: dict[str, str] = {}
    for label, (method, options) in recorded.items():
        if label in listed:
            kinds[label] = condenser_kind(*listed[label])
        elif options is not None:
            kinds[label] = condenser_kind(method, options)
        elif label in ABLATION_SWITCHES:
            log.info("%r: no options recorded; taking the paper's ablation label", label)
            kinds[label] = label
        else:
            kinds[label] = condenser_kind(method, {})
    return kinds


class Context:
    """What every section needs: records, run.json, the primary metric per dataset, condenser
    labels with their kinds, colours, and where figures go.

    ``figure_dir`` is where figures are (to be) written. With ``reuse_figures`` a figure whose
    file is already there is linked as it is, and one that is missing is drawn only when its
    data is asked for (documents); otherwise every figure is drawn anew (the report).
    """

    def __init__(self, records: list[Record], run: dict[str, Any], results_dir: Path,
                 figure_dir: Path, *, reuse_figures: bool = False) -> None:
        self.records = records
        self.run = run
        self.results_dir = Path(results_dir)
        self.figure_dir = Path(figure_dir)
        self.reuse_figures = reuse_figures
        self.metric = str(run.get("metric") or DEFAULT_METRIC)
        self.primary = self._primary_metrics()
        self.kinds = condenser_kinds(records, run)
        self.condensers = sorted(self.kinds, key=self._condenser_rank)
        self.whole_sets = {r.condenser for r in records if r.whole}
        self.can_draw = common.matplotlib_available()
        if not self.can_draw:
            log.warning("matplotlib is not installed: writing the report without figures")
        resolutions: dict[str, set] = defaultdict(set)
        for r in records:
            resolutions[r.dataset.name].add(r.dataset.resolution)
        self._ambiguous = {name for name, res in resolutions.items() if len(res) > 1}

    # ------------------------------------------------------------ condensers

    def _condenser_rank(self, label: str) -> tuple[int, str]:
        """The paper's order of kinds (whole, random, …, iem, then the ablation rows), the
        rest after it; labels of one kind by name."""
        kind = self.kinds[label]
        return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)), label

    def kind(self, label: str) -> str:
        return self.kinds.get(label, label)

    def switches(self, label: str) -> tuple[bool, bool] | None:
        """(network augmentation, dataset augmentation) of an IEM condenser; None otherwise."""
        return ABLATION_SWITCHES.get(self.kind(label))

    def ablation_variant(self, label: str) -> bool:
        """IEM with an augmentation switched off: Table II's, not Table I's."""
        return self.switches(label) not in (None, (True, True))

    # ------------------------------------------------------------ datasets and metrics

    def label(self, ds: DatasetKey) -> str:
        res = f" ({ds.resolution} px)" if ds.resolution else ""
        return ds.name + res

    def slug(self, ds: DatasetKey) -> str:
        """File-name form; the resolution appears only when it tells two runs apart."""
        return f"{ds.name}-{ds.resolution}px" if ds.name in self._ambiguous else ds.name

    def color(self, condenser: str) -> Any:
        from matplotlib import colormaps

        return colormaps["tab10"](self.condensers.index(condenser) % 10)

    def _primary_metrics(self) -> dict[str, str]:
        """run.json's metric, per dataset; where a protocol has no top-k (digits: mAP over
        the whole database) its records lack it, so fall back to the nearest mAP there is."""
        found: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            if r.task == "retrieval":
                found[r.dataset.name].add(r.metric)
        out = {}
        for name, metrics in found.items():
            maps = sorted(m for m in metrics if m.startswith("mAP"))
            choice = next((m for m in (self.metric, DEFAULT_METRIC, "mAP@all", *maps)
                           if m in metrics), self.metric)
            if choice != self.metric:
                log.info("%s has no %s records; reporting %s", name, self.metric, choice)
            out[name] = choice
        return out

    def metric_of(self, ds: DatasetKey) -> str:
        return self.primary.get(ds.name, self.metric)

    def metric_names(self, rows: Iterable[Record]) -> str:
        return " / ".join(sorted({self.metric_of(r.dataset) for r in rows})) or self.metric

    def final_retrieval(self) -> list[Record]:
        return [r for r in self.records if r.task == "retrieval" and r.iteration is None
                and r.metric == self.metric_of(r.dataset)]

    def paper_hash(self, rows: Iterable[Record]) -> str | None:
        """The hashing method whose numbers stand for Table I: DHD, else the first present."""
        hashes = ordered((r.hash_method for r in rows), HASH_ORDER)
        return PAPER_HASH if PAPER_HASH in hashes else (hashes[0] if hashes else None)

    # ------------------------------------------------------------ figures

    def figure(self, name: str, caption: str, draw: Callable[[], bytes]) -> list[Block]:
        """The blocks showing figure ``name`` (a file name in ``figure_dir``)."""
        path = self.figure_dir / name
        if self.reuse_figures and path.exists():
            return [Image(path, caption)]
        if not self.can_draw:
            return [Text(f"Figure `{name}` not drawn: matplotlib is not installed.")]
        return [Image(path, caption, draw)]


def load_context(results_dir: Path, figure_dir: Path | None = None, *,
                 reuse_figures: bool = False) -> Context:
    """Load ``results_dir`` into a Context whose figures go to ``figure_dir`` (default: the
    results folder)."""
    results_dir = Path(results_dir)
    records, run = load(results_dir)
    return Context(records, run, results_dir,
                   results_dir if figure_dir is None else Path(figure_dir),
                   reuse_figures=reuse_figures)
