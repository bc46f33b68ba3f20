"""Multi-label classification (``task: multilabel``): the metrics against hand computations and
scikit-learn, thresholds chosen on validation only (with the test labels poisoned), label sets
read from CSV and JSON Lines with errors that name the line, the ``multi_mnist`` set, and a real
run of the tiny BERT on VADER texts labeled with several facts each: fit → save → load gives
the same decisions.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from graft.artifact import load_model
from graft.config import validate
from graft.data import load_examples
from graft.data.targets import label_sets, rarest_label_keys
from graft.errors import DataError, UsageError
from graft.metrics import average_precision, best_thresholds, multilabel_metrics
from graft.run import fit


def test_metrics_match_hand_computation_and_scikit_learn() -> None:
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.6], [0.4, 0.8, 0.1], [0.7, 0.3, 0.2], [0.1, 0.6, 0.9]])
    m = multilabel_metrics(truth, probs, ["a", "b", "c"], 0.5, loss=0.3)
    # At 0.5: predictions [1,0,1], [0,1,0], [1,0,0], [0,1,1]; TP 5, FP 1, FN 1.
    assert m["micro_f1"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    # Per label F1: a 1.0, b 2·1/(2+2)=0.5, c 1.0.
    assert m["macro_f1"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert m["subset_accuracy"] == pytest.approx(2 / 4)  # rows 1 and 2 exactly right
    pred = probs >= 0.5
    assert m["micro_f1"] == pytest.approx(f1_score(truth, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    # AP of label b: scores 0.8 (pos), 0.6 (neg), 0.3 (pos), 0.2 (neg): (1/2)·1 + (1/2)·(2/3).
    assert average_precision(truth[:, 1], probs[:, 1]) == pytest.approx(0.5 + 1 / 3)
    rng = np.random.default_rng(0)
    t, s = rng.integers(0, 2, size=(60, 4)), np.round(rng.random((60, 4)), 1)  # with ties
    for j in range(4):
        assert average_precision(t[:, j], s[:, j]) == pytest.approx(
            average_precision_score(t[:, j], s[:, j])
        )
    assert m["map"] == pytest.approx(
        np.mean([average_precision_score(truth[:, j], probs[:, j]) for j in range(3)])
    )
    assert math.isnan(average_precision(np.zeros(3), np.array([0.1, 0.2, 0.3])))


def test_thresholds_maximise_each_labels_f1() -> None:
    truth = np.array([[1], [1], [0], [1], [0]])
    probs = np.array([[0.9], [0.7], [0.6], [0.3], [0.1]])
    # Predicting the top k: F1 = 2TP / (k + 3): k=1 0.5, k=2 0.8, k=3 0.667, k=4 0.857, k=5 0.75
    chosen = best_thresholds(truth, probs)
    assert chosen[0] == pytest.approx((0.3 + 0.1) / 2)  # the top 4, cut between 0.3 and 0.1
    assert best_thresholds(np.zeros((3, 1)), probs[:3])[0] == 0.5  # no positive: 0.5


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def test_label_sets_from_csv_and_jsonl(tmp_path: Path) -> None:
    ex = load_examples(path=_csv(tmp_path / "a.csv", [("x", "b|a"), ("y", " c "), ("z", "a|a")]))
    assert label_sets(ex) == [["a", "b"], ["c"], ["a"]]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "x", "label": ["b", "a"]}\n{"text": "y", "label": "c|d"}\n')
    assert label_sets(load_examples(path=jsonl)) == [["a", "b"], ["c", "d"]]
    jsonl.write_text('{"text": "x", "label": ["b"]}\n\n{"text": "y", "label": []}\n')
    with pytest.raises(DataError, match=r"a\.jsonl: line 3: an empty label set"):
        label_sets(load_examples(path=jsonl))
    jsonl.write_text('{"text": "x", "label": ["b", {"no": 1}]}\n')
    with pytest.raises(DataError, match=r"a\.jsonl: line 1: a label list .* non-scalar"):
        load_examples(path=jsonl)
    assert rarest_label_keys([["a", "b"], ["a"], ["a", "c"], ["b"]]) == ["b", "a", "c", "b"]


def test_multi_mnist_is_built_from_disjoint_digits() -> None:
    train = load_examples(dataset="multi_mnist")
    test = load_examples(dataset="multi_mnist", split="test")
    assert (len(train), len(test)) == (3000, 1000) and train.inputs.shape[1:] == (56, 56)  # type: ignore[union-attr]
    sets = label_sets(train)
    assert all(1 <= len(s) <= 4 for s in sets)
    assert {x for s in sets for x in s} == {str(d) for d in range(10)}
    # Deterministic: the same images twice.
    assert np.array_equal(load_examples(dataset="multi_mnist").inputs, train.inputs)  # type: ignore[arg-type]


def _facts(score: float, domain: str) -> str:
    facts = [domain]
    if score != 0:
        facts.append("positive" if score > 0 else "negative")
    if abs(score) >= 2:
        facts.append("strong")
    return "|".join(facts)


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """VADER movie snippets and tweets, each labeled with its domain, its polarity and
    whether its rating is strong (|score| ≥ 2): several true labels per text."""
    folder = tmp_path_factory.mktemp("facts")
    rows = []
    for name, domain in (("vader_movies_score", "movie"), ("vader_tweets_score", "tweet")):
        ex = load_examples(dataset=name)
        pairs = zip(ex.inputs[:120], ex.labels[:120], strict=True)
        rows += [(str(t), _facts(float(y), domain)) for t, y in pairs]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    poisoned = [(t, "movie|tweet|positive|negative|strong") for t, _ in rows[200:]]
    return {
        "train": _csv(folder / "train.csv", rows[:160]),
        "validation": _csv(folder / "val.csv", rows[160:200]),
        "test": _csv(folder / "test.csv", rows[200:]),
        "poisoned": _csv(folder / "poisoned.csv", poisoned),
    }


def _config(tmp: Path, bert: Path, facts: dict[str, Path], name: str, test: str) -> dict[str, Any]:
    return {
        "task": "multilabel",
        "backbone": {"name": str(bert), "source": "hf", "pretrained": False},
        "data": {
            "train": {"path": str(facts["train"])},
            "validation": {"path": str(facts["validation"])},
            "test": {"path": str(facts[test])},
            "max_length": 32,
        },
        "optim": {"lr": 1e-3},
        "loss": {"pos_weight": "balanced"},
        "train": {"epochs": 2, "batch_size": 16, "precision": "fp32"},
        "hardware": {"threads": 1},
        "output": {"dir": str(tmp), "name": name, "progress": False},
    }


def test_thresholds_come_from_validation_only_and_survive_save_and_load(
    tmp_path: Path, tiny_bert_dir: Path, facts: dict[str, Path]
) -> None:
    runs = {
        name: fit(validate(_config(tmp_path, tiny_bert_dir, facts, name, name)), quiet=True)
        for name in ("test", "poisoned")
    }
    meta = {
        n: json.loads((r.run_dir / "model/graft_model.json").read_text()) for n, r in runs.items()
    }
    assert meta["test"]["task"] == "multilabel"
    assert meta["test"]["thresholds"] == meta["poisoned"]["thresholds"]  # test labels unread
    results = {n: r.results for n, r in runs.items()}
    assert results["test"]["validation"] == results["poisoned"]["validation"]
    assert results["test"]["test"] != results["poisoned"]["test"]  # the poison is scored
    assert set(results["test"]["test"]) >= {"map", "micro_f1", "macro_f1", "subset_accuracy"}
    # The thresholds are those that maximise each label's F1 on the validation set.
    model = load_model(runs["test"].run_dir)
    validation = load_examples(path=facts["validation"])
    probs = model.task.probabilities(model.logits(validation))  # type: ignore[union-attr]
    targets = model.task.targets(validation)
    assert meta["test"]["thresholds"] == pytest.approx(best_thresholds(targets, probs).tolist())
    # Saved → loaded: the same scores on the test set, and predictions above the thresholds.
    test = load_examples(path=facts["test"])
    again = model.evaluate(test)
    for key in ("map", "micro_f1", "macro_f1", "subset_accuracy"):
        assert again[key] == pytest.approx(results["test"]["test"][key], rel=1e-6), key
    predicted = model.predict(test.subset(range(5)))
    names, limits = model.label_map.names, meta["test"]["thresholds"]
    for p in predicted:
        above = zip(names, limits, strict=True)
        assert p["labels"] == [n for n, t in above if p["probabilities"][n] >= t]


def test_unknown_labels_and_refused_settings(
    tmp_path: Path, tiny_bert_dir: Path, facts: dict[str, Path]
) -> None:
    odd = _csv(tmp_path / "odd.csv", [("a text", "movie|sarcastic")])
    config = _config(tmp_path, tiny_bert_dir, facts, "odd", "test")
    config["data"]["test"] = {"path": str(odd)}
    with pytest.raises(DataError, match=r"odd\.csv: labels never seen in training: 'sarcastic'"):
        fit(validate(config), quiet=True)
    assert not (tmp_path / "odd").exists()
    for section, values, field in [
        ("loss", {"label_smoothing": 0.1}, "loss.label_smoothing"),
        ("data", {"mixup_alpha": 0.2}, "data.mixup_alpha"),
    ]:
        bad = _config(tmp_path, tiny_bert_dir, facts, field, "test")
        bad[section].update(values)
        with pytest.raises(UsageError, match=rf"{field}: not with task: multilabel"):
            fit(validate(bad), quiet=True)
        assert not (tmp_path / field).exists()
    wrong = _config(tmp_path, tiny_bert_dir, facts, "w", "test")
    wrong["loss"]["pos_weight"] = [1.0, 2.0]
    with pytest.raises(UsageError, match=r"loss\.pos_weight: 2 weights for 5 labels"):
        fit(validate(wrong), quiet=True)
    wrong["train"]["metric"] = "accuracy"
    with pytest.raises(UsageError, match="'accuracy' does not score multilabel"):
        validate(wrong)
