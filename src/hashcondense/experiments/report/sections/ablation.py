"""Table II: IEM with network augmentation (NA) and dataset augmentation (DA) switched on and
off. A variant is recognised by its options in run.json's spec (``network_aug`` and
``dataset_aug``, both on by default), never by its label."""

from __future__ import annotations

from ...paper import ABLATION_ORDER, paper_value
from ..common import (
    PAPER_HASH,
    SECTIONS,
    Section,
    Table,
    Text,
    datasets,
    fmt_diff,
    group,
    ordered,
    stats,
)
from ..load import Context


@SECTIONS.register("ablation")
def ablation(ctx: Context) -> Section | None:
    rows = [r for r in ctx.final_retrieval() if ctx.switches(r.condenser) is not None]
    if not any(ctx.ablation_variant(r.condenser) for r in rows):
        return None
    hm = ctx.paper_hash(r for r in rows if ctx.ablation_variant(r.condenser))
    rows = [r for r in rows if r.hash_method == hm]
    compare = hm == PAPER_HASH and all(r.protocol == "test" for r in rows)  # paper: test
    groups = group(rows, lambda r: (r.dataset, r.ipc, r.bits, r.condenser))
    # The paper's row order — neither, NA only, DA only, both — then labels of one kind by name.
    conds = sorted({r.condenser for r in rows},
                   key=lambda c: (ABLATION_ORDER.index(ctx.kind(c)), c))
    table = Table(["dataset", "ipc", "bits", "NA", "DA", "condenser",
                   f"{ctx.metric_names(rows)} (%)",
                   "paper", "Δ"], [])
    for ds in datasets(rows):
        mine = [r for r in rows if r.dataset == ds]
        for ipc in ordered(r.ipc for r in mine):
            for bits in ordered(r.bits for r in mine if r.ipc == ipc):
                for cond in conds:
                    ours = stats(groups.get((ds, ipc, bits, cond), []))
                    if ours is None:
                        continue
                    na, da = ctx.switches(cond)
                    # paper.py keys Table II by the kind: iem-none, iem-na, iem-da, iem.
                    paper = (paper_value("table2", ds.name, ctx.kind(cond), ipc)
                             if compare else None)
                    table.rows.append([
                        ctx.label(ds), str(ipc), str(bits), "✓" if na else "✗",
                        "✓" if da else "✗", cond, str(ours),
                        "–" if paper is None else f"{paper:.2f}", fmt_diff(ours, paper)])
    return Section("Table II: ablation of network (NA) and dataset (DA) augmentation", [
        Text(f"`{hm}`, final sets, mean ± sample std (seeds). The paper's Table II reports "
             "CIFAR10 at ipc 50 and ImageNet10 at ipc 3 without stating the bit length, so its "
             "value is shown beside every bit length."), table])
