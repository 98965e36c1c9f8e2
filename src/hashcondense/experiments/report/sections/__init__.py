"""The report's sections, one builder per file, each registered in ``SECTIONS`` under its name
(``@SECTIONS.register("<name>")``): a builder takes the Context and returns its Section, or
None when the results hold nothing for it. A new section is a new file here and one import
line below (and a place in DEFAULT_ORDER, or it comes after those, by name)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..common import SECTIONS, Section
from ..load import Context
from . import (  # noqa: F401  (imported to register)
    ablation,
    classification,
    cost,
    efficiency,
    generalisation,
    pr_curves,
    previews,
    table1,
)

log = logging.getLogger(__name__)

# Today's order of the sections, for reports whose run.json names none.
DEFAULT_ORDER: tuple[str, ...] = ("table1", "ablation", "efficiency", "generalisation",
                                  "classification", "cost", "pr_curves", "previews")


def section_names(run: Mapping[str, Any], requested: Sequence[str] | None = None, *,
                  source: str = "run.json") -> list[str]:
    """The sections to build, in order: ``requested`` if given, else run.json's
    ``spec.report``; when that is absent or empty, every registered section (today's order,
    then any others by name), each shown only if it has data.

    Raises ValueError (prefixed by ``source``) for an unknown or repeated name, naming the
    known sections.
    """
    if requested is None:
        spec = run.get("spec")
        requested = spec.get("report") if isinstance(spec, Mapping) else None
    if not requested:
        return [*(n for n in DEFAULT_ORDER if n in SECTIONS),
                *(n for n in SECTIONS.names() if n not in DEFAULT_ORDER)]
    if isinstance(requested, str) or not isinstance(requested, Sequence):
        raise ValueError(f"{source}: report sections must be a list of names, got "
                         f"{requested!r}")
    known = ", ".join(SECTIONS.names())
    seen: set[str] = set()
    for name in requested:
        if name not in SECTIONS:
            raise ValueError(f"{source}: unknown report section {name!r}; "
                             f"known sections: {known}")
        if name in seen:
            raise ValueError(f"{source}: report section {name!r} is listed twice")
        seen.add(name)
    return list(requested)


def build_sections(ctx: Context, names: Sequence[str], *, explicit: bool = False
                   ) -> list[Section]:
    """The named sections that have data, in order. A section asked for by name (``explicit``)
    that has no data is left out with a warning."""
    out = []
    for name in names:
        section = SECTIONS.get(name)(ctx)
        if section is not None:
            out.append(section)
        elif explicit:
            log.warning("%s: no data for report section %r; left out", ctx.results_dir, name)
    return out


def report_sections(ctx: Context, requested: Sequence[str] | None = None, *,
                    source: str = "run.json") -> list[Section]:
    """The sections of one report: ``requested``, else run.json's ``spec.report``, else every
    section with data."""
    names = section_names(ctx.run, requested, source=source)
    spec = ctx.run.get("spec")
    explicit = bool(requested) or bool(isinstance(spec, Mapping) and spec.get("report"))
    return build_sections(ctx, names, explicit=explicit)
