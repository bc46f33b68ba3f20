"""Figures of graft's reports: matplotlib drawn through its Agg canvas directly (no pyplot, no
global backend touched), embedded in the HTML as base64 PNGs. matplotlib is imported lazily, so
importing this module is cheap.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from graft.reports.html import as_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure attached to an Agg canvas, outside pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain(text: str) -> str:
    """Text for matplotlib with ``$`` escaped, so class names are never parsed as mathtext."""
    return str(text).replace("$", r"\$")


def figure_to_img_tag(fig: Figure, alt: str = "figure") -> str:
    """Render ``fig`` to PNG and return an ``<img>`` tag with the PNG embedded as base64."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pad_inches=0.1)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def series(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """The values of ``key`` per epoch, NaN where missing (matplotlib leaves a gap)."""
    out = []
    for record in history:
        number = as_number(record.get(key))
        out.append(math.nan if number is None else number)
    return out


def _epoch_axis(history: Sequence[Mapping[str, Any]]) -> tuple[list[float], bool]:
    """The x values of the curves, and whether they are the runs' own ``epoch`` numbers.

    The ``epoch`` values are used when all present and strictly increasing; otherwise (old runs,
    epochs counted per phase) the records are numbered 1, 2, ..., N.
    """
    epochs = [as_number(r.get("epoch")) for r in history]
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
    fig = new_figure(10.0, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    xs, from_epochs = _epoch_axis(history)
    regression = any("val_rmse" in record for record in history)
    multilabel = any("val_map" in record for record in history)
    curves = [
        (loss_ax, "train_loss", "train", "C0", "-"),
        (loss_ax, "val_loss", "validation", "C1", "-"),
    ]
    if multilabel:  # the right panel: ranking quality and decisions at 0.5
        curves += [
            (acc_ax, "train_subset_accuracy", "train subset accuracy", "C0", "-"),
            (acc_ax, "val_map", "validation mAP", "C1", "-"),
            (acc_ax, "val_micro_f1", "validation micro-F1", "C2", "--"),
        ]
    elif regression:  # the right panel: the error in the targets' units
        curves += [
            (acc_ax, "train_rmse", "train", "C0", "-"),
            (acc_ax, "val_rmse", "validation", "C1", "-"),
            (acc_ax, "val_mae", "validation MAE", "C2", "--"),
        ]
    else:
        curves += [
            (acc_ax, "train_accuracy", "train", "C0", "-"),
            (acc_ax, "val_accuracy", "validation", "C1", "-"),
            (acc_ax, "val_macro_f1", "validation macro-F1", "C2", "--"),
        ]
    marker = "o" if len(xs) <= 30 else None
    for ax, key, label, color, style in curves:
        ys = series(history, key)
        if any(not math.isnan(y) for y in ys):
            ax.plot(xs, ys, style, color=color, label=label, marker=marker, markersize=3.5)
    loss_ax.set_title("Loss")
    acc_ax.set_title("RMSE" if regression else "mAP, F1" if multilabel else "Accuracy")
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
                    plain(name),
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
    fig = new_figure(side + label_room + 1.2, side + label_room)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of true class")
    names = [plain(shorten(str(label), 28)) for label in labels]
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


def shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to ``limit`` characters: names that differ at the end (a common
    prefix and a number) stay distinguishable."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return text[:head] + "…" + text[len(text) - tail :]
