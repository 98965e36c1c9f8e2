"""Table I: retrieval mAP of each condenser's final sets beside the paper's values."""

from __future__ import annotations

from ...paper import paper_value
from ..common import (
    PAPER_HASH,
    SECTIONS,
    Block,
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


@SECTIONS.register("table1")
def table1(ctx: Context) -> Section | None:
    # IEM with an augmentation switched off belongs to the ablation (Table II), not here.
    rows = [r for r in ctx.final_retrieval() if not ctx.ablation_variant(r.condenser)]
    hm = ctx.paper_hash(rows)
    rows = [r for r in rows if r.hash_method == hm]
    if not rows:
        return None
    # the paper's numbers are on its test queries: a validation protocol is not comparable
    validation = any(r.protocol != "test" for r in rows)
    compare = hm == PAPER_HASH and not validation
    blocks: list[Block] = [Text(
        f"{ctx.metric_names(rows)} (%) of `{hm}` trained on each final set: "
        "mean ± sample std (seeds)"
        + ("; below each, the paper's Table I value and our difference (ours − paper)."
           if compare else "; judged on the validation protocol (queries carved from the "
           "database), so no paper values are shown." if validation else
           "; the paper's Table I uses DHD, so no paper values are shown.")
        + " Herding has no Table I column in the paper.")]
    groups = group(rows, lambda r: (r.dataset, r.condenser, r.ipc, r.bits))
    for ds in datasets(rows):
        mine = [r for r in rows if r.dataset == ds]
        ipcs = ordered(r.ipc for r in mine if r.ipc is not None) or [None]
        columns = [(ipc, b) for ipc in ipcs for b in ordered(r.bits for r in mine)]
        table = Table(["condenser", ""] + [
            ("whole set" if ipc is None else f"ipc {ipc}") + f" · {b} bits"
            for ipc, b in columns], [])
        conds = ordered((r.condenser for r in mine), ctx.condensers)
        # The paper's column is the condenser's kind (its method), whatever the grid named it.
        paper = {c: [paper_value("table1", ds.name, ctx.kind(c), ipc, b) for ipc, b in columns]
                 for c in conds}
        # Paper rows only where the paper has this dataset (not digits, say).
        with_paper = compare and any(p is not None for v in paper.values() for p in v)
        for cond in conds:
            # The whole set has no ipc: its numbers stand in every ipc column, as in the paper.
            ours = [stats(groups.get((ds, cond, None if cond in ctx.whole_sets else ipc, b), []))
                    for ipc, b in columns]
            table.rows.append([cond, "ours"] + [str(s) if s else "–" for s in ours])
            table.row_classes.append("ours")
            if with_paper:
                table.rows.append(["", "paper"] + [
                    "–" if p is None else f"{p:.2f}" for p in paper[cond]])
                table.rows.append(["", "Δ"] + [
                    fmt_diff(s, p) for s, p in zip(ours, paper[cond], strict=True)])
                table.row_classes += ["paper", "diff"]
        blocks += [Text(f"**{ctx.label(ds)}** · {ctx.metric_of(ds)}"), table]
    return Section("Table I: retrieval with condensed sets", blocks)
