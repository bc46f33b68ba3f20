"""A self-contained HTML report of one ``graft fit`` run.

:func:`write_run_report` reads a run directory (``config.yaml``, ``metrics.jsonl``,
``results.json``) and writes ``report.html`` next to them: one file that works offline, with the
figures embedded as base64 PNGs and the CSS inline.

The pieces are small functions so that a multi-run comparison report can reuse them:
:func:`load_run` (read a run directory), :func:`curves_figure` and :func:`confusion_figure`
(matplotlib figures), :func:`_figure_to_img_tag` (figure -> ``<img>``), :func:`html_table` and
:func:`page` (HTML). matplotlib is imported lazily and drawn through its Agg canvas directly, so
importing this module is cheap and no global matplotlib backend is touched.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.atomic import atomic_write_text
from graft.errors import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"

_NOT_A_RUN_HINT = (
    "is this a graft run directory? `graft fit` writes config.yaml, metrics.jsonl and "
    "results.json into each run directory"
)


# --------------------------------------------------------------------------------------------
# Reading a run directory
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """The contents of one run directory, as read by :func:`load_run`."""

    run_dir: Path
    config_text: str
    history: list[dict[str, Any]]
    results: dict[str, Any]

    @property
    def name(self) -> str:
        """The run name from ``results.json``, else the directory name."""
        return str(self.results.get("run") or self.run_dir.name)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found", hint=_NOT_A_RUN_HINT)


def read_history(path: Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl``: one JSON object per line (blank lines are skipped).

    Raises:
        DataError: the file is missing or unreadable, or a line is not a JSON object (the message
            names the line number).
    """
    _require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    history: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {number} is not valid JSON ({exc.msg})",
                hint="the file may be truncated or edited by hand; fix or delete that line",
            ) from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is not a JSON object")
        history.append(record)
    return history


def read_results(path: Path) -> dict[str, Any]:
    """Read ``results.json`` (a JSON object).

    Raises:
        DataError: the file is missing, unreadable, not JSON or not a JSON object.
    """
    _require_file(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})",
            hint="the run may not have finished; rerun it or restore the file",
        ) from exc
    if not isinstance(results, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(results).__name__}")
    return results


def load_run(run_dir: Path) -> RunData:
    """Read the config text, the per-epoch history and the results of a run directory.

    Raises:
        DataError: the directory or one of its files is missing or malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a directory", hint=_NOT_A_RUN_HINT)
    config_path = run_dir / CONFIG_FILE
    _require_file(config_path)
    try:
        config_text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{config_path}: cannot read: {exc}") from exc
    results = read_results(run_dir / RESULTS_FILE)
    history = read_history(run_dir / HISTORY_FILE)
    return RunData(run_dir=run_dir, config_text=config_text, history=history, results=results)


# --------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_pct(value: Any, digits: int = 2) -> str:
    """``0.9123`` -> ``"91.23%"``; ``"–"`` for a missing value."""
    number = _number(value)
    return "–" if number is None else f"{100.0 * number:.{digits}f}%"


def format_float(value: Any, digits: int = 4) -> str:
    """A float with ``digits`` decimals; ``"–"`` for a missing value."""
    number = _number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def format_int(value: Any) -> str:
    """An integer with thousands separators; ``"–"`` for a missing value."""
    number = _number(value)
    return "–" if number is None or not math.isfinite(number) else f"{round(number):,}"


def format_duration(seconds: Any) -> str:
    """``4321.5`` -> ``"1h 12m 02s"``; short durations as ``"12.3 s"``."""
    number = _number(seconds)
    if number is None or not math.isfinite(number):
        return "–"
    if number < 60:
        return f"{number:.1f} s"
    total = round(number)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _scalar_text(value: Any) -> str:
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
    as is (build it with :func:`html_table`, :func:`_figure_to_img_tag`, ...). ``header_html`` is
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


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure attached to an Agg canvas, outside pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plain(text: str) -> str:
    """Text for matplotlib with ``$`` escaped, so class names are never parsed as mathtext."""
    return str(text).replace("$", r"\$")


def _figure_to_img_tag(fig: Figure, alt: str = "figure") -> str:
    """Render ``fig`` to PNG and return an ``<img>`` tag with the PNG embedded as base64."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pad_inches=0.1)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _series(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """The values of ``key`` per epoch, NaN where missing (matplotlib leaves a gap)."""
    out = []
    for record in history:
        number = _number(record.get(key))
        out.append(math.nan if number is None else number)
    return out


def _epoch_axis(history: Sequence[Mapping[str, Any]]) -> tuple[list[float], bool]:
    """The x values of the curves, and whether they are the runs' own ``epoch`` numbers.

    The ``epoch`` values are used when all present and strictly increasing; otherwise (old runs,
    epochs counted per phase) the records are numbered 1, 2, ..., N.
    """
    epochs = [_number(r.get("epoch")) for r in history]
    values = [e for e in epochs if e is not None]
    if len(values) == len(epochs) and all(b > a for a, b in itertools.pairwise(values)):
        return values, True
    return [float(i) for i in range(1, len(history) + 1)], False


def _phase_segments(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, str]]:
    """``(first, last, name)`` index ranges of consecutive epochs of the same phase."""
    segments: list[tuple[int, int, str]] = []
    previous: tuple[Any, Any] | None = None
    for i, record in enumerate(history):
        key = (record.get("phase_index"), record.get("phase"))
        if key == (None, None):
            key = previous if previous is not None else key
        if segments and key == previous:
            first, _, name = segments[-1]
            segments[-1] = (first, i, name)
        else:
            phase, index = record.get("phase"), record.get("phase_index")
            name = (
                str(phase) if phase is not None else (f"phase {index}" if index is not None else "")
            )
            segments.append((i, i, name))
        previous = key
    return segments


def curves_figure(history: Sequence[Mapping[str, Any]], *, best_epoch: int | None = None) -> Figure:
    """Loss and accuracy per epoch (train and validation), phase boundaries marked.

    Missing keys leave gaps; the validation macro-F1 is drawn on the accuracy panel when present.
    Phase boundaries are dashed vertical lines with the phase names on top; ``best_epoch`` (an
    ``epoch`` value of the history) is marked with a dotted line when it can be placed.
    """
    fig = _new_figure(10.0, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    xs, from_epochs = _epoch_axis(history)
    curves = [
        (loss_ax, "train_loss", "train", "C0", "-"),
        (loss_ax, "val_loss", "validation", "C1", "-"),
        (acc_ax, "train_accuracy", "train", "C0", "-"),
        (acc_ax, "val_accuracy", "validation", "C1", "-"),
        (acc_ax, "val_macro_f1", "validation macro-F1", "C2", "--"),
    ]
    marker = "o" if len(xs) <= 30 else None
    for ax, key, label, color, style in curves:
        ys = _series(history, key)
        if any(not math.isnan(y) for y in ys):
            ax.plot(xs, ys, style, color=color, label=label, marker=marker, markersize=3.5)
    loss_ax.set_title("Loss")
    acc_ax.set_title("Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        if xs and all(x.is_integer() for x in xs) and len(xs) <= 30:
            ax.set_xticks(xs)

    segments = _phase_segments(history)
    if xs and (len(segments) > 1 or (segments and segments[0][2])):
        for number, (first, last, name) in enumerate(segments):
            if number > 0:
                boundary = (xs[first - 1] + xs[first]) / 2.0
                for ax in (loss_ax, acc_ax):
                    ax.axvline(boundary, color="0.45", linestyle="--", linewidth=1.0)
            if not name:
                continue
            middle = (xs[first] + xs[last]) / 2.0
            for ax in (loss_ax, acc_ax):
                ax.annotate(
                    _plain(name),
                    xy=(middle, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, -3),
                    textcoords="offset points",
                    ha="center",
                    va="top",
                    fontsize=8,
                    color="0.3",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"},
                )
    if best_epoch is not None and from_epochs and float(best_epoch) in xs:
        for ax in (loss_ax, acc_ax):
            ax.axvline(float(best_epoch), color="C3", linestyle=":", linewidth=1.2)
    if not history:
        for ax in (loss_ax, acc_ax):
            ax.text(
                0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes
            )
    return fig


def confusion_figure(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> Figure:
    """A confusion matrix heat map: true class on rows, predicted on columns, counts annotated.

    Cells are coloured by the share of their row (so rare classes are as visible as common ones)
    and annotated with the raw counts; the figure grows with the number of classes and stays
    readable up to about 20 classes (annotations are dropped beyond 40).
    """
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {counts.shape}, expected ({k}, {k})")
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(
        counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums != 0
    )
    longest = max((len(str(label)) for label in labels), default=1)
    label_room = min(longest, 28) * 0.075
    side = max(3.5, 0.42 * k + 1.5)
    fig = _new_figure(side + label_room + 1.2, side + label_room)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of true class")
    names = [_plain(_shorten(str(label), 28)) for label in labels]
    ax.set_xticks(range(k), names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.tick_params(labelsize=9 if k <= 12 else 7)
    if k <= 40:
        font = 9 if k <= 10 else (7 if k <= 20 else 5)
        for i in range(k):
            for j in range(k):
                color = "white" if shares[i, j] > 0.55 else "black"
                ax.text(
                    j, i, str(counts[i, j]), ha="center", va="center", fontsize=font, color=color
                )
    ax.set_title("Confusion matrix (counts)")
    return fig


def _shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to ``limit`` characters: names that differ at the end (a common
    prefix and a number) stay distinguishable."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return text[:head] + "…" + text[len(text) - tail :]


# --------------------------------------------------------------------------------------------
# The one-run report
# --------------------------------------------------------------------------------------------


def _run_date(run: RunData) -> str:
    """When the run finished: a date in results.json if any, else the mtime of results.json."""
    for key in ("finished_at", "date", "ended_at", "started_at"):
        value = run.results.get(key)
        if isinstance(value, str) and value:
            return value
    try:
        mtime = (run.run_dir / RESULTS_FILE).stat().st_mtime
    except OSError:
        return "–"
    return dt.datetime.fromtimestamp(mtime).astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()


def _metrics_dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def summary_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (name, formatted value) rows of the summary table of one run."""
    test = _metrics_dict(results.get("test"))
    validation = _metrics_dict(results.get("validation"))
    rows: list[tuple[str, str]] = []
    if test is not None:
        rows.append(("Test accuracy", format_pct(test.get("accuracy"))))
        rows.append(("Test macro-F1", format_pct(test.get("macro_f1"))))
        if _number(test.get("loss")) is not None:
            rows.append(("Test loss", format_float(test.get("loss"))))
        if _number(test.get("n")) is not None:
            rows.append(("Test examples", format_int(test.get("n"))))
    else:
        rows.append(("Test accuracy", "– (no test set)"))
    if validation is not None:
        suffix = f" (best epoch {results['best_epoch']})" if "best_epoch" in results else ""
        rows.append((f"Validation accuracy{suffix}", format_pct(validation.get("accuracy"))))
        rows.append((f"Validation macro-F1{suffix}", format_pct(validation.get("macro_f1"))))
    extra = results.get("extra")
    if isinstance(extra, dict):
        for name, metrics in extra.items():
            metrics = _metrics_dict(metrics)
            if metrics is not None:
                rows.append(
                    (f"Accuracy on “{name}” (extra set)", format_pct(metrics.get("accuracy")))
                )
                rows.append(
                    (f"Macro-F1 on “{name}” (extra set)", format_pct(metrics.get("macro_f1")))
                )
    rows.append(("Wall time", format_duration(results.get("wall_time_s"))))
    trainable, total = (
        _number(results.get("trainable_params")),
        _number(results.get("total_params")),
    )
    params = f"{format_int(trainable)} / {format_int(total)}"
    if trainable is not None and total:
        params += f" ({100.0 * trainable / total:.1f}%)"
    rows.append(("Trainable / total parameters", params))
    peak = _number(results.get("peak_rss_mb"))
    rows.append(("Peak memory (RSS)", "–" if peak is None else f"{peak:,.0f} MB"))
    return rows


def per_class_table(metrics: Mapping[str, Any]) -> str:
    """Per-class precision, recall, F1 and support of a METRICS dict, as an HTML table."""
    per_class = metrics.get("per_class") or {}
    labels = metrics.get("labels") or list(per_class)
    rows = []
    for label in labels:
        entry = per_class.get(label) or {}
        rows.append(
            [
                str(label),
                format_pct(entry.get("precision")),
                format_pct(entry.get("recall")),
                format_pct(entry.get("f1")),
                format_int(entry.get("support")),
            ]
        )
    return html_table(["class", "precision", "recall", "F1", "support"], rows, numeric=(1, 2, 3, 4))


def plan_html(plan: Any) -> str:
    """The fine-tuning plan: a table of its phases plus its other fields (or JSON as a fallback)."""
    if not isinstance(plan, dict) or not plan:
        if plan in (None, {}, []):
            return '<p class="note">No plan recorded.</p>'
        return f"<pre>{html.escape(json.dumps(plan, indent=2, default=str))}</pre>"
    parts = []
    phases = plan.get("phases")
    if isinstance(phases, list) and phases and all(isinstance(p, dict) for p in phases):
        columns: list[str] = []
        for phase in phases:
            columns.extend(key for key in phase if key not in columns)
        rows = [[_scalar_text(phase.get(column)) for column in columns] for phase in phases]
        numeric = [
            i
            for i, column in enumerate(columns)
            if all(_number(p.get(column)) is not None or p.get(column) is None for p in phases)
        ]
        parts.append(
            html_table(
                ["#", *columns],
                [[str(i), *row] for i, row in enumerate(rows)],
                numeric=[0, *(i + 1 for i in numeric)],
            )
        )
        others = [(key, _scalar_text(value)) for key, value in plan.items() if key != "phases"]
    else:
        others = [(key, _scalar_text(value)) for key, value in plan.items()]
    if others:
        parts.append(key_value_table(others, numeric=False))
    return "\n".join(parts)


def render_run_report(run: RunData) -> str:
    """The HTML text of the report of one run (see :func:`write_run_report`)."""
    results = run.results
    test = _metrics_dict(results.get("test"))
    validation = _metrics_dict(results.get("validation"))
    backbone = str(results.get("backbone", "–"))
    strategy = str(results.get("strategy", "–"))
    title = f"graft run {run.name}"
    header = (
        f'<header><h1>{html.escape(run.name)}</h1><div class="meta">'
        f"<span>backbone <b>{html.escape(backbone)}</b></span>"
        f"<span>strategy <b>{html.escape(strategy)}</b></span>"
        f"<span>{html.escape(_run_date(run))}</span></div></header>"
    )
    sections: list[tuple[str, str]] = []
    sections.append(("Summary", key_value_table(summary_rows(results))))

    best_epoch = results.get("best_epoch")
    if run.history:
        curves = _figure_to_img_tag(
            curves_figure(
                run.history, best_epoch=best_epoch if isinstance(best_epoch, int) else None
            ),
            alt="training and validation loss and accuracy per epoch",
        )
        note = '<p class="note">Dashed lines: phase boundaries; dotted red line: best epoch.</p>'
        sections.append(("Training curves", curves + note))
    else:
        sections.append(("Training curves", '<p class="note">No epochs recorded.</p>'))

    evaluated, which = (test, "test") if test is not None else (validation, "validation")
    if evaluated is not None and evaluated.get("confusion_matrix") and evaluated.get("labels"):
        matrix_html = _figure_to_img_tag(
            confusion_figure(evaluated["confusion_matrix"], evaluated["labels"]),
            alt=f"confusion matrix of the {which} set",
        )
        if which != "test":
            matrix_html = (
                '<p class="note">No test set: showing the validation set.</p>' + matrix_html
            )
        sections.append((f"Confusion matrix ({which} set)", matrix_html))
        sections.append((f"Per-class metrics ({which} set)", per_class_table(evaluated)))
    else:
        sections.append(("Confusion matrix", '<p class="note">No evaluation recorded.</p>'))

    sections.append(("Plan", plan_html(results.get("plan"))))
    sections.append(("Config", f"<pre>{html.escape(run.config_text)}</pre>"))
    environment = results.get("environment")
    if isinstance(environment, dict) and environment:
        env_html = key_value_table(
            [(str(k), _scalar_text(v)) for k, v in environment.items()], numeric=False
        )
    else:
        env_html = '<p class="note">No environment recorded.</p>'
    sections.append(("Environment", env_html))
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    footer = f"Generated by graft from {run.run_dir.name} on {generated}."
    return page(title, sections, header_html=header, footer_text=footer)


def write_run_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html``, a self-contained report of one run, and return its path.

    The file needs nothing else to display (no network, CSS inline, figures as base64 PNGs):
    header, summary table, training curves, confusion matrix and per-class metrics of the test
    set (of the validation set if there is no test set), plan, config and environment.

    Raises:
        DataError: ``run_dir`` is not a graft run directory (a file is missing) or a file is
            malformed (a corrupt ``metrics.jsonl`` line is named by its number).
    """
    run = load_run(Path(run_dir))
    text = render_run_report(run)
    target = run.run_dir / REPORT_FILE
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        raise DataError(f"{target}: cannot write the report: {exc}") from exc
    return target
