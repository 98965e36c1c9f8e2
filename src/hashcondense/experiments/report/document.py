"""Keep the generated blocks of a hand-written Markdown document (docs/results.md, say)
current with the results they show.

A block is a pair of marker lines; everything between them is generated, everything outside
them is left exactly as written::

    <!-- report: benchmarks/results/experiments/table1-cpu sections=table1,cost -->
    …generated Markdown…
    <!-- /report -->

The opening marker names a results folder — relative to ``root`` (default: the current
working directory), or absolute; quote it ("…") if it holds spaces — then optional settings:

- ``sections=a,b,…``: the sections to show, in that order (default: run.json's
  ``spec.report``, else every section with data, as the report does);
- ``level=N``: the Markdown heading level of the section titles (default 3).

A block's body is those sections' Markdown: tables and text, and images linked relative to the
document's folder — figures from the results folder (drawn there, once, only if missing) and
the preview grids. No report header (it carries the time of writing) and no totals: the same
results always give the same bytes, so a test can compare a committed document with its
regeneration. Markers inside fenced code blocks are text, not blocks.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ...records import atomic_write_bytes
from .common import SECTIONS, Image
from .load import load_context
from .render import markdown_sections
from .sections import report_sections

OPEN = re.compile(r"^\s*<!--\s*report:(?P<args>.*?)-->\s*$")
CLOSE = re.compile(r"^\s*<!--\s*/report\s*-->\s*$")
FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})")
DEFAULT_LEVEL = 3


@dataclass
class _Block:
    line: int  # 1-based line of the opening marker
    results: Path
    sections: list[str] | None
    level: int


def _parse_marker(args: str, where: str, root: Path) -> tuple[Path, list[str] | None, int]:
    try:
        tokens = shlex.split(args)
    except ValueError as e:
        raise ValueError(f"{where}: cannot read the report marker ({e})") from None
    if not tokens or "=" in tokens[0]:
        raise ValueError(f"{where}: the report marker names no results folder "
                         "(<!-- report: PATH [sections=a,b] [level=N] -->)")
    results = Path(os.path.join(root, tokens[0]))
    sections: list[str] | None = None
    level = DEFAULT_LEVEL
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if key == "sections" and eq:
            sections = [s.strip() for s in value.split(",") if s.strip()]
            if not sections:
                raise ValueError(f"{where}: sections= names no section")
            for name in sections:
                if name not in SECTIONS:
                    raise ValueError(f"{where}: unknown report section {name!r}; known "
                                     f"sections: {', '.join(SECTIONS.names())}")
            if len(set(sections)) != len(sections):
                raise ValueError(f"{where}: sections= lists a section twice")
        elif key == "level" and eq:
            if not value.isdigit() or not 1 <= int(value) <= 6:
                raise ValueError(f"{where}: level must be 1 to 6, got {value!r}")
            level = int(value)
        else:
            raise ValueError(f"{where}: unknown report marker setting {token!r} "
                             "(expected sections=a,b or level=N)")
    if not results.is_dir():
        raise ValueError(f"{where}: results folder {results} does not exist")
    return results, sections, level


def _regenerate(path: Path, root: Path | None, write_figures: bool) -> tuple[str, str, int]:
    """(current text, regenerated text, number of figures still missing)."""
    path = Path(path)
    root = Path.cwd() if root is None else Path(root)
    text = path.read_bytes().decode("utf-8")
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    block: _Block | None = None
    fence: str | None = None
    missing = 0
    for n, line in enumerate(lines, 1):
        where = f"{path}:{n}"
        if block is None:
            out.append(line)
            m = FENCE.match(line)
            if fence is not None:
                if m and m["fence"][0] == fence[0] and len(m["fence"]) >= len(fence):
                    fence = None
                continue
            if m:
                fence = m["fence"]
                continue
            if CLOSE.match(line):
                raise ValueError(f"{where}: <!-- /report --> closes no report block")
            m = OPEN.match(line)
            if m:
                block = _Block(n, *_parse_marker(m["args"], where, root))
            continue
        if OPEN.match(line):
            raise ValueError(f"{where}: a report block opens inside the one opened at line "
                             f"{block.line}")
        if not CLOSE.match(line):
            continue  # the old body: replaced below
        body, drawn_missing = _body(block, f"{path}:{block.line}", path.parent, write_figures)
        missing += drawn_missing
        newline = "\r\n" if out[-1].endswith("\r\n") else "\n"
        out.append(body.replace("\n", newline))
        out.append(line)
        block = None
    if block is not None:
        raise ValueError(f"{path}:{block.line}: report block is never closed "
                         "(no <!-- /report --> after it)")
    return text, "".join(out), missing


def _body(block: _Block, where: str, doc_dir: Path, write_figures: bool) -> tuple[str, int]:
    try:
        ctx = load_context(block.results, reuse_figures=True)
        sections = report_sections(ctx, block.sections, source=f"{block.results}/run.json")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    missing = 0
    for s in sections:
        for b in s.blocks:
            if isinstance(b, Image) and b.draw is not None:  # a figure not yet drawn
                if write_figures:
                    atomic_write_bytes(b.path, b.data())
                else:
                    missing += 1
    lines = markdown_sections(sections, doc_dir, block.level)
    return "\n" + "".join(f"{line}\n" for line in lines), missing


def update_document(path: Path, root: Path | None = None) -> str:
    """The Markdown document at ``path`` with every report block's body regenerated from its
    results folder (relative to ``root``, default the current working directory); text outside
    the blocks is returned untouched. The document itself is not written — the caller writes
    the returned text — but a figure the blocks link that is missing from its results folder
    is drawn there.

    Raises ValueError naming the file and line for a malformed block: a marker without a
    results folder, a folder that does not exist or holds no results, an unknown section or
    setting, a block that is never closed, or a close without an open.
    """
    return _regenerate(path, root, write_figures=True)[1]


def document_is_current(path: Path, root: Path | None = None) -> bool:
    """Whether the document at ``path`` already holds what :func:`update_document` would
    write, and every figure it links exists. Writes nothing."""
    text, new, missing = _regenerate(path, root, write_figures=False)
    return text == new and not missing
