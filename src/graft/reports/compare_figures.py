"""The figures of the comparison report: accuracy with intervals over seeds, training curves
per strategy, accuracy against cost, and in-domain against shifted-domain accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from graft.compare.stats import Ranking, StrategySummary
from graft.reports.figures import new_figure, plain, series

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Colour-blind-safe (Okabe-Ito), then matplotlib's tab10 for more than eight strategies.
_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per strategy, the same in every figure and in the leaderboard."""
    from matplotlib import colormaps

    tab10 = colormaps["tab10"]
    out = {}
    for i, label in enumerate(labels):
        if i < len(_PALETTE):
            out[label] = _PALETTE[i]
        else:
            r, g, b, _ = tab10(i % 10)
            out[label] = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return out


def _style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _scale(ranking: Ranking) -> float:
    return 100.0 if ranking.share else 1.0


def _axis(ranking: Ranking, where: str) -> str:
    """An axis label: ``test accuracy (%)``, ``test RMSE``."""
    return f"{where} {ranking.name}" + (" (%)" if ranking.share else "")


def accuracy_figure(rows: Sequence[StrategySummary], split: str, palette: dict[str, str]) -> Figure:
    """Each strategy's accuracy (a regression's RMSE): every seed as a dot, the mean as a bar
    with its 95% interval."""
    fig = new_figure(9.0, 0.5 * len(rows) + 1.4)
    ax = fig.subplots()
    ranking = rows[0].ranking
    k = _scale(ranking)
    for y, row in enumerate(rows):
        color = palette[row.label]
        acc = row.primary
        if not math.isnan(acc.mean):
            ax.barh(y, k * acc.mean, color=color, alpha=0.25, height=0.6)
        if not math.isnan(acc.low):
            ax.errorbar(
                k * acc.mean,
                y,
                xerr=[[k * (acc.mean - acc.low)], [k * (acc.high - acc.mean)]],
                fmt="none",
                ecolor=color,
                elinewidth=2,
                capsize=5,
            )
        ax.scatter(
            [k * v for v in acc.values],
            [y] * acc.n,
            color=color,
            s=22,
            zorder=3,
            edgecolor="white",
            linewidth=0.6,
        )
    ax.set_yticks(range(len(rows)), [plain(r.label) for r in rows])
    ax.invert_yaxis()
    values = [k * v for r in rows for v in r.primary.values]
    lows = [k * r.primary.low for r in rows if not math.isnan(r.primary.low)]
    if values:
        lo = min(values + lows)
        hi = max(values + [k * r.primary.high for r in rows if not math.isnan(r.primary.high)])
        pad = max(0.01 * k, 0.08 * (hi - lo))
        ax.set_xlim(max(0.0, lo - pad), min(k, hi + pad) if ranking.share else hi + pad)
    ax.set_xlabel(f"{_axis(ranking, split)}  ·  dots: seeds, bar: mean, whiskers: 95% interval")
    _style(ax)
    return fig


def _mean_curve(
    histories: Sequence[Sequence[dict[str, Any]]], key: str
) -> tuple[list[float], list[float], list[float]]:
    """Per record number: mean, min and max over seeds (NaN where no seed has a value)."""
    import numpy as np

    length = max((len(h) for h in histories), default=0)
    table = np.full((len(histories), length), np.nan)
    for i, history in enumerate(histories):
        table[i, : len(history)] = series(history, key)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: a gap
            return (
                list(np.nanmean(table, axis=0)),
                list(np.nanmin(table, axis=0)),
                list(np.nanmax(table, axis=0)),
            )


def curves_grid(rows: Sequence[StrategySummary], palette: dict[str, str]) -> Figure:
    """Train and validation loss and accuracy per epoch: a line per strategy (mean over seeds),
    a band from the lowest to the highest seed."""
    fig = new_figure(11.0, 7.0)
    axes = fig.subplots(2, 2, sharex=True)
    panels = [
        (axes[0][0], "train_loss", "Training loss"),
        (axes[0][1], "val_loss", "Validation loss"),
        (axes[1][0], "train_accuracy", "Training accuracy"),
        (axes[1][1], "val_accuracy", "Validation accuracy"),
    ]
    if rows and rows[0].ranking.metric == "micro_f1":  # multi-label
        panels[2:] = [
            (axes[1][0], "train_subset_accuracy", "Training subset accuracy"),
            (axes[1][1], "val_map", "Validation mAP"),
        ]
    if rows and rows[0].ranking.metric == "rmse":  # a regression's error in its units
        panels[2:] = [
            (axes[1][0], "train_rmse", "Training RMSE"),
            (axes[1][1], "val_rmse", "Validation RMSE"),
        ]
    longest = 0
    for ax, key, title in panels:
        for row in rows:
            histories = [r.history for r in row.runs if r.history]
            if not histories:
                continue
            mean, low, high = _mean_curve(histories, key)
            xs = list(range(1, len(mean) + 1))
            longest = max(longest, len(xs))
            color = palette[row.label]
            marker = "o" if len(xs) <= 20 else None
            ax.plot(
                xs,
                mean,
                color=color,
                label=plain(row.label),
                marker=marker,
                markersize=3.5,
                linewidth=1.8,
            )
            if len(histories) > 1:
                ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0)
        ax.set_title(title, fontsize=11)
        _style(ax)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        if 0 < longest <= 20:
            ax.set_xticks(range(1, longest + 1))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False
        )
    return fig


def _cost_panel(
    ax: Axes,
    rows: Sequence[StrategySummary],
    palette: dict[str, str],
    cost: str,
    split: str,
    log_x: bool,
) -> None:
    ranking = rows[0].ranking
    for row in rows:
        color = palette[row.label]
        points = [
            (x, _scale(ranking) * y)
            for r in row.runs
            if (x := r.number(cost)) is not None
            and (y := r.score(ranking.metric, split)) is not None
            and (x > 0 or not log_x)
        ]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, color=color, alpha=0.35, s=18, edgecolor="none")
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        ax.scatter(
            [mx],
            [my],
            color=color,
            s=70,
            edgecolor="white",
            linewidth=1.0,
            zorder=3,
            label=plain(row.label),
        )
        ax.annotate(
            plain(row.label),
            (mx, my),
            xytext=(6, 4),
            textcoords="offset points",
            fontsize=8,
            color=color,
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_ylabel(_axis(ranking, split))
    _style(ax)


def cost_figure(rows: Sequence[StrategySummary], split: str, palette: dict[str, str]) -> Figure:
    """Accuracy against wall time and against trainable parameters (log scale): large dots are
    the means over seeds, small ones the seeds."""
    fig = new_figure(11.0, 4.2)
    time_ax, params_ax = fig.subplots(1, 2, sharey=True)
    _cost_panel(time_ax, rows, palette, "wall_time_s", split, log_x=False)
    time_ax.set_xlabel("wall time per run (s)")
    name = rows[0].ranking.name
    time_ax.set_title(f"{name[0].upper()}{name[1:]} vs. wall time", fontsize=11)
    _cost_panel(params_ax, rows, palette, "trainable_params", split, log_x=True)
    params_ax.set_xlabel("trainable parameters (log scale)")
    params_ax.set_title(f"{name[0].upper()}{name[1:]} vs. trainable parameters", fontsize=11)
    params_ax.set_ylabel("")
    return fig


def shift_figure(
    rows: Sequence[StrategySummary], split: str, extras: Sequence[str], palette: dict[str, str]
) -> Figure:
    """In-domain against shifted-domain accuracy, one panel per extra set; the dashed diagonal
    is 'no loss under shift'."""
    fig = new_figure(min(5.0 * len(extras), 15.0), 4.6)
    axes = fig.subplots(1, len(extras), squeeze=False)[0]
    ranking = rows[0].ranking
    k, metric = _scale(ranking), ranking.metric
    for ax, extra in zip(axes, extras, strict=True):
        everything: list[float] = []
        for row in rows:
            color = palette[row.label]
            pts = [
                (k * x, k * y)
                for r in row.runs
                if (x := r.score(metric, split)) is not None
                and (y := r.score(metric, extra)) is not None
            ]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            everything += [*xs, *ys]
            ax.scatter(xs, ys, color=color, alpha=0.35, s=18, edgecolor="none")
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            ax.scatter(
                [mx], [my], color=color, s=70, edgecolor="white", zorder=3, label=plain(row.label)
            )
        if everything:
            lo, hi = min(everything), max(everything)
            pad = max(0.01 * k, 0.06 * (hi - lo))
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="0.6", linewidth=1)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel(_axis(ranking, f"in-domain {split}"))
        ax.set_ylabel(_axis(ranking, f"on “{plain(extra)}”:"))
        ax.set_title(f"Shift to “{plain(extra)}”", fontsize=11)
        ax.set_aspect("equal", adjustable="box")
        _style(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", frameon=False, fontsize=9)
    return fig
