"""Fig. 3: retrieval mAP against condensation wall time, through each condenser's snapshots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from ..common import (
    MIN_LOG_SECONDS,
    SECTIONS,
    Block,
    Section,
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
        f"{ctx.metric_names(rows)} (%) against condensation wall time: each line runs through one "
        "condenser's snapshots and its final set (means over seeds); the dashed line is the "
        f"whole training set. Sets that took no time (random, …) sit at {MIN_LOG_SECONDS} s.")]
    for ds, ipc, bits, hm in keys:
        mine = [r for r in rows if r.dataset == ds and r.bits == bits and r.hash_method == hm]
        whole = stats([r.value for r in mine if r.whole])
        mine = [r for r in mine if r.ipc == ipc]
        lines: dict[str, list[tuple[float, float, bool]]] = {}
        metric = ctx.metric_of(ds)
        table = Table(["condenser", "points", "final condense time", f"final {metric} (%)"], [])
        for cond in ordered((r.condenser for r in mine), ctx.condensers):
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
                fmt_seconds(statistics.fmean(r.condense_seconds for r in final))
                if final else "–", str(stats([r.value for r in final]) or "–")])

        def draw(ds=ds, ipc=ipc, bits=bits, hm=hm, lines=lines, whole=whole,
                 metric=metric) -> bytes:
            fig, (ax,) = new_figure()
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
            return png(fig)

        suffix = "" if hm == paper_hash else f"_{hm}"
        name = f"fig3_{ctx.slug(ds)}_ipc{ipc}_{bits}b{suffix}.png"
        blocks += [Text(f"**{ctx.label(ds)}, ipc {ipc}, {bits} bits, `{hm}`** "
                        "(squares mark final sets)"), table,
                   *ctx.figure(name, f"Fig. 3: {metric} vs condensation time, "
                               f"{ctx.label(ds)} ipc {ipc} {bits} bits {hm}", draw)]
    return Section("Fig. 3: condensation efficiency", blocks)
