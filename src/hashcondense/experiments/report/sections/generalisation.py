"""Fig. 4: several hashing methods trained on the same final sets."""

from __future__ import annotations

from ...paper import HASH_ORDER
from ..common import (
    SECTIONS,
    Block,
    Section,
    Table,
    Text,
    datasets,
    group,
    new_figure,
    ordered,
    png,
    stats,
)
from ..load import Context


@SECTIONS.register("generalisation")
def generalisation(ctx: Context) -> Section | None:
    rows = [r for r in ctx.final_retrieval() if r.hash_method is not None]
    if len({r.hash_method for r in rows}) < 2:
        return None
    groups = group(rows, lambda r: (r.dataset, r.ipc, r.bits, r.hash_method, r.condenser))
    blocks: list[Block] = [Text(
        f"{ctx.metric_names(rows)} (%) of each hashing method trained on the same final sets: "
        "bars are means over seeds with the sample std as error bar; dashed lines mark the "
        "whole set.")]
    for ds in datasets(rows):
        mine = [r for r in rows if r.dataset == ds]
        for ipc in ordered(r.ipc for r in mine if r.ipc is not None):
            for bits in ordered(r.bits for r in mine if r.ipc == ipc):
                hashes = ordered((r.hash_method for r in mine if r.ipc == ipc
                                  and r.bits == bits), HASH_ORDER)
                if len(hashes) < 2:
                    continue
                conds = ordered((r.condenser for r in mine if r.ipc == ipc and r.bits == bits),
                                ctx.condensers)
                st = {(h, c): stats(groups.get((ds, ipc, bits, h, c), []))
                      for h in hashes for c in conds}
                whole = {h: stats([v for c in ctx.whole_sets
                                   for v in groups.get((ds, None, bits, h, c), [])])
                         for h in hashes}
                table = Table(["condenser", *hashes], [
                    [c, *(str(st[h, c] or "–") for h in hashes)] for c in conds])
                if any(whole.values()):
                    table.rows.append([" / ".join(sorted(ctx.whole_sets)),
                                       *(str(whole[h] or "–") for h in hashes)])

                def draw(ds=ds, ipc=ipc, bits=bits, hashes=hashes, conds=conds, st=st,
                         whole=whole) -> bytes:
                    fig, (ax,) = new_figure(width=max(6.0, 1.2 * len(hashes) * len(conds)))
                    width = 0.8 / len(conds)
                    for j, c in enumerate(conds):
                        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(hashes))]
                        bars = [st[h, c] for h in hashes]
                        ax.bar(xs, [s.mean if s else 0.0 for s in bars], width,
                               yerr=[s.std or 0.0 if s else 0.0 for s in bars], capsize=3,
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
                    return png(fig)

                name = f"fig4_{ctx.slug(ds)}_ipc{ipc}_{bits}b.png"
                blocks += [Text(f"**{ctx.label(ds)}, ipc {ipc}, {bits} bits**"), table,
                           *ctx.figure(name, f"Fig. 4: hashing methods on {ctx.label(ds)} "
                                       f"ipc {ipc} {bits} bits", draw)]
    if len(blocks) == 1:
        return None
    return Section("Fig. 4: generalisation across hashing methods", blocks)
