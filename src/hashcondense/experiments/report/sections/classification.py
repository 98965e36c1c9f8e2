"""Fig. 1: classification accuracy of each final set beside its retrieval mAP."""

from __future__ import annotations

from ..common import (
    SECTIONS,
    Block,
    Section,
    Table,
    Text,
    datasets,
    group,
    ipc_axis,
    new_figure,
    ordered,
    png,
    stats,
)
from ..load import Context


@SECTIONS.register("classification")
def classification(ctx: Context) -> Section | None:
    acc = [r for r in ctx.records if r.task == "classification" and r.metric == "accuracy"
           and r.iteration is None]
    if not acc:
        return None
    retrieval = ctx.final_retrieval()
    hm = ctx.paper_hash(retrieval)
    retrieval = [r for r in retrieval if r.hash_method == hm]
    acc_groups = group(acc, lambda r: (r.dataset, r.condenser, r.ipc))
    map_groups = group(retrieval, lambda r: (r.dataset, r.condenser, r.ipc, r.bits))
    blocks: list[Block] = [Text(
        "Classification accuracy (%) of a classifier trained on each final set beside the "
        f"retrieval {ctx.metric_names(retrieval)} (%) of `{hm}` on the same sets "
        "(mean ± sample std (seeds)).")]
    for ds in datasets(acc):
        mine = [r for r in acc if r.dataset == ds]
        bits = ordered(r.bits for r in retrieval if r.dataset == ds)
        conds = ordered((r.condenser for r in mine), ctx.condensers)
        table = Table(["condenser", "ipc", "accuracy"] + [f"{ctx.metric_of(ds)} · {b} bits"
                                                          for b in bits], [])
        for c in conds:
            for ipc in ordered(r.ipc for r in mine if r.condenser == c):
                table.rows.append([
                    c, "–" if ipc is None else str(ipc),
                    str(stats(acc_groups.get((ds, c, ipc), [])) or "–"),
                    *(str(stats(map_groups.get((ds, c, ipc, b), [])) or "–") for b in bits)])
        plot_bits = bits[0] if bits else None

        def draw(ds=ds, conds=conds, plot_bits=plot_bits) -> bytes:
            fig, axes = new_figure(ncols=2, width=5.0)
            panels = [(axes[0], "accuracy (%)", lambda c, i: acc_groups.get((ds, c, i), []))]
            if plot_bits is not None:
                panels.append((axes[1], f"{ctx.metric_of(ds)} (%), {plot_bits} bits, {hm}",
                               lambda c, i: map_groups.get((ds, c, i, plot_bits), [])))
            else:
                axes[1].set_axis_off()
            all_ipcs: set[int] = set()
            for ax, ylabel, values in panels:
                for c in conds:
                    pts = [(i, stats(values(c, i))) for i in
                           ordered(r.ipc for r in ctx.records if r.dataset == ds
                                    and r.condenser == c and r.ipc is not None)]
                    pts = [(i, s) for i, s in pts if s is not None]
                    whole = stats(values(c, None))
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
                    ipc_axis(ax, sorted(all_ipcs))
            fig.suptitle(f"{ctx.label(ds)}: classification vs retrieval")
            return png(fig)

        name = f"fig1_{ctx.slug(ds)}.png"
        blocks += [Text(f"**{ctx.label(ds)}**"), table,
                   *ctx.figure(name, f"Fig. 1: classification vs retrieval on {ctx.label(ds)}",
                               draw)]
    return Section("Fig. 1: classification vs retrieval", blocks)
