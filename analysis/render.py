"""Report blocks -> Markdown and one self-contained HTML page.

A report is a list of blocks, each a (kind, payload) pair, rendered twice so report.md
and report.html never say different things:

    ("h1" | "h2" | "p", text)   ("ul", [text, ...])   ("table", DataFrame of strings)
    ("img", (caption, png path))

The HTML embeds every PNG as a base64 data URI and its CSS inline: one file that opens
anywhere (mail attachment, artifact viewer) with no external request and no JavaScript.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path

import pandas as pd

Block = tuple[str, object]
MISSING = "–"
LONG = 32  # characters from which a table cell may wrap

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 96rem;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left;
         white-space: nowrap; }
td.long { white-space: normal; overflow-wrap: anywhere; min-width: 16rem; }
.scroll { overflow-x: auto; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
td code { font-size: 0.8rem; }
figure { margin: 1rem 0 2rem; }
img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9rem; }
""".strip()


# --- cell formats: value -> text shown; None/NaN show as MISSING ---
def _cell(fmt: Callable[[object], str], value: object) -> str:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return MISSING
    try:
        return fmt(value)
    except (TypeError, ValueError):  # text where a number was expected: show it as is
        return str(value)


FORMATS: dict[str, Callable[[object], str]] = {
    "score": lambda v: f"{v:.3f}",
    "delta": lambda v: f"{v:+.3f}",
    "general": lambda v: f"{v:.3g}",
    "dollars": lambda v: f"${v:.3g}",
    "integer": lambda v: f"{v:,.0f}",
    "percent": lambda v: f"{100 * v:.2f}%",
    "hash": lambda v: str(v)[:12],
    "text": str,
}


def display(frame: pd.DataFrame, columns: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """Selects `columns` ({column: (header, FORMATS key)}), formats every cell as text."""
    shown = {}
    for column, (header, fmt) in columns.items():
        values = frame[column] if column in frame else pd.Series(None, index=frame.index)
        shown[header] = [_cell(FORMATS[fmt], v) for v in values]
    return pd.DataFrame(shown, columns=[h for h, _ in columns.values()])


# --- Markdown ---
def _md_cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured table (no tabulate dependency for one small function)."""
    if frame.empty:
        return "_(none)_"
    lines = ["| " + " | ".join(_md_cell(c) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + str(payload))
        elif kind == "p":
            out.append(str(payload))
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in payload) or "_(none)_")
        elif kind == "table":
            out.append(markdown_table(payload))
        elif kind == "img":
            caption, path = payload
            out.append(f"![{caption}]({Path(path).name})")
    return "\n\n".join(out) + "\n"


# --- HTML ---
def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _html_block(kind: str, payload: object) -> str:
    if kind in ("h1", "h2", "p"):
        return f"<{kind}>{html.escape(str(payload))}</{kind}>"
    if kind == "ul":
        items = "".join(f"<li>{html.escape(str(i))}</li>" for i in payload)
        return f"<ul>{items}</ul>" if items else "<p><em>(none)</em></p>"
    if kind == "table":
        return html_table(payload)
    if kind == "img":
        caption, path = payload
        return (f'<figure><img src="{_data_uri(path)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    raise ValueError(f"unknown report block kind {kind!r}")


def html_table(frame: pd.DataFrame) -> str:
    """Short cells never wrap (a number split over two lines misreads); long ones (hashes,
    folders, commands) wrap anywhere so the table fits the page."""
    if frame.empty:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(f'<td{" class=long" if len(str(v)) > LONG else ""}>'
                        f"{html.escape(str(v))}</td>" for v in row)
        rows.append(f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table></div>")


def to_html(blocks: list[Block], title: str) -> str:
    body = "\n".join(_html_block(kind, payload) for kind, payload in blocks)
    # The empty data: icon stops the browser from requesting /favicon.ico (a console error
    # on file:// pages).
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<link rel="icon" href="data:,">\n<title>{html.escape(title)}</title>\n'
            f"<style>\n{CSS}\n</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
