"""graft.metrics: checked against scikit-learn on random data, absent classes included."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from graft.metrics import classification_metrics, summary_line


def _names(k: int) -> list[str]:
    return [f"class_{i}" for i in range(k)]


def _check_against_sklearn(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> None:
    names = _names(k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "no warnings where undefined"
        got = classification_metrics(y_true, y_pred, names)

    assert got["n"] == len(y_true)
    assert got["labels"] == names
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12
    )
    expected_cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    assert got["confusion_matrix"] == expected_cm.tolist()

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), zero_division=0
    )
    assert list(got["per_class"]) == names
    for i, name in enumerate(names):
        entry = got["per_class"][name]
        assert entry["precision"] == pytest.approx(precision[i], abs=1e-12)
        assert entry["recall"] == pytest.approx(recall[i], abs=1e-12)
        assert entry["f1"] == pytest.approx(f1[i], abs=1e-12)
        assert entry["support"] == int(support[i])


@pytest.mark.parametrize("seed", range(8))
def test_matches_sklearn_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 15))
    n = int(rng.integers(1, 400))
    y_true = rng.integers(0, k, size=n)
    # Mostly right, sometimes wrong: realistic, and every cell kind occurs.
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, size=n))
    _check_against_sklearn(y_true, y_pred, k)


@pytest.mark.parametrize("seed", range(6))
def test_matches_sklearn_with_absent_classes(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    k = 10
    # y_true uses only some classes; y_pred uses others too; some classes appear nowhere.
    true_classes = rng.choice(k, size=4, replace=False)
    pred_classes = np.concatenate([true_classes[:2], rng.choice(k, size=3, replace=False)])
    y_true = rng.choice(true_classes, size=200)
    y_pred = rng.choice(pred_classes, size=200)
    _check_against_sklearn(y_true, y_pred, k)


def test_class_absent_everywhere_is_zero_and_kept_in_matrix() -> None:
    got = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert got["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert got["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert got["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert got["per_class"]["a"]["recall"] == pytest.approx(0.5)
    # Macro-F1 averages over the classes that occur ("c" does not pull it down), like sklearn.
    f1_a, f1_b = 2 / 3, 0.8
    assert got["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert got["accuracy"] == pytest.approx(0.75)


def test_predicted_but_absent_class_counts_in_macro_f1() -> None:
    got = classification_metrics(np.array([0, 0]), np.array([0, 1]), ["a", "b"])
    assert got["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_perfect_predictions() -> None:
    y = np.array([2, 0, 1, 2, 1])
    got = classification_metrics(y, y.copy(), ["x", "y", "z"], loss=0.125)
    assert got["accuracy"] == 1.0
    assert got["macro_f1"] == 1.0
    assert got["loss"] == 0.125
    assert all(v["f1"] == 1.0 for v in got["per_class"].values())


def test_result_is_json_ready_with_plain_python_types() -> None:
    got = classification_metrics(
        np.array([0, 1, 1], dtype=np.int32),
        np.array([0, 1, 0], dtype=np.uint8),
        ["a", "b"],
        loss=np.float32(0.5),  # type: ignore[arg-type]
    )
    assert json.loads(json.dumps(got)) == got
    assert type(got["n"]) is int
    assert type(got["accuracy"]) is float
    assert type(got["loss"]) is float
    assert type(got["confusion_matrix"][0][0]) is int
    assert type(got["per_class"]["a"]["support"]) is int
    assert got["loss"] is not None


def test_empty_input() -> None:
    got = classification_metrics(np.array([], dtype=int), np.array([], dtype=int), ["a", "b"])
    assert got["n"] == 0
    assert got["accuracy"] == 0.0
    assert got["macro_f1"] == 0.0
    assert got["confusion_matrix"] == [[0, 0], [0, 0]]
    assert got["loss"] is None


def test_accepts_integral_floats_and_lists() -> None:
    got = classification_metrics([0.0, 1.0], np.array([0.0, 0.0]), ["a", "b"])  # type: ignore[arg-type]
    assert got["confusion_matrix"] == [[1, 0], [1, 0]]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "message"),
    [
        ([0, 1], [0], ["a", "b"], "entries"),
        ([0, 2], [0, 1], ["a", "b"], "class index 2"),
        ([0, -1], [0, 1], ["a", "b"], "class index -1"),
        ([[0, 1]], [[0, 1]], ["a", "b"], "1-D"),
        ([0, 1], [0.5, 1.0], ["a", "b"], "integer"),
        ([0], [0], [], "empty"),
        ([0], [0], ["a", "a"], "duplicates"),
    ],
)
def test_rejects_bad_input(y_true: list, y_pred: list, names: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.array(y_true), np.array(y_pred), names)


def test_summary_line() -> None:
    metrics = {"n": 1000, "accuracy": 0.9124, "macro_f1": 0.9076, "loss": None}
    assert summary_line(metrics) == "acc 0.912  macro-F1 0.908  (n=1000)"
    metrics["loss"] = 0.31234
    assert summary_line(metrics) == "loss 0.3123  acc 0.912  macro-F1 0.908  (n=1000)"


def test_summary_line_of_computed_metrics() -> None:
    got = classification_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["a", "b"])
    assert summary_line(got) == "acc 0.750  macro-F1 0.733  (n=4)"
