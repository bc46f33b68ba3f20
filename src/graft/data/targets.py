"""Targets beyond one class name: a regression's numbers (their standardisation, and the keys
that let a split of continuous targets be stratified) and a multi-label example's label set.

Labels stay strings in :class:`~graft.data.types.Examples` (as read from the file, so the data
fingerprint of a file does not depend on the task); they become numbers or label sets here, with
an error that names the file and line of the first one that is not.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graft.data.types import Examples
from graft.errors import DataError

#: Quantile bins of a regression split's stratification (fewer on small sets).
STRATA = 10


def numeric_targets(ex: Examples) -> np.ndarray:
    """The labels of ``ex`` as float64 numbers; a label that is not a finite number is a
    :class:`DataError` naming its file and line (or its index)."""
    values = np.empty(len(ex), dtype=np.float64)
    for i, label in enumerate(ex.labels):
        try:
            value = float(label)
        except ValueError:
            raise DataError(
                f"{ex.where(i)}: the label {label!r} is not a number (task: regression)",
                hint="a regression label is a number such as 2.5 or -1e-3",
            ) from None
        if not math.isfinite(value):
            raise DataError(
                f"{ex.where(i)}: the label {label!r} is not a finite number (task: regression)",
                hint="drop the rows without a value",
            )
        values[i] = value
    return values


def strata(values: np.ndarray) -> list[str]:
    """Stratification keys of continuous ``values``: the quantile bin of each (at most
    :data:`STRATA` bins, at least 4 values per bin), so a carved validation or test set spans
    the range of the targets as the training set does."""
    n_bins = max(1, min(STRATA, len(values) // 4))
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return [str(int(b)) for b in np.searchsorted(edges, values, side="right")]


@dataclass(frozen=True)
class Standardizer:
    """``z = (y − mean) / std`` with the training targets' mean and standard deviation: the
    head learns z (unit scale whatever the units), predictions are turned back into y."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: np.ndarray, origin: str) -> Standardizer:
        """The standardisation of training targets ``values``; equal targets are refused."""
        std = float(np.std(values))
        if not std > 0:
            raise DataError(
                f"{origin}: every training target is {values[0]:g}: nothing to learn",
                hint="a regression needs targets that vary",
            )
        return cls(float(np.mean(values)), std)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Standardised float32 targets, what the loss sees."""
        return ((values - self.mean) / self.std).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Predictions in the targets' own units (float64)."""
        return np.asarray(z, dtype=np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        return cls(float(data["mean"]), float(data["std"]))


#: How several labels are written in one CSV/TSV cell (JSON Lines: a list).
LABEL_SEPARATOR = "|"


def label_sets(ex: Examples, separator: str = LABEL_SEPARATOR) -> list[list[str]]:
    """Each example's labels (multi-label): a JSON list as JSON Lines gives it, or a cell split
    at ``separator``; an empty set is a :class:`DataError` naming the file and line."""
    out: list[list[str]] = []
    for i, label in enumerate(ex.labels):
        parsed: list[str] | None = None
        if label.startswith("["):
            try:
                value = json.loads(label)
                parsed = [str(x).strip() for x in value] if isinstance(value, list) else None
            except json.JSONDecodeError:
                parsed = None
        if parsed is None:
            parsed = [part.strip() for part in label.split(separator)]
        labels = sorted({x for x in parsed if x})
        if not labels:
            raise DataError(
                f"{ex.where(i)}: an empty label set (task: multilabel)",
                hint=f"give each example at least one label, separated by {separator!r}",
            )
        out.append(labels)
    return out


def rarest_label_keys(sets: Sequence[Sequence[str]]) -> list[str]:
    """Stratification keys of multi-label examples: each example's rarest label, so that a
    carved split holds every label in about its share (a common approximation of iterative
    stratification, Sechidis et al. 2011)."""
    counts = Counter(x for labels in sets for x in labels)
    return [min(labels, key=lambda x: (counts[x], x)) for labels in sets]
