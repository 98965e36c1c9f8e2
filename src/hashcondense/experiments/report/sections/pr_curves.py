"""Precision–recall curves over Hamming radius of each condenser's final set."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

from ..common import SECTIONS, Block, Section, Text, group_key_rank, new_figure, num, ordered, png
from ..load import Context

log = logging.getLogger(__name__)


def read_curve(path: Path) -> tuple[list[float], list[float]] | None:
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
    pairs = [(num(r, math.nan), num(p, math.nan)) for r, p in zip(recall, precision, strict=True)]
    # An undefined precision, or (0, 0) where no query retrieved anything, is no point.
    pairs = [(r, p) for r, p in pairs if math.isfinite(r) and math.isfinite(p)
             and (r, p) != (0.0, 0.0)]
    if not pairs:
        return None
    return [r for r, _ in pairs], [p for _, p in pairs]


@SECTIONS.register("pr_curves")
def pr_curves(ctx: Context) -> Section | None:
    files = sorted((ctx.results_dir / "curves").glob("*.json"))
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
    blocks: list[Block] = []
    for key in sorted(groups, key=group_key_rank):
        ds, ipc, bits, hm = key
        curves = {c: read_curve(groups[key][c][1]) for c in
                  ordered(groups[key], ctx.condensers)}
        curves = {c: v for c, v in curves.items() if v is not None}
        if not curves:
            continue
        seeds = {c: groups[key][c][0] for c in curves}
        ipc_label = "whole" if ipc is None else f"ipc{ipc}"

        def draw(ds=ds, ipc_label=ipc_label, bits=bits, hm=hm, curves=curves,
                 seeds=seeds) -> bytes:
            fig, (ax,) = new_figure(width=5.0)
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
            return png(fig)

        name = f"pr_{ctx.slug(ds)}_{ipc_label}_{bits}b_{hm}.png"
        blocks += ctx.figure(name, f"Precision–recall over Hamming radius: {ctx.label(ds)} "
                             f"{ipc_label} {bits} bits {hm}", draw)
    if not blocks:
        return None
    return Section("Precision–recall curves", [Text(
        "Precision against recall as the Hamming radius grows from 0 to the code length, for "
        "the final set of each condenser's lowest seed; radii that retrieve nothing are left "
        "out."), *blocks])
