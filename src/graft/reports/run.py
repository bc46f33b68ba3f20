"""The self-contained HTML report of one ``graft fit`` run.

:func:`write_run_report` reads a run directory (``config.yaml``, ``metrics.jsonl``,
``results.json``) and writes ``report.html`` next to them: one file that works offline, with the
figures embedded as base64 PNGs and the CSS inline.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from graft.atomic import atomic_write_text
from graft.errors import DataError
from graft.reports.figures import confusion_figure, curves_figure, figure_to_img_tag
from graft.reports.html import (
    as_number,
    format_duration,
    format_float,
    format_int,
    format_pct,
    html_table,
    key_value_table,
    page,
    scalar_text,
)
from graft.rundir import REPORT, RESULTS, RunData, load_run


def _run_date(run: RunData) -> str:
    """When the run finished: a date in results.json if any, else the mtime of results.json."""
    for key in ("finished_at", "date", "ended_at", "started_at"):
        value = run.results.get(key)
        if isinstance(value, str) and value:
            return value
    try:
        mtime = (run.run_dir / RESULTS).stat().st_mtime
    except OSError:
        return "–"
    return dt.datetime.fromtimestamp(mtime).astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()


def _metrics_dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


#: The scores of one set, per task other than classification, as (key, label).
TASK_SCORES = {
    "regression": (("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²"), ("spearman", "ρ")),
    "multilabel": (
        ("map", "mAP"),
        ("micro_f1", "micro-F1"),
        ("macro_f1", "macro-F1"),
        ("subset_accuracy", "subset acc."),
    ),
}


def task_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A regression's or multi-label run's rows: the task's scores of each evaluated set."""
    sets = [("Test", results.get("test")), ("Validation", results.get("validation"))]
    extra = results.get("extra")
    if isinstance(extra, dict):
        sets += [(f"“{name}” (extra set)", metrics) for name, metrics in extra.items()]
    rows: list[tuple[str, str]] = []
    for name, metrics in sets:
        if not isinstance(metrics, dict):
            continue
        scores = "  ".join(
            f"{label} {format_float(metrics.get(key))}"
            for key, label in TASK_SCORES[str(results["task"])]
        )
        rows.append((f"{name} ({format_int(metrics.get('n'))} examples)", scores))
    return rows


def summary_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (name, formatted value) rows of the summary table of one run."""
    test = _metrics_dict(results.get("test"))
    validation = _metrics_dict(results.get("validation"))
    rows: list[tuple[str, str]] = []
    other_task = results.get("task") in TASK_SCORES
    if other_task:
        rows += task_rows(results)
    elif test is not None:
        rows.append(("Test accuracy", format_pct(test.get("accuracy"))))
        rows.append(("Test macro-F1", format_pct(test.get("macro_f1"))))
        if as_number(test.get("loss")) is not None:
            rows.append(("Test loss", format_float(test.get("loss"))))
        if as_number(test.get("n")) is not None:
            rows.append(("Test examples", format_int(test.get("n"))))
    else:
        rows.append(("Test accuracy", "– (no test set)"))
    if validation is not None and not other_task:
        suffix = f" (best epoch {results['best_epoch']})" if "best_epoch" in results else ""
        rows.append((f"Validation accuracy{suffix}", format_pct(validation.get("accuracy"))))
        rows.append((f"Validation macro-F1{suffix}", format_pct(validation.get("macro_f1"))))
    extra = results.get("extra")
    if isinstance(extra, dict) and not other_task:
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
        as_number(results.get("trainable_params")),
        as_number(results.get("total_params")),
    )
    params = f"{format_int(trainable)} / {format_int(total)}"
    if trainable is not None and total:
        params += f" ({100.0 * trainable / total:.1f}%)"
    rows.append(("Trainable / total parameters", params))
    peak = as_number(results.get("peak_rss_mb"))
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
        rows = [[scalar_text(phase.get(column)) for column in columns] for phase in phases]
        numeric = [
            i
            for i, column in enumerate(columns)
            if all(as_number(p.get(column)) is not None or p.get(column) is None for p in phases)
        ]
        parts.append(
            html_table(
                ["#", *columns],
                [[str(i), *row] for i, row in enumerate(rows)],
                numeric=[0, *(i + 1 for i in numeric)],
            )
        )
        others = [(key, scalar_text(value)) for key, value in plan.items() if key != "phases"]
    else:
        others = [(key, scalar_text(value)) for key, value in plan.items()]
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
        curves = figure_to_img_tag(
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
        matrix_html = figure_to_img_tag(
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
            [(str(k), scalar_text(v)) for k, v in environment.items()], numeric=False
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
    target = run.run_dir / REPORT
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        raise DataError(f"{target}: cannot write the report: {exc}") from exc
    return target
