"""Turn an experiment's results folder into a report a reader can check against the paper:
``report.md``, a self-contained ``report.html`` (inline CSS, images as data URIs, no scripts)
and the PNG figures beside them.

Reads what the experiment runner writes: ``results.jsonl`` (one record per (cell, metric)),
``run.json`` (experiment, profile, primary metric, versions, machine, protocols),
``curves/<cell>.json`` (precision–recall over Hamming radius) and ``previews/*.png``. Sections
appear only when their data exists: Table I, the ablation (Table II), efficiency (Fig. 3),
generalisation over hashing methods (Fig. 4), classification vs retrieval (Fig. 1),
precision–recall curves and synthetic image grids.

matplotlib is imported only when figures are drawn, and drawn through its Agg canvas without
touching pyplot's global backend; without matplotlib the report is written without figures.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import importlib.util
import io
import json
import logging
import math
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import atomic_write_bytes, atomic_write_text, read_jsonl
from .grid import WHOLE
from .paper import (
    ABLATION_ORDER,
    ABLATION_SWITCHES,
    CONDENSER_ORDER,
    DATASET_ORDER,
    HASH_ORDER,
    paper_value,
)

log = logging.getLogger(__name__)

DEFAULT_METRIC = "mAP@1000"
PAPER_HASH = "dhd"  # the paper's Tables I and II judge every set with DHD
ABLATION_VARIANTS = frozenset(ABLATION_ORDER) - {"iem"}  # reported in the ablation, not Table I
MIN_LOG_SECONDS = 1e-2  # where a zero-second condenser (random, …) sits on a log time axis


# ---------------------------------------------------------------- document model


@dataclass
class Text:
    text: str  # plain text; `backticks` become code


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    row_classes: list[str] = field(default_factory=list)  # HTML styling only


@dataclass
class Image:
    name: str  # file name (figures) or path relative to the report (previews)
    data: bytes
    caption: str
    write: bool = True  # a figure to write beside the report; previews already exist


@dataclass
class Section:
    title: str
    blocks: list[Text | Table | Image]


# ---------------------------------------------------------------- loading


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
    condenser: str
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
    method: str | None = None  # the condenser's method (its label may be anything)

    @property
    def whole(self) -> bool:
        """The whole-train-split reference, whatever the grid named it (stores without a
        method field: the only record without an ipc)."""
        return self.method == WHOLE if self.method else self.ipc is None


def _num(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _load(results_dir: Path) -> tuple[list[Record], dict[str, Any]]:
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
        value = r.get("value", r.get("map"))
        if r.get("dataset") is None or r.get("metric") is None or not math.isfinite(
                _num(value, math.nan)):
            skipped += 1
            continue
        records.append(Record(
            cell=r.get("cell"), condense_cell=r.get("condense_cell"),
            experiment=r.get("experiment"), profile=r.get("profile"),
            dataset=DatasetKey(str(r["dataset"]), r.get("resolution")),
            condenser=str(r.get("condenser", r.get("method", "?"))), ipc=r.get("ipc"),
            seed=r.get("seed"), iteration=r.get("iteration"), task=r.get("task", "retrieval"),
            hash_method=r.get("hash_method"), bits=r.get("bits"), metric=str(r["metric"]),
            value=100.0 * float(value), condense_seconds=_num(r.get("condense_seconds")),
            train_seconds=_num(r.get("train_seconds")),
            encode_seconds=_num(r.get("encode_seconds")), iterations=r.get("iterations"),
            method=r.get("method")))
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


# ---------------------------------------------------------------- helpers


def _ordered(values: Iterable[Any], order: Sequence[Any] = ()) -> list[Any]:
    """Known labels in the paper's order first, then the rest sorted, numbers as numbers
    (ipc 2 before 10), None last."""
    present = set(values)
    head = list(dict.fromkeys(v for v in order if v in present))
    rest = sorted((v for v in present if v not in order and v is not None),
                  key=lambda v: (0, v, "") if isinstance(v, int | float) else (1, 0, str(v)))
    return head + rest + ([None] if None in present and None not in order else [])


def _dataset_rank(ds: DatasetKey) -> tuple:
    order = DATASET_ORDER.index(ds.name) if ds.name in DATASET_ORDER else len(DATASET_ORDER)
    return order, ds.name, ds.resolution or 0


def _datasets(records: Iterable[Record]) -> list[DatasetKey]:
    return sorted({r.dataset for r in records}, key=_dataset_rank)


def _group_key_rank(key: tuple) -> tuple:
    """Order (dataset, ipc, bits, hash method) keys: paper datasets first, whole set last."""
    ds, ipc, bits, hm = key
    return _dataset_rank(ds), ipc is None, ipc or 0, bits or 0, str(hm)


@dataclass
class Stats:
    mean: float
    std: float | None  # sample std; None for a single seed
    n: int

    def __str__(self) -> str:
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{spread} ({self.n})"


def _stats(values: Sequence[float]) -> Stats | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stats(statistics.fmean(values), std, len(values))


def _group(records: Iterable[Record], key: Callable[[Record], Any]) -> dict[Any, list[float]]:
    out: dict[Any, list[float]] = defaultdict(list)
    for r in records:
        out[key(r)].append(r.value)
    return out


def _fmt_diff(ours: Stats | None, paper: float | None) -> str:
    return "–" if ours is None or paper is None else f"{ours.mean - paper:+.2f}"


def _fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


class _Context:
    """What every section needs: records, the primary metric, labels, colours and figures."""

    def __init__(self, records: list[Record], run: dict[str, Any], out_dir: Path) -> None:
        self.records = records
        self.run = run
        self.out_dir = out_dir
        self.metric = str(run.get("metric") or DEFAULT_METRIC)
        self.primary = self._primary_metrics()
        self.condensers = _ordered((r.condenser for r in records),
                                   (*CONDENSER_ORDER, *ABLATION_ORDER))
        self.whole_sets = {r.condenser for r in records if r.whole}
        self.can_draw = _matplotlib_available()
        if not self.can_draw:
            log.warning("matplotlib is not installed: writing the report without figures")
        resolutions: dict[str, set] = defaultdict(set)
        for r in records:
            resolutions[r.dataset.name].add(r.dataset.resolution)
        self._ambiguous = {name for name, res in resolutions.items() if len(res) > 1}

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
        hashes = _ordered((r.hash_method for r in rows), HASH_ORDER)
        return PAPER_HASH if PAPER_HASH in hashes else (hashes[0] if hashes else None)

    def figure(self, name: str, caption: str, draw: Callable[[], bytes]) -> list[Text | Image]:
        if not self.can_draw:
            return [Text(f"Figure `{name}` not drawn: matplotlib is not installed.")]
        return [Image(name, draw(), caption)]


# ---------------------------------------------------------------- plotting


def _matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Any, list]:
    """A figure bound to the Agg canvas directly: no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # reproducible bytes
    return buf.getvalue()


def _ipc_axis(ax: Any, ipcs: Sequence[int]) -> None:
    if len(ipcs) > 1 and max(ipcs) / max(min(ipcs), 1) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(list(ipcs))
    ax.set_xticklabels([str(i) for i in ipcs])
    ax.minorticks_off()


# ---------------------------------------------------------------- sections


def _table1(ctx: _Context) -> Section | None:
    rows = [r for r in ctx.final_retrieval() if r.condenser not in ABLATION_VARIANTS]
    hm = ctx.paper_hash(rows)
    rows = [r for r in rows if r.hash_method == hm]
    if not rows:
        return None
    compare = hm == PAPER_HASH
    blocks: list[Text | Table | Image] = [Text(
        f"{ctx.metric_names(rows)} (%) of `{hm}` trained on each final set: "
        "mean ± sample std (seeds)"
        + ("; below each, the paper's Table I value and our difference (ours − paper)."
           if compare else "; the paper's Table I uses DHD, so no paper values are shown.")
        + " Herding has no Table I column in the paper.")]
    groups = _group(rows, lambda r: (r.dataset, r.condenser, r.ipc, r.bits))
    for ds in _datasets(rows):
        mine = [r for r in rows if r.dataset == ds]
        ipcs = _ordered(r.ipc for r in mine if r.ipc is not None) or [None]
        columns = [(ipc, b) for ipc in ipcs for b in _ordered(r.bits for r in mine)]
        table = Table(["condenser", ""] + [
            ("whole set" if ipc is None else f"ipc {ipc}") + f" · {b} bits"
            for ipc, b in columns], [])
        conds = _ordered((r.condenser for r in mine), CONDENSER_ORDER)
        paper = {c: [paper_value("table1", ds.name, c, ipc, b) for ipc, b in columns]
                 for c in conds}
        # Paper rows only where the paper has this dataset (not digits, say).
        with_paper = compare and any(p is not None for v in paper.values() for p in v)
        for cond in conds:
            # The whole set has no ipc: its numbers stand in every ipc column, as in the paper.
            ours = [_stats(groups.get((ds, cond, None if cond in ctx.whole_sets else ipc, b), []))
                    for ipc, b in columns]
            table.rows.append([cond, "ours"] + [str(s) if s else "–" for s in ours])
            table.row_classes.append("ours")
            if with_paper:
                table.rows.append(["", "paper"] + [
                    "–" if p is None else f"{p:.2f}" for p in paper[cond]])
                table.rows.append(["", "Δ"] + [
                    _fmt_diff(s, p) for s, p in zip(ours, paper[cond], strict=True)])
                table.row_classes += ["paper", "diff"]
        blocks += [Text(f"**{ctx.label(ds)}** · {ctx.metric_of(ds)}"), table]
    return Section("Table I: retrieval with condensed sets", blocks)


def _cost(ctx: _Context) -> Section | None:
    """What each final set cost: budgets differ by profile and wall-clock budgets end at
    machine-dependent iterations, so every table above is read with this one."""
    sets: dict[tuple, Record] = {}
    for r in ctx.records:
        if r.iteration is None and r.condense_cell and r.condense_seconds > 0:
            sets[(r.dataset, r.condenser, r.ipc, r.seed)] = r
    if not sets:
        return None
    table = Table(["dataset", "condenser", "ipc", "seeds", "iterations run", "condense s"], [])
    groups: dict[tuple, list[Record]] = {}
    for (ds, cond, ipc, _), r in sets.items():
        groups.setdefault((ds, cond, ipc), []).append(r)
    order = (*CONDENSER_ORDER, *ABLATION_ORDER)
    for (ds, cond, ipc), rs in sorted(groups.items(), key=lambda kv: (
            _dataset_rank(kv[0][0]), order.index(kv[0][1]) if kv[0][1] in order else len(order),
            kv[0][1], kv[0][2] or 0)):
        its = sorted({r.iterations for r in rs if r.iterations is not None})
        table.rows.append([ctx.label(ds), cond, str(ipc), str(len(rs)),
                           ", ".join(map(str, its)) or "–",
                           ", ".join(f"{r.condense_seconds:.0f}" for r in rs)])
    return Section("Condensation cost of each set", [Text(
        "Iterations each condensation ran and its wall time (setup and compilation included), "
        "per seed. Coresets (random, herding) have no iterations."), table])


def _ablation(ctx: _Context) -> Section | None:
    rows = [r for r in ctx.final_retrieval() if r.condenser in ABLATION_ORDER]
    if not any(r.condenser in ABLATION_VARIANTS for r in rows):
        return None
    hm = ctx.paper_hash(r for r in rows if r.condenser in ABLATION_VARIANTS)
    rows = [r for r in rows if r.hash_method == hm]
    compare = hm == PAPER_HASH
    groups = _group(rows, lambda r: (r.dataset, r.ipc, r.bits, r.condenser))
    table = Table(["dataset", "ipc", "bits", "NA", "DA", "condenser",
                   f"{ctx.metric_names(rows)} (%)",
                   "paper", "Δ"], [])
    for ds in _datasets(rows):
        mine = [r for r in rows if r.dataset == ds]
        for ipc in _ordered(r.ipc for r in mine):
            for bits in _ordered(r.bits for r in mine if r.ipc == ipc):
                for cond in ABLATION_ORDER:
                    ours = _stats(groups.get((ds, ipc, bits, cond), []))
                    if ours is None:
                        continue
                    na, da = ABLATION_SWITCHES[cond]
                    paper = paper_value("table2", ds.name, cond, ipc) if compare else None
                    table.rows.append([
                        ctx.label(ds), str(ipc), str(bits), "✓" if na else "✗",
                        "✓" if da else "✗", cond, str(ours),
                        "–" if paper is None else f"{paper:.2f}", _fmt_diff(ours, paper)])
    return Section("Table II: ablation of network (NA) and dataset (DA) augmentation", [
        Text(f"`{hm}`, final sets, mean ± sample std (seeds). The paper's Table II reports "
             "CIFAR10 at ipc 50 and ImageNet10 at ipc 3 without stating the bit length, so its "
             "value is shown beside every bit length."), table])


def _efficiency(ctx: _Context) -> Section | None:
    rows = [r for r in ctx.records if r.task == "retrieval"
            and r.metric == ctx.metric_of(r.dataset)]
    keys = sorted({(r.dataset, r.ipc, r.bits, r.hash_method) for r in rows
                   if r.iteration is not None}, key=_group_key_rank)
    if not keys:
        return None
    paper_hash = ctx.paper_hash(rows)
    blocks: list[Text | Table | Image] = [Text(
        f"{ctx.metric_names(rows)} (%) against condensation wall time: each line runs through one "
        "condenser's snapshots and its final set (means over seeds); the dashed line is the "
        f"whole training set. Sets that took no time (random, …) sit at {MIN_LOG_SECONDS} s.")]
    for ds, ipc, bits, hm in keys:
        mine = [r for r in rows if r.dataset == ds and r.bits == bits and r.hash_method == hm]
        whole = _stats([r.value for r in mine if r.whole])
        mine = [r for r in mine if r.ipc == ipc]
        lines: dict[str, list[tuple[float, float, bool]]] = {}
        metric = ctx.metric_of(ds)
        table = Table(["condenser", "points", "final condense time", f"final {metric} (%)"], [])
        for cond in _ordered((r.condenser for r in mine), ctx.condensers):
            by_iter: dict[Any, list[Record]] = defaultdict(list)
            for r in (r for r in mine if r.condenser == cond):
                by_iter[r.iteration].append(r)
            points = sorted(
                (statistics.fmean(r.condense_seconds for r in rs),
                 statistics.fmean(r.value for r in rs), it is None)
                for it, rs in by_iter.items())
            lines[cond] = points
            final = by_iter.get(None, [])
            table.rows.append([
                cond, str(len(points)),
                _fmt_seconds(statistics.fmean(r.condense_seconds for r in final))
                if final else "–", str(_stats([r.value for r in final]) or "–")])

        def draw(ds=ds, ipc=ipc, bits=bits, hm=hm, lines=lines, whole=whole,
                 metric=metric) -> bytes:
            fig, (ax,) = _new_figure()
            for cond, points in lines.items():
                xs = [max(x, MIN_LOG_SECONDS) for x, _, _ in points]
                ax.plot(xs, [y for _, y, _ in points], "-o", color=ctx.color(cond), label=cond,
                        markersize=4)
                finals = [(max(x, MIN_LOG_SECONDS), y) for x, y, final in points if final]
                if finals:
                    ax.plot([x for x, _ in finals], [y for _, y in finals], "s",
                            color=ctx.color(cond), markersize=7)
            if whole is not None:
                ax.axhline(whole.mean, color="black", linestyle="--", linewidth=1,
                           label="whole set")
            ax.set_xscale("log")
            ax.set_xlabel("condensation wall time (s, log)")
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{ctx.label(ds)}, ipc {ipc}, {bits} bits, {hm}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
            return _png(fig)

        suffix = "" if hm == paper_hash else f"_{hm}"
        name = f"fig3_{ctx.slug(ds)}_ipc{ipc}_{bits}b{suffix}.png"
        blocks += [Text(f"**{ctx.label(ds)}, ipc {ipc}, {bits} bits, `{hm}`** "
                        "(squares mark final sets)"), table,
                   *ctx.figure(name, f"Fig. 3: {metric} vs condensation time, "
                               f"{ctx.label(ds)} ipc {ipc} {bits} bits {hm}", draw)]
    return Section("Fig. 3: condensation efficiency", blocks)


def _generalisation(ctx: _Context) -> Section | None:
    rows = [r for r in ctx.final_retrieval() if r.hash_method is not None]
    if len({r.hash_method for r in rows}) < 2:
        return None
    groups = _group(rows, lambda r: (r.dataset, r.ipc, r.bits, r.hash_method, r.condenser))
    blocks: list[Text | Table | Image] = [Text(
        f"{ctx.metric_names(rows)} (%) of each hashing method trained on the same final sets: "
        "bars are means over seeds with the sample std as error bar; dashed lines mark the "
        "whole set.")]
    for ds in _datasets(rows):
        mine = [r for r in rows if r.dataset == ds]
        for ipc in _ordered(r.ipc for r in mine if r.ipc is not None):
            for bits in _ordered(r.bits for r in mine if r.ipc == ipc):
                hashes = _ordered((r.hash_method for r in mine if r.ipc == ipc
                                   and r.bits == bits), HASH_ORDER)
                if len(hashes) < 2:
                    continue
                conds = _ordered((r.condenser for r in mine if r.ipc == ipc and r.bits == bits),
                                 ctx.condensers)
                stats = {(h, c): _stats(groups.get((ds, ipc, bits, h, c), []))
                         for h in hashes for c in conds}
                whole = {h: _stats([v for c in ctx.whole_sets
                                    for v in groups.get((ds, None, bits, h, c), [])])
                         for h in hashes}
                table = Table(["condenser", *hashes], [
                    [c, *(str(stats[h, c] or "–") for h in hashes)] for c in conds])
                if any(whole.values()):
                    table.rows.append([" / ".join(sorted(ctx.whole_sets)),
                                       *(str(whole[h] or "–") for h in hashes)])

                def draw(ds=ds, ipc=ipc, bits=bits, hashes=hashes, conds=conds, stats=stats,
                         whole=whole) -> bytes:
                    fig, (ax,) = _new_figure(width=max(6.0, 1.2 * len(hashes) * len(conds)))
                    width = 0.8 / len(conds)
                    for j, c in enumerate(conds):
                        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(hashes))]
                        st = [stats[h, c] for h in hashes]
                        ax.bar(xs, [s.mean if s else 0.0 for s in st], width,
                               yerr=[s.std or 0.0 if s else 0.0 for s in st], capsize=3,
                               color=ctx.color(c), label=c)
                    for i, h in enumerate(hashes):
                        if whole[h] is not None:
                            ax.hlines(whole[h].mean, i - 0.45, i + 0.45, colors="black",
                                      linestyles="--", linewidth=1,
                                      label="whole set" if i == 0 else None)
                    ax.set_xticks(range(len(hashes)))
                    ax.set_xticklabels(hashes)
                    ax.set_ylabel(f"{ctx.metric_of(ds)} (%)")
                    ax.set_title(f"{ctx.label(ds)}, ipc {ipc}, {bits} bits")
                    ax.grid(True, axis="y", alpha=0.3)
                    ax.legend(fontsize=8)
                    return _png(fig)

                name = f"fig4_{ctx.slug(ds)}_ipc{ipc}_{bits}b.png"
                blocks += [Text(f"**{ctx.label(ds)}, ipc {ipc}, {bits} bits**"), table,
                           *ctx.figure(name, f"Fig. 4: hashing methods on {ctx.label(ds)} "
                                       f"ipc {ipc} {bits} bits", draw)]
    if len(blocks) == 1:
        return None
    return Section("Fig. 4: generalisation across hashing methods", blocks)


def _classification(ctx: _Context) -> Section | None:
    acc = [r for r in ctx.records if r.task == "classification" and r.metric == "accuracy"
           and r.iteration is None]
    if not acc:
        return None
    retrieval = ctx.final_retrieval()
    hm = ctx.paper_hash(retrieval)
    retrieval = [r for r in retrieval if r.hash_method == hm]
    acc_groups = _group(acc, lambda r: (r.dataset, r.condenser, r.ipc))
    map_groups = _group(retrieval, lambda r: (r.dataset, r.condenser, r.ipc, r.bits))
    blocks: list[Text | Table | Image] = [Text(
        "Classification accuracy (%) of a classifier trained on each final set beside the "
        f"retrieval {ctx.metric_names(retrieval)} (%) of `{hm}` on the same sets "
        "(mean ± sample std (seeds)).")]
    for ds in _datasets(acc):
        mine = [r for r in acc if r.dataset == ds]
        bits = _ordered(r.bits for r in retrieval if r.dataset == ds)
        conds = _ordered((r.condenser for r in mine), ctx.condensers)
        table = Table(["condenser", "ipc", "accuracy"] + [f"{ctx.metric_of(ds)} · {b} bits"
                                                          for b in bits], [])
        for c in conds:
            for ipc in _ordered(r.ipc for r in mine if r.condenser == c):
                table.rows.append([
                    c, "–" if ipc is None else str(ipc),
                    str(_stats(acc_groups.get((ds, c, ipc), [])) or "–"),
                    *(str(_stats(map_groups.get((ds, c, ipc, b), [])) or "–") for b in bits)])
        plot_bits = bits[0] if bits else None

        def draw(ds=ds, conds=conds, plot_bits=plot_bits) -> bytes:
            fig, axes = _new_figure(ncols=2, width=5.0)
            panels = [(axes[0], "accuracy (%)", lambda c, i: acc_groups.get((ds, c, i), []))]
            if plot_bits is not None:
                panels.append((axes[1], f"{ctx.metric_of(ds)} (%), {plot_bits} bits, {hm}",
                               lambda c, i: map_groups.get((ds, c, i, plot_bits), [])))
            else:
                axes[1].set_axis_off()
            all_ipcs: set[int] = set()
            for ax, ylabel, values in panels:
                for c in conds:
                    pts = [(i, _stats(values(c, i))) for i in
                           _ordered(r.ipc for r in ctx.records if r.dataset == ds
                                    and r.condenser == c and r.ipc is not None)]
                    pts = [(i, s) for i, s in pts if s is not None]
                    whole = _stats(values(c, None))
                    if whole is not None:
                        ax.axhline(whole.mean, color=ctx.color(c), linestyle="--",
                                   linewidth=1, label=c)
                    if pts:
                        all_ipcs.update(i for i, _ in pts)
                        ax.errorbar([i for i, _ in pts], [s.mean for _, s in pts],
                                    yerr=[s.std or 0.0 for _, s in pts], fmt="-o",
                                    color=ctx.color(c), label=c, markersize=4, capsize=3)
                ax.set_xlabel("images per class")
                ax.set_ylabel(ylabel)
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=8)
            for ax, _, _ in panels:
                if all_ipcs:
                    _ipc_axis(ax, sorted(all_ipcs))
            fig.suptitle(f"{ctx.label(ds)}: classification vs retrieval")
            return _png(fig)

        name = f"fig1_{ctx.slug(ds)}.png"
        blocks += [Text(f"**{ctx.label(ds)}**"), table,
                   *ctx.figure(name, f"Fig. 1: classification vs retrieval on {ctx.label(ds)}",
                               draw)]
    return Section("Fig. 1: classification vs retrieval", blocks)


def _read_curve(path: Path) -> tuple[list[float], list[float]] | None:
    """(recall, precision) pairs with undefined precision (nothing retrieved) dropped."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        precision, recall = data["precision"], data["recall"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        log.warning("skipping unreadable curve %s (%s)", path, e)
        return None
    if not isinstance(precision, list) or not isinstance(recall, list) \
            or len(precision) != len(recall):
        log.warning("skipping curve %s: precision and recall differ in length", path)
        return None
    pairs = [(_num(r, math.nan), _num(p, math.nan)) for r, p in zip(recall, precision, strict=True)]
    # An undefined precision, or (0, 0) where no query retrieved anything, is no point.
    pairs = [(r, p) for r, p in pairs if math.isfinite(r) and math.isfinite(p)
             and (r, p) != (0.0, 0.0)]
    if not pairs:
        return None
    return [r for r, _ in pairs], [p for _, p in pairs]


def _pr_curves(ctx: _Context, results_dir: Path) -> Section | None:
    files = sorted((results_dir / "curves").glob("*.json"))
    if not files:
        return None
    by_cell = {r.cell: r for r in ctx.records if r.cell is not None and r.task == "retrieval"}
    chosen: dict[tuple, dict[str, tuple[int, Path]]] = defaultdict(dict)
    for f in files:
        r = by_cell.get(f.stem)
        if r is None:
            log.warning("curve %s matches no retrieval record; skipped", f)
            continue
        if r.iteration is not None:
            continue
        slot = chosen[(r.dataset, r.ipc, r.bits, r.hash_method)]
        seed = r.seed if r.seed is not None else 0
        if r.condenser not in slot or seed < slot[r.condenser][0]:
            slot[r.condenser] = (seed, f)
    # The whole set has no ipc: its curve joins every ipc of its dataset, bits and method.
    wholes = {k: v for k, v in chosen.items() if k[1] is None}
    groups = {k: v for k, v in chosen.items() if k[1] is not None}
    for (ds, _, bits, hm), curves in wholes.items():
        targets = [k for k in groups if (k[0], k[2], k[3]) == (ds, bits, hm)]
        for k in targets:
            groups[k] = {**groups[k], **curves}
        if not targets:
            groups[(ds, None, bits, hm)] = curves
    blocks: list[Text | Table | Image] = []
    for key in sorted(groups, key=_group_key_rank):
        ds, ipc, bits, hm = key
        curves = {c: _read_curve(groups[key][c][1]) for c in
                  _ordered(groups[key], ctx.condensers)}
        curves = {c: v for c, v in curves.items() if v is not None}
        if not curves:
            continue
        seeds = {c: groups[key][c][0] for c in curves}
        ipc_label = "whole" if ipc is None else f"ipc{ipc}"

        def draw(ds=ds, ipc_label=ipc_label, bits=bits, hm=hm, curves=curves,
                 seeds=seeds) -> bytes:
            fig, (ax,) = _new_figure(width=5.0)
            for c, (recall, precision) in curves.items():
                ax.plot(recall, precision, marker="o", markersize=3, color=ctx.color(c),
                        linestyle="--" if c in ctx.whole_sets else "-",
                        label=f"{c} (seed {seeds[c]})")
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_xlim(0, 1.02)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{ctx.label(ds)}, {ipc_label}, {bits} bits, {hm}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
            return _png(fig)

        name = f"pr_{ctx.slug(ds)}_{ipc_label}_{bits}b_{hm}.png"
        blocks += ctx.figure(name, f"Precision–recall over Hamming radius: {ctx.label(ds)} "
                             f"{ipc_label} {bits} bits {hm}", draw)
    if not blocks:
        return None
    return Section("Precision–recall curves", [Text(
        "Precision against recall as the Hamming radius grows from 0 to the code length, for "
        "the final set of each condenser's lowest seed; radii that retrieve nothing are left "
        "out."), *blocks])


def _previews(results_dir: Path, out_dir: Path) -> Section | None:
    files = sorted((results_dir / "previews").glob("*.png"))
    if not files:
        return None
    return Section("Synthetic images", [
        Image(Path(os.path.relpath(f, out_dir)).as_posix(), f.read_bytes(), f.name, write=False)
        for f in files])


# ---------------------------------------------------------------- header and footer


def _kv(d: Any) -> str:
    if isinstance(d, dict):
        return ", ".join(f"{k} {_kv(v)}" for k, v in d.items())
    if isinstance(d, list | tuple):
        return ", ".join(map(_kv, d))
    return str(d)


def _header(ctx: _Context) -> tuple[str, list[Text | Table | Image]]:
    run = ctx.run
    experiment = run.get("experiment") or _single(r.experiment for r in ctx.records)
    profile = run.get("profile") or _single(r.profile for r in ctx.records)
    title = f"Experiment {experiment or '?'} (profile {profile or '?'})"
    machine = run.get("machine") or {}
    machine_text = (f"{machine.get('cpu_model', '?')} ({machine.get('cpu_count', '?')} cores)"
                    + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
                    if isinstance(machine, dict) else str(machine))
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = Table(["", ""], [
        ["description", str(run.get("description") or "–")],
        ["primary metric", ctx.metric + "".join(
            f"; {name}: {m}" for name, m in sorted(ctx.primary.items()) if m != ctx.metric)],
        ["machine", machine_text],
        ["versions", _kv(run.get("versions") or {}) or "–"],
        ["results updated", str(run.get("updated_at") or "–")],
        ["report generated", now],
    ])
    blocks: list[Text | Table | Image] = [meta]
    protocols = run.get("protocols") or {}
    if isinstance(protocols, dict) and protocols:
        rows = []
        for name, proto in protocols.items():
            proto = proto if isinstance(proto, dict) else {"details": proto}
            # Class lists and index pools are too long for a header: scalars only.
            rest = {k: v for k, v in proto.items() if k not in ("fingerprint", "sizes")
                    and isinstance(v, str | int | float)}
            rows.append([str(name), f"`{str(proto.get('fingerprint', '?'))[:16]}`",
                         _kv(proto.get("sizes") or {}) or "–", _kv(rest) or "–"])
        blocks += [Text("Protocols (dataset → fingerprint prefix and split sizes):"),
                   Table(["dataset", "fingerprint", "split sizes", "details"], rows)]
    return title, blocks


def _single(values: Iterable[Any]) -> Any:
    vals = set(values)
    return vals.pop() if len(vals) == 1 else None


def _footer(ctx: _Context) -> Section:
    recs = ctx.records
    cells = {r.cell for r in recs if r.cell}
    seeds = sorted({r.seed for r in recs if r.seed is not None})
    # A condensation is shared by every judge cell built on it, and its snapshots carry partial
    # times: count each condense cell once, at its longest (final) time.
    condense: dict[str, float] = {}
    per_cell: dict[str, tuple[float, float]] = {}
    for r in recs:
        if r.condense_cell and not r.whole:  # the whole set is not condensed
            condense[r.condense_cell] = max(condense.get(r.condense_cell, 0.0),
                                            r.condense_seconds)
        if r.cell:
            per_cell[r.cell] = (r.train_seconds, r.encode_seconds)
    train = sum(t for t, _ in per_cell.values())
    encode = sum(e for _, e in per_cell.values())
    return Section("Totals", [Table(["", ""], [
        ["records", str(len(recs))],
        ["judge cells", str(len(cells))],
        ["condensations", str(len(condense))],
        ["seeds", f"{len(seeds)} ({', '.join(map(str, seeds))})" if seeds else "0"],
        ["condense time", f"{_fmt_seconds(sum(condense.values()))} "
                          f"({sum(condense.values()):.1f} s)"],
        ["train time", f"{_fmt_seconds(train)} ({train:.1f} s)"],
        ["encode time", f"{_fmt_seconds(encode)} ({encode:.1f} s)"],
    ])])


# ---------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, head: list, sections: list[Section]) -> str:
    out = [f"# {title}", ""]

    def blocks(items: list) -> None:
        for b in items:
            if isinstance(b, Text):
                out.extend([b.text, ""])
            elif isinstance(b, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
                out.append("|" + "---|" * len(b.headers))
                out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows)
                out.append("")
            else:
                out.extend([f"![{b.caption}]({b.name})", "", f"*{b.caption}*", ""])

    blocks(head)
    for s in sections:
        out.extend([f"## {s.title}", ""])
        blocks(s.blocks)
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
tr.paper td{color:#555;background:#fafafa}tr.diff td{color:#555;font-style:italic}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
figure{display:inline-block;margin:.5em 1em 1em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
"""


def _inline(text: str) -> str:
    """Escape, then the two bits of markup the report's texts use: `code` and **bold**."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _html(title: str, head: list, sections: list[Section]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]

    def blocks(items: list) -> None:
        for b in items:
            if isinstance(b, Text):
                out.append(f"<p>{_inline(b.text)}</p>")
            elif isinstance(b, Table):
                out.append("<table><thead><tr>"
                           + "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
                           + "</tr></thead><tbody>")
                for i, row in enumerate(b.rows):
                    cls = b.row_classes[i] if i < len(b.row_classes) else ""
                    attr = f' class="{html.escape(cls)}"' if cls else ""
                    out.append(f"<tr{attr}>" + "".join(f"<td>{_inline(c)}</td>" for c in row)
                               + "</tr>")
                out.append("</tbody></table>")
            else:
                # figures inline (the page stands alone); preview grids — photos, hundreds of
                # kB each — by their path next to the page, so they are stored once
                src = (f"data:image/png;base64,{base64.b64encode(b.data).decode('ascii')}"
                       if b.write else html.escape(b.name))
                out.append(f'<figure><img alt="{html.escape(b.caption)}" src="{src}">'
                           f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")

    blocks(head)
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        blocks(s.blocks)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- entry point


def write_report(results_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the figures for one results folder.

    Returns every file written, by file name. Each file is written to a temporary name and
    renamed, so an interrupted report never leaves a half-written file. Raises ValueError when
    ``results_dir`` or its ``results.jsonl`` is missing or empty.
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    records, run = _load(results_dir)
    ctx = _Context(records, run, out_dir)
    title, head = _header(ctx)
    sections = [s for s in (_table1(ctx), _ablation(ctx), _efficiency(ctx),
                            _generalisation(ctx), _classification(ctx), _cost(ctx),
                            _pr_curves(ctx, results_dir), _previews(results_dir, out_dir))
                if s is not None]
    sections.append(_footer(ctx))

    written: dict[str, Path] = {}
    for s in sections:
        for b in s.blocks:
            if isinstance(b, Image) and b.write:
                written[b.name] = atomic_write_bytes(out_dir / b.name, b.data)
    written["report.md"] = atomic_write_text(out_dir / "report.md",
                                             _markdown(title, head, sections))
    written["report.html"] = atomic_write_text(out_dir / "report.html",
                                               _html(title, head, sections))
    log.info("wrote report for %s (%d sections, %d figures) to %s", results_dir,
             len(sections), len(written) - 2, out_dir)
    return written
