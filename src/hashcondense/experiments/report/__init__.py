"""Turn an experiment's results folder into a report a reader can check against the paper:
``report.md``, a self-contained ``report.html`` (inline CSS, figures as data URIs, no scripts)
and the PNG figures beside them — and keep a hand-written document's generated blocks current
(:func:`update_document`).

Reads what the experiment runner writes: ``results.jsonl`` (one record per (cell, metric)),
``run.json`` (experiment, profile, primary metric, the grid's spec, versions, machine,
protocols), ``curves/<cell>.json`` (precision–recall over Hamming radius) and
``previews/*.png``.

The package is load → sections → render:

- ``load``: records and run.json into typed records and the :class:`~.load.Context`;
- ``sections/<name>.py``: one section builder per file, registered in :data:`SECTIONS` — Table I
  (``table1``), the ablation (``ablation``, Table II), efficiency (``efficiency``, Fig. 3),
  generalisation over hashing methods (``generalisation``, Fig. 4), classification vs
  retrieval (``classification``, Fig. 1), condensation cost (``cost``), precision–recall
  curves (``pr_curves``) and synthetic image grids (``previews``);
- ``render``: Markdown and HTML;
- ``document``: :func:`update_document` / :func:`document_is_current` for the generated blocks
  (``<!-- report: PATH sections=a,b -->`` … ``<!-- /report -->``) of a hand-written document.

Which sections a report shows: those run.json's ``spec.report`` names, in its order, when it
names any; otherwise every section that has data, in :data:`DEFAULT_ORDER`.

matplotlib is imported only when figures are drawn, and drawn through its Agg canvas without
touching pyplot's global backend; without matplotlib the report is written without figures.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...records import atomic_write_bytes, atomic_write_text
from . import render
from .common import SECTIONS, Image, Section
from .document import document_is_current, update_document
from .frame import footer, header
from .load import Context, load_context
from .sections import DEFAULT_ORDER, build_sections, report_sections, section_names

log = logging.getLogger(__name__)


def write_report(results_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the figures for one results folder.

    Returns every file written, by file name. Each file is written to a temporary name and
    renamed, so an interrupted report never leaves a half-written file. Raises ValueError when
    ``results_dir`` or its ``results.jsonl`` is missing or empty, or when run.json's
    ``spec.report`` names an unknown section.
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    ctx = load_context(results_dir, out_dir)
    body = report_sections(ctx, source=str(results_dir / "run.json"))
    title, head = header(ctx)
    all_sections = [*body, footer(ctx)]

    written: dict[str, Path] = {}
    for s in all_sections:
        for b in s.blocks:
            if isinstance(b, Image) and b.draw is not None:
                written[b.path.name] = atomic_write_bytes(b.path, b.data())
    written["report.md"] = atomic_write_text(
        out_dir / "report.md", render.markdown(title, head, all_sections, out_dir))
    written["report.html"] = atomic_write_text(
        out_dir / "report.html", render.html(title, head, all_sections, out_dir))
    log.info("wrote report for %s (%d sections, %d figures) to %s", results_dir,
             len(all_sections), len(written) - 2, out_dir)
    return written


__all__ = ["DEFAULT_ORDER", "SECTIONS", "Context", "Section", "build_sections",
           "document_is_current", "load_context", "report_sections", "section_names",
           "update_document", "write_report"]
