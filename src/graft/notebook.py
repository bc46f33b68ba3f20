"""graft in a notebook: what :class:`~graft.run.FitResult` and
:class:`~graft.compare.runner.CompareResult` show in Jupyter (a compact HTML summary), their
histories as pandas DataFrames, and a report shown inline.

Torch-free, and pandas is imported only when a DataFrame is asked for.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from graft.reports.html import format_duration, format_float, format_pct
from graft.rundir import METRICS, read_history


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        from graft.errors import UsageError

        raise UsageError(
            "a DataFrame needs pandas", hint="pip install 'graftkit[notebook]'"
        ) from None
    return pandas


def history_frame(run_dir: Path) -> Any:
    """A run's per-epoch metrics (``metrics.jsonl``) as a DataFrame, one row per epoch."""
    return _pandas().DataFrame(read_history(Path(run_dir) / METRICS))


def table_frame(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    """Rows under headers as a DataFrame."""
    return _pandas().DataFrame([list(r) for r in rows], columns=list(headers))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _set_row(name: str, metrics: Mapping[str, Any] | None) -> list[str]:
    metrics = metrics or {}
    return [
        name,
        format_pct(metrics.get("accuracy")),
        format_pct(metrics.get("macro_f1")),
        format_float(metrics.get("loss")),
    ]


def fit_html(run_dir: Path, results: Mapping[str, Any]) -> str:
    """A finished run as a compact HTML summary: what ran, each set's scores, where it is."""
    title = " · ".join(
        html.escape(str(results.get(k, "?"))) for k in ("backbone", "strategy", "run")
    )
    rows = [_set_row("validation", results.get("validation"))]
    if results.get("test") is not None:
        rows.append(_set_row("test", results["test"]))
    rows += [_set_row(f"{k} (extra)", v) for k, v in (results.get("extra") or {}).items()]
    facts = (
        f"best epoch {results.get('best_epoch', '?')}, "
        f"{format_duration(results.get('wall_time_s'))}, "
        f"{results.get('trainable_params', 0):,} of {results.get('total_params', 0):,} "
        "parameters trained"
    )
    return (
        f"<div><b>graft fit</b> {title}<br>{html.escape(facts)}"
        + _table(["set", "accuracy", "macro F1", "loss"], rows)
        + f"<small>run directory: <code>{html.escape(str(run_dir))}</code>; "
        "<code>.history</code> (per epoch), <code>.report()</code> (inline)</small></div>"
    )


def compare_html(compare_dir: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A compare's leaderboard as HTML."""
    return (
        f"<div><b>graft compare</b> {html.escape(Path(compare_dir).name)}"
        + _table(headers, rows)
        + f"<small>compare directory: <code>{html.escape(str(compare_dir))}</code>; "
        "<code>.leaderboard</code> (DataFrame), <code>.report_inline()</code></small></div>"
    )


class InlineReport:
    """A self-contained HTML report, shown inline in Jupyter (in an iframe, so its styles stay
    its own); ``path`` is the file."""

    def __init__(self, path: Path, height: int = 700) -> None:
        self.path, self.height = Path(path), height

    def _repr_html_(self) -> str:
        page = self.path.read_text(encoding="utf-8")
        return (
            f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;'
            f'height:{self.height}px;border:1px solid #ddd"></iframe>'
        )

    def __repr__(self) -> str:
        return f"InlineReport({str(self.path)!r})"
