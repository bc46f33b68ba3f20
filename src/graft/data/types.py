"""The raw-data types every data source returns, and the label map fixed at training time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from graft.errors import DataError

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class Examples:
    """A labeled set of raw examples, before any backbone-specific preprocessing.

    ``inputs`` is, for images, either a ``uint8`` array of shape (N, H, W) or (N, H, W, C) held in
    memory, or a list of image file paths read lazily; for text, a list of strings.
    ``labels`` are label *names* (strings); a :class:`LabelMap` turns them into class indexes.
    ``origin`` says where the examples came from, for messages ("fashion_mnist:train", a path);
    ``lines``, where a file was read, the line each example starts on (for messages too).
    """

    modality: Modality
    inputs: np.ndarray | list[Path] | list[str]
    labels: list[str]
    origin: str
    lines: list[int] | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise ValueError(
                f"{self.origin}: {len(self.inputs)} inputs but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, index: int) -> str:
        """Where example ``index`` came from: ``file: line N``, or ``origin: example N``."""
        if self.lines is not None:
            return f"{self.origin}: line {self.lines[index]}"
        return f"{self.origin}: example {index + 1}"

    def subset(self, indexes: Sequence[int] | np.ndarray, origin: str | None = None) -> Examples:
        """The examples at ``indexes``, in that order."""
        idx = np.asarray(indexes, dtype=np.int64)
        if isinstance(self.inputs, np.ndarray):
            inputs: np.ndarray | list[Path] | list[str] = self.inputs[idx]
        else:
            inputs = [self.inputs[i] for i in idx]  # type: ignore[misc]
        lines = None if self.lines is None else [self.lines[i] for i in idx]
        labels = [self.labels[i] for i in idx]
        return Examples(self.modality, inputs, labels, origin or self.origin, lines)


def natural_key(name: str) -> tuple[int, float | str]:
    """Sort numeric label names numerically ("2" before "10"), the rest alphabetically."""
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


@dataclass(frozen=True)
class LabelMap:
    """The ordered class names of a model; index i of the head's output is ``names[i]``."""

    names: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate class names in {self.names}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    @classmethod
    def from_labels(cls, labels: Sequence[str], order: Sequence[str] | None = None) -> LabelMap:
        """The label map of a training set: ``order`` if given (a named set's canonical order,
        restricted to the labels present), else numeric-then-alphabetical order."""
        present = set(labels)
        if order is not None:
            return cls(tuple(n for n in order if n in present))
        return cls(tuple(sorted(present, key=natural_key)))

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, labels: Sequence[str], origin: str) -> np.ndarray:
        """Class indexes of ``labels``; a label the map does not know is a :class:`DataError`."""
        unknown = sorted(set(labels) - self._index.keys(), key=natural_key)
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(
                f"{origin}: labels never seen in training: {shown}",
                hint=f"the model knows {len(self.names)} classes: {', '.join(self.names[:10])}"
                + (" ..." if len(self.names) > 10 else ""),
            )
        return np.fromiter((self._index[x] for x in labels), dtype=np.int64, count=len(labels))

    def check_same(self, other: LabelMap, origin: str) -> None:
        """Refuse data whose label map differs from the one the model was trained with."""
        if other.names != self.names:
            theirs, ours = list(other.names), list(self.names)
            raise DataError(f"{origin}: label map {theirs} differs from the model's {ours}")

    def to_json(self) -> str:
        return json.dumps(list(self.names))

    @classmethod
    def from_json(cls, text: str) -> LabelMap:
        return cls(tuple(json.loads(text)))


@dataclass(frozen=True)
class Splits:
    """Train, validation and test examples, plus extra (e.g. shifted-domain) evaluation sets."""

    train: Examples
    validation: Examples
    test: Examples | None
    extra: dict[str, Examples] = field(default_factory=dict)
    label_map: LabelMap = field(default=LabelMap(()))
    # Regression: the training targets' (mean, std); the label map names the one output.
    scale: tuple[float, float] | None = None
