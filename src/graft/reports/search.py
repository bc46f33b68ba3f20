"""The HTML report of a ``graft search``: leaderboard, best parameters, importances, history and
parallel coordinates, drawn with matplotlib and embedded as PNGs (one offline file, like a run's
report; the HTML pieces are :mod:`graft.reports.html`).

It reads only the summary that :func:`graft.search.summarize` builds (``search.json``), so the
report can be redrawn from that file alone.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.atomic import atomic_write_text
from graft.reports.figures import figure_to_img_tag, new_figure, plain
from graft.reports.html import Markup, format_duration, html_table, key_value_table, page
from graft.search.space import TASK_SEARCH_METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_STATE_STYLE = {  # marker, colour
    "COMPLETE": ("o", "#0969da"),
    "PRUNED": ("x", "#bc4c00"),
    "FAIL": ("v", "#cf222e"),
    "INTERRUPTED": ("v", "#8c959f"),
}


def _last_intermediate(trial: Mapping[str, Any]) -> float | None:
    values = list((trial.get("intermediate") or {}).values())
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return finite[-1] if finite else None


def history_figure(summary: Mapping[str, Any]) -> Figure:
    """Each trial's value in order (pruned trials at their last reported value) and the best so
    far."""
    fig = new_figure(7.5, 3.6)
    ax = fig.add_subplot()
    maximize = summary["direction"] == "maximize"
    best: float | None = None
    best_x: list[int] = []
    best_y: list[float] = []
    for state, (marker, colour) in _STATE_STYLE.items():
        xs, ys = [], []
        for t in summary["trials"]:
            if t["state"] != state:
                continue
            y = t["value"] if t["value"] is not None else _last_intermediate(t)
            if y is not None:
                xs.append(t["number"])
                ys.append(y)
        if xs:
            label = state.lower() + (" (last epoch)" if state == "PRUNED" else "")
            ax.scatter(xs, ys, marker=marker, color=colour, label=label, zorder=3)
    for t in sorted(summary["trials"], key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and t["value"] is not None:
            v = float(t["value"])
            if best is None or (v > best if maximize else v < best):
                best = v
        if best is not None:
            best_x.append(t["number"])
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="#1a7f37", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(plain(summary["metric"]))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def _axis_values(spec: Mapping[str, Any], values: Sequence[Any]) -> tuple[list[float], list[str]]:
    """Values on a [0, 1] axis, and tick labels: categorical by index, log params on a log scale."""
    kind = spec.get("type")
    if kind == "categorical":
        choices = [str(c) for c in spec["choices"]]
        n = max(1, len(choices) - 1)
        return [choices.index(str(v)) / n for v in values], choices
    low, high = float(spec["low"]), float(spec["high"])
    log = bool(spec.get("log"))

    def scale(v: float) -> float:
        if high == low:
            return 0.5
        if log:
            return (math.log(v) - math.log(low)) / (math.log(high) - math.log(low))
        return (v - low) / (high - low)

    fmt = "{:.2g}"
    return [scale(float(v)) for v in values], [fmt.format(low), fmt.format(high)]


def parallel_coordinates_figure(summary: Mapping[str, Any]) -> Figure | None:
    """One line per complete trial across the parameter axes (and the objective), coloured by
    the objective; None when fewer than two trials completed."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    trials = [t for t in summary["trials"] if t["state"] == "COMPLETE" and t["value"] is not None]
    keys = [k for k in summary["space"] if any(k in t["params"] for t in trials)]
    if len(trials) < 2 or not keys:
        return None
    values = [float(t["value"]) for t in trials]
    lo, hi = min(values), max(values)
    norm = Normalize(lo, hi if hi > lo else lo + 1e-12)
    cmap = colormaps["viridis" if summary["direction"] == "maximize" else "viridis_r"]
    fig = new_figure(max(6.0, 1.6 * (len(keys) + 1)), 3.8)
    ax = fig.add_subplot()
    columns: list[list[float | None]] = []
    for k in keys:
        present = [t["params"].get(k) for t in trials]
        scaled, ticks = _axis_values(summary["space"][k], [v for v in present if v is not None])
        it = iter(scaled)
        columns.append([next(it) if v is not None else None for v in present])
        x = len(columns) - 1
        ax.text(x, -0.08, ticks[0], ha="center", va="top", fontsize=7)
        ax.text(x, 1.08, ticks[-1], ha="center", va="bottom", fontsize=7)
    columns.append([norm(v) for v in values])
    for i, v in enumerate(values):
        xs = [x for x, col in enumerate(columns) if col[i] is not None]
        ys = [float(y) for col in columns if (y := col[i]) is not None]
        ax.plot(xs, ys, color=cmap(norm(v)), alpha=0.8, linewidth=1.4)
    for x in range(len(columns)):
        ax.axvline(x, color="#8c959f", linewidth=0.8)
    ax.set_xticks(range(len(columns)), [plain(k) for k in keys] + [plain(summary["metric"])])
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    ax.text(len(keys), -0.08, f"{lo:.4g}", ha="center", va="top", fontsize=7)
    ax.text(len(keys), 1.08, f"{hi:.4g}", ha="center", va="bottom", fontsize=7)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return fig


def importance_figure(importances: Mapping[str, float]) -> Figure | None:
    if not importances:
        return None
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = new_figure(6.5, 0.45 * len(items) + 1.0)
    ax = fig.add_subplot()
    ax.barh([plain(k) for k, _ in items], [v for _, v in items], color="#0969da")
    ax.set_xlabel("importance (fANOVA)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def test_metric(summary: Mapping[str, Any]) -> str:
    """The test score a search shows beside each trial: accuracy, a regression's RMSE
    (``rmse``) or a multi-label model's micro-F1, after the search's own metric."""
    metric = str(summary.get("metric", ""))
    if metric in TASK_SEARCH_METRICS["classification"]:  # incl. val_loss, val_macro_f1
        return "accuracy"
    return "rmse" if metric in TASK_SEARCH_METRICS["regression"] else "micro_f1"


def _leaderboard(summary: Mapping[str, Any]) -> str:
    maximize = summary["direction"] == "maximize"
    keys = list(summary["space"])

    def order(t: Mapping[str, Any]) -> tuple[int, float]:
        if t["value"] is None:
            return (1, t["number"])
        return (0, -t["value"] if maximize else t["value"])

    def param(value: Any) -> Any:  # 1.2e-04, not a 4-decimal 0.0001: learning rates span decades
        return f"{value:.3g}" if isinstance(value, float) else value

    errors = any(t.get("error") for t in summary["trials"])
    test_key = test_metric(summary)
    rows = []
    for t in sorted(summary["trials"], key=order):
        test = t.get("test") or {}
        state = t["state"].lower()
        if "pruned_at_epoch" in t:
            state += f" at epoch {t['pruned_at_epoch']}"
        state = Markup(f'<span style="white-space:nowrap">{html.escape(state)}</span>')
        row = [
            t["number"],
            state,
            t["value"],
            *[param(t["params"].get(k)) for k in keys],
            test.get(test_key),
            format_duration(t.get("wall_time_s")),
        ]
        if errors:  # a column only when some trial failed: it holds the first line of its error
            row.append(str(t["error"]).splitlines()[0] if t.get("error") else None)
        rows.append(row)
    # Dotted names may break after a dot: the table then fits the page's width.
    names = [Markup(html.escape(k).replace(".", ".<wbr>")) for k in keys]
    headers = ["trial", "state", summary["metric"], *names, f"test {test_key}", "time"]
    headers += ["error"] if errors else []
    numeric = [0, 2, len(keys) + 3, len(keys) + 4]
    table = html_table(headers, rows, numeric=numeric)
    return f'<div style="overflow-x:auto">{table}</div>'  # a wide space scrolls, never clips


def render_search_report(summary: Mapping[str, Any]) -> str:
    """The report's HTML."""
    best = summary.get("best")
    sections: list[tuple[str, str]] = []
    if best is not None:
        items = [("trial", best["number"]), (summary["metric"], best["value"])]
        items += [(k, f"{v:.3g}" if isinstance(v, float) else v) for k, v in best["params"].items()]
        test = best.get("test") or {}
        if test:
            key = test_metric(summary)
            items.append((f"test {key}", test.get(key)))
        config = (summary.get("files") or {}).get("best_config")
        body = key_value_table(items)
        if config:
            body += f"<p>Ready to run: <code>graft fit {html.escape(config)}</code></p>"
        sections.append(("Best trial", body))
    else:
        sections.append(("Best trial", '<p class="note">No trial completed.</p>'))
    sections.append(("Trials", _leaderboard(summary)))
    history = figure_to_img_tag(history_figure(summary), "optimisation history")
    sections.append(("Optimisation history", history))
    imp = importance_figure(summary.get("importances") or {})
    note = summary.get("importances_note")
    sections.append(
        (
            "Hyperparameter importances",
            figure_to_img_tag(imp, "importances")
            if imp is not None
            else f'<p class="note">Not available: {html.escape(str(note))}</p>',
        )
    )
    par = parallel_coordinates_figure(summary)
    sections.append(
        (
            "Parallel coordinates",
            figure_to_img_tag(par, "parallel coordinates")
            if par is not None
            else '<p class="note">Needs at least two complete trials.</p>',
        )
    )
    space_rows = [
        [k, Markup(f"<code>{html.escape(str(v))}</code>")] for k, v in summary["space"].items()
    ]
    sections.append(("Search space", html_table(["parameter", "distribution"], space_rows)))
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary["states"].items()))
    meta = (
        f'<header><h1>search {html.escape(summary["study"])}</h1><div class="meta">'
        f"<span>{html.escape(summary['sampler'])} sampler</span>"
        f"<span>{html.escape(summary['pruner'])} pruner</span>"
        f"<span>{html.escape(summary['direction'])} {html.escape(summary['metric'])}</span>"
        f"<span>{html.escape(states)}</span>"
        f"<span>{html.escape(format_duration(summary.get('wall_time_s')))}</span></div></header>"
    )
    return page(
        f"search {summary['study']}",
        sections,
        header_html=meta,
        footer_text=f"storage {summary['storage']}",
    )


def write_search_report(path: Path, summary: Mapping[str, Any]) -> Path:
    atomic_write_text(path, render_search_report(summary))
    return path
