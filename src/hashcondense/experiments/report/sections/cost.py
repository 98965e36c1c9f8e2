"""What each final set cost to condense: iterations run and wall time, per seed."""

from __future__ import annotations

from ..common import SECTIONS, Section, Table, Text, dataset_rank
from ..load import Context, Record


@SECTIONS.register("cost")
def cost(ctx: Context) -> Section | None:
    """Budgets differ by profile and wall-clock budgets end at machine-dependent iterations,
    so every table of the report is read with this one."""
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
    for (ds, cond, ipc), rs in sorted(groups.items(), key=lambda kv: (
            dataset_rank(kv[0][0]), ctx.condensers.index(kv[0][1]), kv[0][2] or 0)):
        its = sorted({r.iterations for r in rs if r.iterations is not None})
        table.rows.append([ctx.label(ds), cond, str(ipc), str(len(rs)),
                           ", ".join(map(str, its)) or "–",
                           ", ".join(f"{r.condense_seconds:.0f}" for r in rs)])
    return Section("Condensation cost of each set", [Text(
        "Iterations each condensation ran and its wall time (setup and compilation included), "
        "per seed. Coresets (random, herding) have no iterations."), table])
