"""A self-contained HTML report: tables and figures in one file, images inlined as base64.

One file so it can be mailed, attached to an issue or opened from a cluster's scratch disk
without the PNGs beside it; no scripts, fonts or styles from the network, so it renders the
same offline (the test opens it in headless Chromium).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rwku.reporting.aggregate import Row, Stat, cell_text, used_columns

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.8em 0; }
th, td { border: 1px solid #bbb; padding: 2px 5px; text-align: right; white-space: nowrap; }
th.wrap { white-space: normal; min-width: 4.5em; }
span.ci { display: block; font-size: 0.8em; color: #777; } span.n { color: #a33; }
ul.reading { font-size: 0.95em; } ul.reading li { margin: 0.15em 0; }
th { background: #eef1f5; } td:first-child, th:first-child { text-align: left; }
tr.before td { background: #f7f7f2; font-style: italic; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
div.scroll { overflow-x: auto; } p.note { color: #666; font-size: 0.9em; } code { background: #f3f3f3; padding: 0 3px; }
"""


@dataclass
class Figure:
    """A figure slot: a PNG, or the reason there is none (shown instead of an empty plot)."""

    title: str
    path: Path | None
    note: str = ""


@dataclass
class Section:
    title: str
    rows: Sequence[Row] = ()
    columns: Sequence[str] = ()
    first: str = "Method"
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: one line each, as a list (the per-method reading)
    lines: list[str] = field(default_factory=list)
    #: values are changes: print their sign
    signed: bool = False

    def empty(self) -> bool:
        return not (self.rows or self.figures or self.notes or self.lines)


def cell_html(stat: Stat, row_n: int, signed: bool = False) -> str:
    """The mean, its interval in small type below it (so 17 columns fit a 1,300 px window),
    and the value's n where it is over fewer targets than its row."""
    if stat.mean is None:
        return "-"
    text = html.escape(cell_text(Stat(stat.mean, None, stat.n), signed=signed))
    if stat.ci is not None:
        text += f'<span class="ci">± {stat.ci:.1f}</span>'
    if stat.n != row_n:
        text += f'<span class="ci n">n={stat.n}</span>'
    return text


def table_html(
    rows: Sequence[Row], columns: Sequence[str], first: str = "Method", signed: bool = False
) -> str:
    cols = used_columns(rows, columns)
    # long headers (attack types) wrap at their spaces, so nine of them fit the window
    wrap = ' class="wrap"'
    head = "".join(f"<th{wrap if ' ' in c else ''}>{html.escape(c)}</th>" for c in [first, "n", *cols])
    body = []
    for r in rows:
        cls = ' class="before"' if r.key is None else ""
        cells = "".join(f"<td>{cell_html(r.values[c], r.n, signed)}</td>" for c in cols)
        body.append(f"<tr{cls}><td>{html.escape(r.label)}</td><td>{r.n}</td>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def image_html(fig: Figure) -> str:
    if fig.path is None:
        return (
            f'<p class="note">{html.escape(fig.title)}: {html.escape(fig.note or "no data in this run")}</p>'
        )
    data = base64.b64encode(Path(fig.path).read_bytes()).decode("ascii")
    alt = html.escape(fig.title)
    return f'<h3>{alt}</h3><img alt="{alt}" src="data:image/png;base64,{data}">'


def render(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f'<p class="note">{html.escape(line)}</p>' for line in intro),
    ]
    for s in sections:
        if s.empty():  # show only what the run contains
            continue
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in s.notes]
        if s.lines:
            parts.append(
                '<ul class="reading">' + "".join(f"<li>{html.escape(x)}</li>" for x in s.lines) + "</ul>"
            )
        if s.rows:
            parts.append(table_html(s.rows, s.columns, s.first, s.signed))
        parts += [image_html(f) for f in s.figures]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
