"""Classification and regression metrics, computed with numpy so they are cheap enough to run
every epoch.

:func:`classification_metrics` and :func:`regression_metrics` return a JSON-ready dict (only
``int``, ``float``, ``str``, ``None``, lists and dicts) that is written as is into
``results.json`` and read back by :mod:`graft.report`.
"""

from __future__ import annotations

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
    if "rmse" in metrics:
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
