"""HTML pieces of graft's reports: number formatting, tables and a self-contained page.

Every report (one run, a compare, a search) is built from these, so they look alike and each is
one file that works offline: CSS inline, no script, no external link.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graft.compare.stats import Stat


def as_number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_pct(value: Any, digits: int = 2) -> str:
    """``0.9123`` -> ``"91.23%"``; ``"–"`` for a missing value."""
    number = as_number(value)
    return "–" if number is None else f"{100.0 * number:.{digits}f}%"


def format_float(value: Any, digits: int = 4) -> str:
    """A float with ``digits`` decimals; ``"–"`` for a missing value."""
    number = as_number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def format_int(value: Any) -> str:
    """An integer with thousands separators; ``"–"`` for a missing value."""
    number = as_number(value)
    return "–" if number is None or not math.isfinite(number) else f"{round(number):,}"


def format_duration(seconds: Any) -> str:
    """``4321.5`` -> ``"1h 12m 02s"``; short durations as ``"12.3 s"``."""
    number = as_number(seconds)
    if number is None or not math.isfinite(number):
        return "–"
    if number < 60:
        return f"{number:.1f} s"
    total = round(number)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def scalar_text(value: Any) -> str:
    """A config/plan value as short text: scalars as is, containers as compact JSON."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------


class Markup(str):
    """A string that is already HTML: :func:`html_table` inserts it without escaping."""

    __slots__ = ()


def _cell(value: Any) -> tuple[str, bool]:
    """The escaped HTML of a table cell, and whether it is numeric (right-aligned)."""
    if isinstance(value, Markup):
        return str(value), False
    if value is None:
        return "–", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, int):
        return f"{value:,}", True
    if isinstance(value, float):
        return f"{value:.4f}", True
    return html.escape(str(value)), False


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Iterable[int] = (),
    css_class: str | None = None,
    table_id: str | None = None,
    row_classes: Sequence[str | None] | None = None,
) -> str:
    """An HTML ``<table>``; every string is escaped, except :class:`Markup` cells and headers.

    ``int`` and ``float`` cells are formatted and right-aligned; the columns listed in ``numeric``
    (indexes) are right-aligned whatever their cells are (e.g. pre-formatted ``"91.2%"``), and so
    are their headers. ``table_id`` sets the table's ``id``; ``row_classes`` a CSS class per body
    row (``None``: none).
    """
    numeric_cols = set(numeric)
    classes = "" if css_class is None else f' class="{html.escape(css_class)}"'
    if table_id is not None:
        classes += f' id="{html.escape(table_id)}"'
    num = ' class="num"'
    head = "".join(
        f"<th{num if i in numeric_cols else ''}>{_cell(h)[0]}</th>" for i, h in enumerate(headers)
    )
    body = []
    for number, row in enumerate(rows):
        row_class = row_classes[number] if row_classes is not None else None
        cells = []
        for i, value in enumerate(row):
            text, is_number = _cell(value)
            cls = ' class="num"' if is_number or i in numeric_cols else ""
            cells.append(f"<td{cls}>{text}</td>")
        tr = "<tr>" if row_class is None else f'<tr class="{html.escape(row_class)}">'
        body.append(tr + "".join(cells) + "</tr>")
    return f"<table{classes}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_value_table(items: Iterable[tuple[str, Any]], *, numeric: bool = True) -> str:
    """A two-column (name, value) table, no header row; values right-aligned if ``numeric``."""
    rows = []
    for key, value in items:
        text, _ = _cell(value)
        cls = ' class="num"' if numeric else ""
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td{cls}>{text}</td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-alt: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--fg); margin: 0; padding: 0 1.5rem 3rem; line-height: 1.45; font-size: 15px; }
main { max-width: 1100px; margin: 0 auto; }
header { border-bottom: 2px solid var(--line); padding: 1.5rem 0 0.75rem; margin-bottom: 1rem; }
header h1 { margin: 0 0 0.25rem; font-size: 1.6rem; word-break: break-all; }
header .meta { color: var(--muted); }
header .meta span + span::before { content: " · "; }
section { margin: 1.75rem 0; }
h2 { font-size: 1.2rem; border-bottom: 1px solid var(--line); padding-bottom: 0.3rem; }
h3 { font-size: 1rem; margin: 1rem 0 0.4rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.92rem; }
th, td { border: 1px solid var(--line); padding: 0.3rem 0.65rem; text-align: left;
         vertical-align: top; }
thead th { background: var(--bg-alt); }
tbody tr:nth-child(even) td { background: #fbfcfd; }
table.kv th { background: var(--bg-alt); font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { color: var(--muted); font-style: italic; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
pre { background: var(--bg-alt); border: 1px solid var(--line); padding: 0.75rem 1rem;
      overflow-x: auto; font-size: 0.85rem; line-height: 1.35; }
footer { color: var(--muted); font-size: 0.85rem; border-top: 1px solid var(--line);
         margin-top: 2rem; padding-top: 0.5rem; }
"""


def page(
    title: str,
    sections: Sequence[tuple[str, str]],
    *,
    header_html: str = "",
    footer_text: str = "",
    extra_css: str = "",
) -> str:
    """A complete, self-contained HTML document.

    ``sections`` are ``(heading, body_html)`` pairs; the heading is escaped, the body is inserted
    as is (build it with :func:`html_table`, :func:`figure_to_img_tag`, ...). ``header_html`` is
    inserted as is at the top (default: ``<h1>`` with the escaped title); ``footer_text`` is
    escaped. ``extra_css`` is appended to the built-in style sheet.
    """
    header = header_html or f"<header><h1>{html.escape(title)}</h1></header>"
    body = "\n".join(
        f'<section id="{_slug(heading)}">\n<h2>{html.escape(heading)}</h2>\n{content}\n</section>'
        for heading, content in sections
    )
    footer = f"<footer>{html.escape(footer_text)}</footer>" if footer_text else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}{extra_css}</style>\n</head>\n"
        f"<body>\n<main>\n{header}\n{body}\n{footer}\n</main>\n</body>\n</html>\n"
    )


def _slug(text: str) -> str:
    slug = "".join(c.lower() if c.isalnum() else "-" for c in text).strip("-")
    return html.escape(slug or "section")


def pm(stat: Stat, share: bool = True) -> Markup:
    """``91.23 ± 0.41`` (a share, in percent; else ``1.2345 ± 0.0123``) with the 95% interval
    below, or the single value."""
    if math.isnan(stat.mean):
        return Markup("–")
    scale, digits = (100.0, 2) if share else (1.0, 4)
    text = f"{scale * stat.mean:.{digits}f}"
    if not math.isnan(stat.std):
        text += f" ± {scale * stat.std:.{digits}f}"
        low, high = scale * stat.low, scale * stat.high
        text += f'<br><span class="ci">[{low:.{digits}f}, {high:.{digits}f}]</span>'
    return Markup(text)
