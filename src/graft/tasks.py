"""What a task makes of a model's outputs: the targets it trains on, its evaluation loss, its
metrics and the lines they leave in ``metrics.jsonl``.

Classification: the head's logits over the label map's classes, cross-entropy, accuracy and
macro-F1. Regression: one output trained on standardised targets (``z = (y − mean) / std``),
the mean squared error of z as the evaluation loss, and MAE, RMSE, R² and Spearman's ρ in the
targets' own units. The training loop, evaluation and the saved model hold a :class:`Task` and
never branch on the task themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from graft.data.targets import Standardizer, numeric_targets
from graft.data.types import Examples, LabelMap, Splits
from graft.metrics import LOWER_IS_BETTER, classification_metrics, regression_metrics


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


Task = Classification | Regression


def task_of(splits: Splits) -> Task:
    """The task of a run's splits: a regression when they carry a target scale."""
    if splits.scale is not None:
        return Regression(splits.label_map, Standardizer(*splits.scale))
    return Classification(splits.label_map)


def score(metrics: dict[str, Any], metric: str) -> float:
    """``metric`` of ``metrics`` as a score where higher is better (loss, RMSE, MAE negated)."""
    value = float(metrics[metric])
    return -value if metric in LOWER_IS_BETTER else value
