"""The report's frame around its sections: a header (experiment, machine, versions,
protocols) and the totals at the end. Not sections: they come with every report, and the
header carries the time of writing, which a document's generated blocks must not."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import Any

from .common import Block, Section, Table, Text, fmt_seconds
from .load import Context


def _kv(d: Any) -> str:
    if isinstance(d, dict):
        return ", ".join(f"{k} {_kv(v)}" for k, v in d.items())
    if isinstance(d, list | tuple):
        return ", ".join(map(_kv, d))
    return str(d)


def header(ctx: Context) -> tuple[str, list[Block]]:
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
    blocks: list[Block] = [meta]
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


def footer(ctx: Context) -> Section:
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
        ["condense time", f"{fmt_seconds(sum(condense.values()))} "
                          f"({sum(condense.values()):.1f} s)"],
        ["train time", f"{fmt_seconds(train)} ({train:.1f} s)"],
        ["encode time", f"{fmt_seconds(encode)} ({encode:.1f} s)"],
    ])])
