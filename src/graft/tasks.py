"""What a task makes of a model's outputs: the targets it trains on, its evaluation loss, its
metrics and the lines they leave in ``metrics.jsonl``.

Classification: the head's logits over the label map's classes, cross-entropy, accuracy and
macro-F1. Multi-label: one logit per label, each a sigmoid trained with binary cross-entropy,
mAP and micro/macro-F1 at per-label thresholds (0.5 while training; chosen on the validation
set for the final model). Regression: one output trained on standardised targets
(``z = (y − mean) / std``), the mean squared error of z as the evaluation loss, and MAE, RMSE,
R² and Spearman's ρ in the targets' own units. The training loop, evaluation and the saved
model hold a :class:`Task` and never branch on the task themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from graft.data.targets import Standardizer, label_sets, numeric_targets
from graft.data.types import Examples, LabelMap, Splits
from graft.metrics import (
    LOWER_IS_BETTER,
    best_thresholds,
    classification_metrics,
    multilabel_metrics,
    regression_metrics,
)


@dataclass(frozen=True)
class Classification:
    """Single-label classification over ``label_map``'s classes."""

    label_map: LabelMap
    kind = "classification"

    @property
    def outputs(self) -> int:
        return len(self.label_map)

    def targets(self, ex: Examples) -> np.ndarray:
        """Class indexes (int64); a label the model does not know is a DataError."""
        return self.label_map.encode(ex.labels, ex.origin)

    def eval_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(F.cross_entropy(outputs.float(), targets))

    def metrics(self, outputs: torch.Tensor, targets: np.ndarray, loss: float) -> dict[str, Any]:
        preds = outputs.argmax(1).numpy()
        return classification_metrics(targets, preds, list(self.label_map.names), loss=loss)

    def val_record(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"]}

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Correct predictions among the labeled rows (MixUp's soft targets: their argmax;
        unlabeled rows have a negative target)."""
        hard = targets.argmax(1) if targets.ndim == 2 else targets
        return float(((outputs.argmax(1) == hard) & (hard >= 0)).sum())

    def train_record(self, score: float, labeled: int) -> dict[str, float]:
        return {"train_accuracy": score / max(labeled, 1)}


@dataclass(frozen=True)
class Regression:
    """Regression of one number, named by the label map's one name, on standardised targets."""

    label_map: LabelMap
    scale: Standardizer
    kind = "regression"

    @property
    def outputs(self) -> int:
        return 1

    def targets(self, ex: Examples) -> np.ndarray:
        """Standardised targets (float32); a label that is not a number is a DataError."""
        return self.scale.encode(numeric_targets(ex))

    def eval_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(F.mse_loss(outputs.float().reshape(-1), targets.float()))

    def predict(self, outputs: torch.Tensor | np.ndarray) -> np.ndarray:
        """The head's outputs in the targets' units (float64, shape (N,))."""
        return self.scale.decode(np.asarray(outputs, dtype=np.float64).reshape(-1))

    def metrics(self, outputs: torch.Tensor, targets: np.ndarray, loss: float) -> dict[str, Any]:
        return regression_metrics(self.scale.decode(targets), self.predict(outputs), loss=loss)

    def val_record(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {f"val_{k}": metrics[k] for k in ("rmse", "mae", "r2", "spearman")}

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The batch's sum of squared errors, in standardised units."""
        error = outputs.detach().float().reshape(-1) - targets.float()
        return float((error * error).sum())

    def train_record(self, score: float, labeled: int) -> dict[str, float]:
        return {"train_rmse": math.sqrt(score / max(labeled, 1)) * self.scale.std}


@dataclass(frozen=True)
class MultiLabel:
    """Multi-label classification: each of the label map's labels present or not; ``thresholds``
    (one per label) turn probabilities into decisions (0.5 until chosen on validation)."""

    label_map: LabelMap
    thresholds: tuple[float, ...] | None = None
    kind = "multilabel"

    @property
    def outputs(self) -> int:
        return len(self.label_map)

    def targets(self, ex: Examples) -> np.ndarray:
        """Multi-hot float32 rows (N, labels); an unknown label is a DataError."""
        out = np.zeros((len(ex), len(self.label_map)), dtype=np.float32)
        for i, labels in enumerate(label_sets(ex)):
            out[i, self.label_map.encode(labels, ex.where(i))] = 1.0
        return out

    def eval_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(F.binary_cross_entropy_with_logits(outputs.float(), targets.float()))

    def probabilities(self, outputs: torch.Tensor | np.ndarray) -> np.ndarray:
        return torch.sigmoid(torch.as_tensor(outputs, dtype=torch.float32)).numpy()

    def metrics(self, outputs: torch.Tensor, targets: np.ndarray, loss: float) -> dict[str, Any]:
        limits = np.asarray(self.thresholds) if self.thresholds is not None else 0.5
        names = list(self.label_map.names)
        return multilabel_metrics(targets, self.probabilities(outputs), names, limits, loss=loss)

    def fit_thresholds(self, outputs: torch.Tensor, targets: np.ndarray) -> MultiLabel:
        """This task with each label's threshold chosen to maximise its F1 on these examples
        (the validation set's: never the test set's)."""
        chosen = best_thresholds(targets, self.probabilities(outputs))
        return MultiLabel(self.label_map, tuple(float(t) for t in chosen))

    def val_record(self, metrics: dict[str, Any]) -> dict[str, float]:
        keys = ("map", "micro_f1", "macro_f1", "subset_accuracy")
        return {f"val_{k}": metrics[k] for k in keys}

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Examples with every label right at 0.5 (subset accuracy's numerator)."""
        right = (outputs.detach() >= 0) == (targets >= 0.5)
        return float(right.all(1).sum())

    def train_record(self, score: float, labeled: int) -> dict[str, float]:
        return {"train_subset_accuracy": score / max(labeled, 1)}


Task = Classification | Regression | MultiLabel


def task_of(splits: Splits, kind: str = "classification") -> Task:
    """The task of a run's splits: a regression when they carry a target scale, multi-label
    when ``kind`` says so (their label map names the single labels)."""
    if splits.scale is not None:
        return Regression(splits.label_map, Standardizer(*splits.scale))
    if kind == "multilabel":
        return MultiLabel(splits.label_map)
    return Classification(splits.label_map)


def score(metrics: dict[str, Any], metric: str) -> float:
    """``metric`` of ``metrics`` as a score where higher is better (loss, RMSE, MAE negated)."""
    value = float(metrics[metric])
    return -value if metric in LOWER_IS_BETTER else value
