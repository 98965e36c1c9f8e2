"""The synthetic image grids the runner saved under ``previews/``, linked where they are."""

from __future__ import annotations

from ..common import SECTIONS, Image, Section
from ..load import Context


@SECTIONS.register("previews")
def previews(ctx: Context) -> Section | None:
    files = sorted((ctx.results_dir / "previews").glob("*.png"))
    if not files:
        return None
    return Section("Synthetic images", [Image(f, f.name) for f in files])
