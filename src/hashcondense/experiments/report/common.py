"""What every section shares: the document model (text, tables, images, sections), the section
registry, seed statistics, ordering and number formatting, and the figure helpers.

matplotlib is imported only inside the figure helpers, which run only when a figure is drawn.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...registry import Registry

if TYPE_CHECKING:
    from .load import Context, DatasetKey, Record

DEFAULT_METRIC = "mAP@1000"
PAPER_HASH = "dhd"  # the paper's Tables I and II judge every set with DHD
MIN_LOG_SECONDS = 1e-2  # where a zero-second condenser (random, …) sits on a log time axis


# ---------------------------------------------------------------- document model


@dataclass
class Text:
    text: str  # plain text; `backticks` become code, **stars** bold


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    row_classes: list[str] = field(default_factory=list)  # HTML styling only


@dataclass
class Image:
    """A PNG shown by the report: a figure the report draws (``draw`` set: written to ``path``)
    or a file that already exists (previews; figures a document reuses)."""

    path: Path  # where the PNG is, or is to be written; links are made relative to it
    caption: str
    draw: Callable[[], bytes] | None = None
    _data: bytes | None = field(default=None, repr=False)

    def data(self) -> bytes:
        """The PNG's bytes, drawn once (or read, for an existing file)."""
        if self._data is None:
            self._data = self.draw() if self.draw is not None else self.path.read_bytes()
        return self._data


Block = Text | Table | Image


@dataclass
class Section:
    title: str
    blocks: list[Block]


# A section builder takes the report's Context and returns its Section, or None when the
# results hold nothing for it. One builder per file under ``sections/``.
SECTIONS: Registry[Section | None] = Registry("report section")

SectionBuilder = Callable[["Context"], "Section | None"]


# ---------------------------------------------------------------- numbers


def num(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


@dataclass
class Stats:
    mean: float
    std: float | None  # sample std; None for a single seed
    n: int

    def __str__(self) -> str:
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{spread} ({self.n})"


def stats(values: Sequence[float]) -> Stats | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stats(statistics.fmean(values), std, len(values))


def group(records: Iterable[Record], key: Callable[[Record], Any]) -> dict[Any, list[float]]:
    out: dict[Any, list[float]] = defaultdict(list)
    for r in records:
        out[key(r)].append(r.value)
    return out


def fmt_diff(ours: Stats | None, paper: float | None) -> str:
    return "–" if ours is None or paper is None else f"{ours.mean - paper:+.2f}"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


# ---------------------------------------------------------------- ordering


def ordered(values: Iterable[Any], order: Sequence[Any] = ()) -> list[Any]:
    """Known labels in the paper's order first, then the rest sorted, numbers as numbers
    (ipc 2 before 10), None last."""
    present = set(values)
    head = list(dict.fromkeys(v for v in order if v in present))
    rest = sorted((v for v in present if v not in order and v is not None),
                  key=lambda v: (0, v, "") if isinstance(v, int | float) else (1, 0, str(v)))
    return head + rest + ([None] if None in present and None not in order else [])


def dataset_rank(ds: DatasetKey) -> tuple:
    from ..paper import DATASET_ORDER

    order = DATASET_ORDER.index(ds.name) if ds.name in DATASET_ORDER else len(DATASET_ORDER)
    return order, ds.name, ds.resolution or 0


def datasets(records: Iterable[Record]) -> list[DatasetKey]:
    return sorted({r.dataset for r in records}, key=dataset_rank)


def group_key_rank(key: tuple) -> tuple:
    """Order (dataset, ipc, bits, hash method) keys: paper datasets first, whole set last."""
    ds, ipc, bits, hm = key
    return dataset_rank(ds), ipc is None, ipc or 0, bits or 0, str(hm)


def relative_link(path: Path, base: Path) -> str:
    """``path`` as a link from a file in folder ``base`` (both relative to the working
    directory or absolute), with forward slashes."""
    return Path(os.path.relpath(path, base)).as_posix()


# ---------------------------------------------------------------- figures


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Any, list]:
    """A figure bound to the Agg canvas directly: no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # reproducible bytes
    return buf.getvalue()


def ipc_axis(ax: Any, ipcs: Sequence[int]) -> None:
    if len(ipcs) > 1 and max(ipcs) / max(min(ipcs), 1) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(list(ipcs))
    ax.set_xticklabels([str(i) for i in ipcs])
    ax.minorticks_off()
