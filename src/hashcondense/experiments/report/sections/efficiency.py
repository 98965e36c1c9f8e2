"""Fig. 3: retrieval mAP against condensation wall time and updates, through each condenser's
snapshots: the curve that says how long a condensation must run."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..common import (
    MIN_LOG_SECONDS,
    SECTIONS,
    Block,
    Section,
    Stats,
    Table,
    Text,
    fmt_seconds,
    group_key_rank,
    new_figure,
    ordered,
    png,
    stats,
)
from ..load import Context, Record


@dataclass(frozen=True)
class _Point:
    """One judged version of a condenser's set, averaged over seeds."""

    seconds: float
    # updates of every class's images (DSA and IDC make many an iteration); None: a coreset,
    # or a final set whose run did not record its count
    updates: int | None
    value: Stats
    final: bool


def _points(records: list[Record]) -> list[_Point]:
    by_iter: dict[Any, list[Record]] = defaultdict(list)
    for r in records:
        by_iter[r.iteration].append(r)
    points = []
    for it, rs in by_iter.items():
        # the count each run actually made (a time budget varies); records from before runs
        # kept ``updates`` are DM / IEM ones, whose iteration is one update
        counts = [r.updates if r.updates is not None else it if it is not None else r.iterations
                  for r in rs]
        known = [c for c in counts if c is not None]
        updates = round(statistics.fmean(known)) if known else None
        value = stats([r.value for r in rs])
        assert value is not None  # every group holds a record
        points.append(_Point(statistics.fmean(r.condense_seconds for r in rs), updates, value,
                             it is None))
    return sorted(points, key=lambda p: (p.seconds, p.updates or 0))


def _plain_log_ticks(ax: Any) -> None:
    """A log x axis labelled 1000, 2000, 3000 where it spans under a decade (a snapshot curve
    from 1,000 to 3,000 updates would otherwise show two labels), 200, 500, 1000 under ~2.5
    decades (matplotlib would label its minor ticks in overlapping 3×10² form), and at the
    decades beyond that."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    span = hi / lo
    subs = (tuple(float(i) for i in range(1, 10)) if span < 10
            else (1.0, 2.0, 5.0) if span < 300 else (1.0,))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


@SECTIONS.register("efficiency")
def efficiency(ctx: Context) -> Section | None:
    rows = [r for r in ctx.records if r.task == "retrieval"
            and r.metric == ctx.metric_of(r.dataset)]
    keys = sorted({(r.dataset, r.ipc, r.bits, r.hash_method) for r in rows
                   if r.iteration is not None}, key=group_key_rank)
    if not keys:
        return None
    paper_hash = ctx.paper_hash(rows)
    blocks: list[Block] = [Text(
        f"{ctx.metric_names(rows)} (%) against condensation wall time (left) and updates "
        "(right; one update moves every class's images once: a DM or IEM iteration, one of a "
        "DSA iteration's outer steps, one of an IDC iteration's inner steps): each line runs "
        "through one condenser's snapshots and its final set (means over seeds; squares mark "
        "final sets)"
        + ("; the dashed line is the whole training set" if any(r.whole for r in rows) else "")
        + f". Sets that took no time (random, …) sit at {MIN_LOG_SECONDS} s on the left and "
        "are dotted levels on the right.")]
    for ds, ipc, bits, hm in keys:
        mine = [r for r in rows if r.dataset == ds and r.bits == bits and r.hash_method == hm]
        whole = stats([r.value for r in mine if r.whole])
        mine = [r for r in mine if r.ipc == ipc]
        metric = ctx.metric_of(ds)
        lines = {cond: _points([r for r in mine if r.condenser == cond])
                 for cond in ordered((r.condenser for r in mine), ctx.condensers)}
        table = Table(["condenser", "updates", "condense time", f"{metric} (%)"], [])
        for cond, points in lines.items():
            for i, p in enumerate(points):
                updates = "–" if p.updates is None else f"{p.updates:,}"
                table.rows.append([cond if i == 0 else "",
                                   f"{updates} (final)" if p.final else updates,
                                   fmt_seconds(p.seconds), str(p.value)])

        def draw(ds=ds, ipc=ipc, bits=bits, hm=hm, lines=lines, whole=whole,
                 metric=metric) -> bytes:
            fig, (by_time, by_updates) = new_figure(ncols=2)
            for cond, points in lines.items():
                color = ctx.color(cond)
                xs = [max(p.seconds, MIN_LOG_SECONDS) for p in points]
                by_time.plot(xs, [p.value.mean for p in points], "-o", color=color, label=cond,
                             markersize=4)
                counted = [p for p in points if p.updates]
                if counted:
                    by_updates.plot([p.updates for p in counted],
                                    [p.value.mean for p in counted], "-o", color=color,
                                    label=cond, markersize=4)
                else:  # a coreset: no updates to place it at
                    by_updates.axhline(statistics.fmean(p.value.mean for p in points),
                                       color=color, linestyle=":", linewidth=1.2, label=cond)
                for ax, finals in ((by_time, [(max(p.seconds, MIN_LOG_SECONDS), p.value.mean)
                                              for p in points if p.final]),
                                   (by_updates, [(p.updates, p.value.mean)
                                                 for p in counted if p.final])):
                    if finals:
                        ax.plot([x for x, _ in finals], [y for _, y in finals], "s",
                                color=color, markersize=7)
            for ax, xlabel in ((by_time, "condensation wall time (s, log)"),
                               (by_updates, "updates of the synthetic set (log)")):
                if whole is not None:
                    ax.axhline(whole.mean, color="black", linestyle="--", linewidth=1,
                               label="whole set")
                _plain_log_ticks(ax)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(f"{metric} (%)")
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=8)
            fig.suptitle(f"{ctx.label(ds)}, ipc {ipc}, {bits} bits, {hm}")
            return png(fig)

        suffix = "" if hm == paper_hash else f"_{hm}"
        name = f"fig3_{ctx.slug(ds)}_ipc{ipc}_{bits}b{suffix}.png"
        blocks += [Text(f"**{ctx.label(ds)}, ipc {ipc}, {bits} bits, `{hm}`**"), table,
                   *ctx.figure(name, f"Fig. 3: {metric} vs condensation time and updates, "
                               f"{ctx.label(ds)} ipc {ipc} {bits} bits {hm}", draw)]
    return Section("Fig. 3: condensation efficiency", blocks)
