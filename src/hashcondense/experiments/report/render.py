"""Render a report's blocks as Markdown and as a self-contained HTML page (inline CSS, figures
as data URIs, no scripts).

Images are linked relative to ``base``, the folder of the file being written: the report's
folder, or a document's folder for a document's generated blocks.
"""

from __future__ import annotations

import base64
import html as _html
import re
from collections.abc import Sequence
from pathlib import Path

from .common import Block, Image, Section, Table, Text, relative_link


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_blocks(blocks: Sequence[Block], base: Path) -> list[str]:
    """The Markdown lines of ``blocks``, each block followed by a blank line."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Text):
            out.extend([b.text, ""])
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append("|" + "---|" * len(b.headers))
            out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows)
            out.append("")
        else:
            out.extend([f"![{b.caption}]({relative_link(b.path, base)})", "",
                        f"*{b.caption}*", ""])
    return out


def markdown_sections(sections: Sequence[Section], base: Path, level: int = 2) -> list[str]:
    """Each section as a heading of ``level`` and its blocks."""
    out: list[str] = []
    for s in sections:
        out.extend([f"{'#' * level} {s.title}", ""])
        out.extend(markdown_blocks(s.blocks, base))
    return out


def markdown(title: str, head: Sequence[Block], sections: Sequence[Section],
             base: Path) -> str:
    """The report in Markdown: the title, the header blocks, then the sections."""
    out = [f"# {title}", "", *markdown_blocks(head, base), *markdown_sections(sections, base)]
    return "\n".join(out).rstrip() + "\n"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
tr.paper td{color:#555;background:#fafafa}tr.diff td{color:#555;font-style:italic}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
figure{display:inline-block;margin:.5em 1em 1em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
"""


def _inline(text: str) -> str:
    """Escape, then the two bits of markup the report's texts use: `code` and **bold**."""
    text = _html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _image_src(b: Image, base: Path) -> str:
    # figures inline (the page stands alone); preview grids — photos, hundreds of kB each —
    # by their path next to the page, so they are stored once
    if b.draw is not None:
        return f"data:image/png;base64,{base64.b64encode(b.data()).decode('ascii')}"
    return _html.escape(relative_link(b.path, base))


def html(title: str, head: Sequence[Block], sections: Sequence[Section], base: Path) -> str:
    """The report as one HTML page."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{_html.escape(title)}</h1>"]

    def blocks(items: Sequence[Block]) -> None:
        for b in items:
            if isinstance(b, Text):
                out.append(f"<p>{_inline(b.text)}</p>")
            elif isinstance(b, Table):
                out.append("<table><thead><tr>"
                           + "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
                           + "</tr></thead><tbody>")
                for i, row in enumerate(b.rows):
                    cls = b.row_classes[i] if i < len(b.row_classes) else ""
                    attr = f' class="{_html.escape(cls)}"' if cls else ""
                    out.append(f"<tr{attr}>" + "".join(f"<td>{_inline(c)}</td>" for c in row)
                               + "</tr>")
                out.append("</tbody></table>")
            else:
                out.append(f'<figure><img alt="{_html.escape(b.caption)}" '
                           f'src="{_image_src(b, base)}">'
                           f"<figcaption>{_html.escape(b.caption)}</figcaption></figure>")

    blocks(head)
    for s in sections:
        out.append(f"<h2>{_html.escape(s.title)}</h2>")
        blocks(s.blocks)
    out.append("</body></html>")
    return "\n".join(out) + "\n"
