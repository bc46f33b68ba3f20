"""Classification and regression metrics, computed with numpy so they are cheap enough to run
every epoch.

:func:`classification_metrics` and :func:`regression_metrics` return a JSON-ready dict (only
``int``, ``float``, ``str``, ``None``, lists and dicts) that is written as is into
``results.json`` and read back by :mod:`graft.report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_label_array(values: Any, name: str, num_classes: int) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array of class indexes in ``[0, num_classes)``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iub":
        if (
            array.dtype.kind == "f"
            and np.all(np.isfinite(array))
            and np.all(array == np.round(array))
        ):
            pass  # integral floats (e.g. from a float tensor) are fine
        else:
            raise ValueError(f"{name} must hold integer class indexes, got dtype {array.dtype}")
    array = array.astype(np.int64)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds class index {bad}, outside [0, {num_classes})")
    return array


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ``numerator / denominator`` with 0.0 where the denominator is 0 (no warning)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    label_names: Sequence[str],
    *,
    loss: float | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    ``y_true`` and ``y_pred`` are 1-D arrays of class indexes into ``label_names``.
    The confusion matrix and ``per_class`` cover *all* ``label_names``, also those absent from
    ``y_true``; rows are true classes and columns predicted classes. Precision, recall and F1 are
    0.0 where undefined (no prediction, no support), without warnings.

    ``macro_f1`` is the unweighted mean of the F1 of the classes that occur in ``y_true`` or
    ``y_pred`` (as ``sklearn.metrics.f1_score(average="macro", zero_division=0)``): a class the
    evaluation set does not contain and that is never predicted does not pull the mean down.

    Returns a JSON-ready dict with keys ``n``, ``accuracy``, ``macro_f1``, ``loss``, ``labels``,
    ``per_class`` (name -> ``precision``, ``recall``, ``f1``, ``support``) and
    ``confusion_matrix`` (list of lists of ints). With no examples accuracy and macro-F1 are 0.0.

    Raises:
        ValueError: shapes differ, an index is outside ``[0, len(label_names))``, no labels, or
            duplicate label names.
    """
    labels = [str(name) for name in label_names]
    num_classes = len(labels)
    if num_classes == 0:
        raise ValueError("label_names is empty")
    if len(set(labels)) != num_classes:
        raise ValueError("label_names has duplicates")
    true = _as_label_array(y_true, "y_true", num_classes)
    pred = _as_label_array(y_pred, "y_pred", num_classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} entries but y_pred has {pred.size}")

    n = int(true.size)
    matrix = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _safe_divide(tp, predicted.astype(np.float64))
    recall = _safe_divide(tp, support.astype(np.float64))
    # 2TP / (2TP + FP + FN) == 2PR / (P + R), and is defined whenever either P or R is.
    f1 = _safe_divide(2.0 * tp, (support + predicted).astype(np.float64))

    present = (support + predicted) > 0
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    accuracy = float(tp.sum() / n) if n else 0.0

    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    return {
        "n": n,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "loss": None if loss is None else float(loss),
        "labels": labels,
        "per_class": per_class,
        "confusion_matrix": matrix.astype(int).tolist(),
    }


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (what Spearman's ρ needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 … end
            start = end
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((da * da).sum() * (db * db).sum()))
    return float((da * db).sum() / denominator) if denominator > 0 else 0.0


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, *, loss: float | None = None
) -> dict[str, Any]:
    """MAE, RMSE, R² and Spearman's ρ of predictions ``y_pred`` against ``y_true`` (1-D, the
    targets' own units).

    R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² (0 for predicting the mean, negative when worse; 0 when the
    targets do not vary); ρ is the Pearson correlation of the ranks, ties at their mean rank
    (as ``scipy.stats.spearmanr``; 0 when either side is constant).

    Returns a JSON-ready dict with ``n``, ``mae``, ``rmse``, ``r2``, ``spearman``, ``loss``.
    """
    true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if true.ndim != 1 or true.shape != pred.shape:
        raise ValueError(f"y_true {true.shape} and y_pred {pred.shape} must be 1-D and alike")
    n = int(true.size)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "mae": nan, "rmse": nan, "r2": nan, "spearman": nan, "loss": loss}
    error = pred - true
    total = float(((true - true.mean()) ** 2).sum())
    return {
        "n": n,
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error * error).mean())),
        "r2": 1.0 - float((error * error).sum()) / total if total > 0 else 0.0,
        "spearman": _pearson(_ranks(true), _ranks(pred)),
        "loss": None if loss is None else float(loss),
    }


def summary_line(metrics: dict[str, Any]) -> str:
    """One line for logs, e.g. ``"acc 0.912  macro-F1 0.908  (n=1000)"`` (a regression's:
    ``"rmse 0.82  mae 0.61  R² 0.55  ρ 0.74  (n=1000)"``).

    The loss comes first (``"loss 0.3120  acc ..."``) when the metrics carry one.
    """
    parts = []
    loss = metrics.get("loss")
    if loss is not None:
        parts.append(f"loss {float(loss):.4f}")
    if "map" in metrics:
        parts.append(f"mAP {float(metrics['map']):.3f}")
        parts.append(f"micro-F1 {float(metrics['micro_f1']):.3f}")
        parts.append(f"macro-F1 {float(metrics['macro_f1']):.3f}")
        parts.append(f"subset acc {float(metrics['subset_accuracy']):.3f}")
    elif "rmse" in metrics:
        parts.append(f"rmse {float(metrics['rmse']):.3f}")
        parts.append(f"mae {float(metrics['mae']):.3f}")
        parts.append(f"R² {float(metrics['r2']):.3f}")
        parts.append(f"ρ {float(metrics['spearman']):.3f}")
    else:
        parts.append(f"acc {float(metrics['accuracy']):.3f}")
        parts.append(f"macro-F1 {float(metrics['macro_f1']):.3f}")
    parts.append(f"(n={int(metrics['n'])})")
    return "  ".join(parts)


#: Selection metrics where lower is better.
LOWER_IS_BETTER = frozenset({"loss", "rmse", "mae"})


# --------------------------------------------------------------------------- multi-label


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one label: Σ_n (R_n − R_{n−1}) P_n over the distinct scores from
    the highest down (as ``sklearn.metrics.average_precision_score``); NaN without positives."""
    truth = np.asarray(y_true, dtype=np.float64)
    positives = truth.sum()
    if positives == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores, sorted_truth = np.asarray(scores)[order], truth[order]
    # The last position of each distinct score: ties are one threshold.
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
    tp = np.cumsum(sorted_truth)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_thresholds(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per label, the probability threshold that maximises its F1 on these examples (a label is
    predicted when its probability is ≥ the threshold): the midpoint between the chosen score
    and the next lower one, 0.5 for a label without positives."""
    truth = np.asarray(y_true, dtype=bool)
    out = np.full(truth.shape[1], 0.5)
    for j in range(truth.shape[1]):
        positives = int(truth[:, j].sum())
        if positives == 0:
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        s, t = probs[order, j], truth[order, j]
        last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
        tp = np.cumsum(t)[last]
        f1 = 2 * tp / (last + 1 + positives)  # 2TP / (predicted + actual)
        k = int(np.argmax(f1))
        below = s[last[k] + 1] if last[k] + 1 < len(s) else 0.0
        out[j] = (s[last[k]] + below) / 2
    return out


def multilabel_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    label_names: Sequence[str],
    thresholds: np.ndarray | float = 0.5,
    *,
    loss: float | None = None,
) -> dict[str, Any]:
    """Multi-label scores of probabilities ``probs`` (N, L) against 0/1 ``y_true`` (N, L), a
    label predicted where its probability is ≥ its threshold: micro-F1 (over every decision),
    macro-F1 (mean over labels that occur or are predicted), subset accuracy (every label of an
    example right), mAP (mean average precision over labels with a positive; threshold-free),
    and per label its AP, F1, threshold and support."""
    truth = np.asarray(y_true, dtype=bool)
    p = np.asarray(probs, dtype=np.float64)
    if truth.shape != p.shape or truth.ndim != 2 or truth.shape[1] != len(label_names):
        raise ValueError(f"y_true {truth.shape} and probs {p.shape} for {len(label_names)} labels")
    limits = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (truth.shape[1],))
    pred = p >= limits
    tp = (pred & truth).sum(0).astype(np.float64)
    predicted, actual = pred.sum(0), truth.sum(0)
    f1 = _safe_divide(2 * tp, (predicted + actual).astype(np.float64))
    present = (predicted + actual) > 0
    ap = [average_precision(truth[:, j], p[:, j]) for j in range(truth.shape[1])]
    scored = [a for a in ap if not math.isnan(a)]
    total = float(predicted.sum() + actual.sum())
    n = int(truth.shape[0])
    return {
        "n": n,
        "micro_f1": float(2 * tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "subset_accuracy": float((pred == truth).all(1).mean()) if n else 0.0,
        "map": float(np.mean(scored)) if scored else math.nan,
        "loss": None if loss is None else float(loss),
        "labels": [str(x) for x in label_names],
        "per_label": {
            str(name): {
                "ap": None if math.isnan(ap[j]) else ap[j],
                "f1": float(f1[j]),
                "threshold": float(limits[j]),
                "support": int(actual[j]),
            }
            for j, name in enumerate(label_names)
        },
    }
