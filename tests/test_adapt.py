"""Domain adaptation (``adapt:``, ``data.target_unlabeled``): each term against a hand
computation, the gradient-reversal layer, the pseudo-label threshold, the mixed batches' ratio,
target labels that are never read, exact resume with DANN's classifier, and refused configs.

Runs use the tiny random-init BERT with the real MiniLM tokenizer on real VADER texts (movie
snippets as the source, tweets as the target), so each takes seconds.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_text_csv
from safetensors.torch import load_file

from graft.adapt.batches import MixedBatches
from graft.adapt.objectives import (
    dann_lambda,
    minimum_class_confusion,
    prediction_entropy,
    pseudo_label_loss,
    reverse_gradient,
)
from graft.cli import main
from graft.compare import run_compare
from graft.compare.spec import parse_spec
from graft.config import validate
from graft.data import load_examples
from graft.errors import DataError, UsageError
from graft.run import fit


def test_entropy_is_the_mean_entropy_of_the_predictions() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # softmax rows: (1/2, 1/2) and (3/4, 1/4)
    expected = (math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    assert float(prediction_entropy(logits)) == pytest.approx(expected, rel=1e-6)


def _mcc_by_hand(logits: np.ndarray, t: float) -> float:
    """Jin et al. 2020, written out with loops in float64."""
    b, c = logits.shape
    z = logits / t
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = np.array([-sum(p[i, k] * math.log(p[i, k] + 1e-5) for k in range(c)) for i in range(b)])
    w = 1 + np.exp(-h)
    w = b * w / w.sum()
    conf = np.zeros((c, c))
    for i in range(b):
        for j in range(c):
            for k in range(c):
                conf[j, k] += w[i] * p[i, j] * p[i, k]
    conf = conf / conf.sum(1, keepdims=True)
    return float((conf.sum() - np.trace(conf)) / c)


def test_mcc_matches_the_paper_computed_by_hand() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 3)) * 2
    got = float(minimum_class_confusion(torch.tensor(logits, dtype=torch.float32), 2.5))
    assert got == pytest.approx(_mcc_by_hand(logits, 2.5), rel=1e-5)
    # Confident, agreeing predictions have little confusion; uniform ones the most.
    sure = torch.tensor([[9.0, -9.0]] * 4 + [[-9.0, 9.0]] * 4)
    unsure = torch.zeros(8, 2)
    assert float(minimum_class_confusion(sure, 1.0)) < 0.01
    assert float(minimum_class_confusion(unsure, 1.0)) == pytest.approx(0.5)


def test_pseudo_labels_obey_the_threshold() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.2, 0.0], [0.0, 4.0], [0.0, 0.1]], requires_grad=True)
    # softmax top probabilities: 0.953, 0.550, 0.982, 0.525 → confident at 0.9: rows 0 and 2
    loss = pseudo_label_loss(logits, 0.9)
    ce0 = -math.log(math.exp(3) / (math.exp(3) + 1))
    ce2 = -math.log(math.exp(4) / (math.exp(4) + 1))
    assert float(loss.detach()) == pytest.approx((ce0 + ce2) / 4, rel=1e-6)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[[1, 3]] == 0) and torch.all(logits.grad[[0, 2]] != 0)
    assert float(pseudo_label_loss(torch.zeros(3, 2), 0.9)) == 0.0  # none confident


def test_gradient_reversal_flips_the_sign_and_scales_by_lambda() -> None:
    x = torch.randn(5, 4, requires_grad=True)
    upstream = torch.randn(5, 4)
    y = reverse_gradient(x, 0.37)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert x.grad is not None and torch.equal(x.grad, -0.37 * upstream)
    assert dann_lambda(0.0, 2.0) == 0.0
    assert dann_lambda(1.0, 2.0) == pytest.approx(2.0 * (2 / (1 + math.exp(-10)) - 1))
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)


def test_mixed_batches_have_the_stated_ratio_and_cover_the_source_once() -> None:
    n_source, n_target = 70, 23
    sampler = MixedBatches(n_source, n_target, 16, 0.25, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == math.ceil(70 / 12)
        source = [i for b in batches for i in b if i < n_source]
        assert sorted(source) == list(range(n_source))  # every source example once
        for b in batches[:-1]:
            assert len(b) == 16 and sum(i >= n_source for i in b) == 4
        last = batches[-1]  # 10 source left: the ratio kept, 10 × 4/12 → 3 target
        assert sum(i < n_source for i in last) == 10 and sum(i >= n_source for i in last) == 3
        assert all(i < n_source + n_target for b in batches for i in b)
    sampler.set_epoch(1)
    again = MixedBatches(n_source, n_target, 16, 0.25, seed=3)
    again.set_epoch(1)
    assert list(sampler) == list(again)


# --------------------------------------------------------------------------- runs


def _csv(path: Path, texts: list[str], labels: list[str]) -> Path:
    return write_text_csv(path, zip(texts, labels, strict=True))


@pytest.fixture(scope="module")
def tweets(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    ex = load_examples(dataset="vader_tweets")
    return list(ex.inputs[:48]), list(ex.labels[:48])  # type: ignore[arg-type]


def _config(tmp: Path, bert: Path, target: Path, name: str, **adapt: Any) -> dict[str, Any]:
    return {
        "backbone": {"name": str(bert), "source": "hf", "pretrained": False},
        "data": {
            "train": {"dataset": "vader_movies"},
            "train_size": 64,
            "val_size": 32,
            "test_size": 32,
            "max_length": 32,
            "target_unlabeled": {"path": str(target), "format": "csv"},
        },
        "adapt": adapt,
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 16},
        "hardware": {"threads": 1},
        "output": {"dir": str(tmp), "name": name, "progress": False},
    }


def _same_weights(a: Path, b: Path) -> bool:
    wa = load_file(str(a / "model" / "model.safetensors"))
    wb = load_file(str(b / "model" / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _steps(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "steps.jsonl").read_text().splitlines()]


def test_target_labels_are_never_read(
    tmp_path: Path, tiny_bert_dir: Path, tweets: tuple[list[str], list[str]]
) -> None:
    texts, labels = tweets
    flipped = ["negative" if x == "positive" else "positive" for x in labels]
    runs = {}
    for name, target_labels in (("true", labels), ("flipped", flipped), ("poison", ["☠"] * 48)):
        target = _csv(tmp_path / f"{name}.csv", texts, target_labels)
        config = _config(tmp_path, tiny_bert_dir, target, name, method="self_training")
        config["adapt"]["threshold"] = 0.5  # so that pseudo-labels are actually used
        runs[name] = fit(validate(config), quiet=True).run_dir
    reference = _steps(runs["true"])
    log = (runs["true"] / "log.txt").read_text()
    assert "target 48 unlabeled (adapt: self_training)" in log
    for name in ("flipped", "poison"):
        assert _steps(runs[name]) == reference, name
        assert _same_weights(runs["true"], runs[name]), name


@pytest.mark.parametrize("method", ["entropy", "mcc", "dann"])
def test_each_method_changes_training_and_resumes_exactly(
    tmp_path: Path,
    tiny_bert_dir: Path,
    tweets: tuple[list[str], list[str]],
    method: str,
) -> None:
    texts, labels = tweets
    target = _csv(tmp_path / "t.csv", texts, labels)
    # The same mixed batches with the term weighted 0: what the term changes is the term's.
    off = _config(tmp_path, tiny_bert_dir, target, "off", method=method, weight=0.0)
    weightless = fit(validate(off), quiet=True).run_dir
    config = _config(tmp_path, tiny_bert_dir, target, "whole", method=method)
    whole = fit(validate(config), quiet=True)
    assert not _same_weights(whole.run_dir, weightless)
    assert "target 48 unlabeled" in (whole.run_dir / "log.txt").read_text()

    class StopAfterFirstEpoch(Exception):
        pass

    def stop(record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            raise StopAfterFirstEpoch

    cut_config = validate(_config(tmp_path, tiny_bert_dir, target, "cut", method=method))
    with pytest.raises(StopAfterFirstEpoch):
        fit(cut_config, quiet=True, on_epoch=stop)
    resumed = fit(cut_config, resume=tmp_path / "cut", quiet=True)
    assert _steps(resumed.run_dir) == _steps(whole.run_dir)
    assert _same_weights(whole.run_dir, resumed.run_dir)


def test_refused_adaptation_configs(tmp_path: Path, tiny_bert_dir: Path, tweets: Any) -> None:
    texts, labels = tweets
    target = _csv(tmp_path / "t.csv", texts, labels)
    empty = _csv(tmp_path / "empty.csv", [], [])
    cases: list[tuple[dict[str, Any], str]] = []
    no_target = _config(tmp_path, tiny_bert_dir, target, "x", method="mcc")
    del no_target["data"]["target_unlabeled"]
    cases.append((no_target, "adapt.method: mcc needs data.target_unlabeled"))
    probe = _config(tmp_path, tiny_bert_dir, target, "x", method="dann")
    probe["strategy"] = {"name": "linear_probe"}
    cases.append((probe, "no phase trains the body"))
    lbfgs = _config(tmp_path, tiny_bert_dir, target, "x", method="entropy")
    lbfgs["optim"] = {"name": "lbfgs", "lr": 1.0}
    cases.append((lbfgs, "L-BFGS takes one full-batch step"))
    cases.append((_config(tmp_path, tiny_bert_dir, empty, "x", method="entropy"), "empty.csv"))
    for config, message in cases:
        with pytest.raises((UsageError, DataError)) as caught:
            fit(validate(config), quiet=True)
        assert message in str(caught.value), (message, caught.value)
    assert not (tmp_path / "x").exists()  # nothing written
    sized = _config(tmp_path, tiny_bert_dir, target, "x")
    sized["data"] = {"train": {"dataset": "vader_movies"}, "target_unlabeled_size": 5}
    with pytest.raises(UsageError, match="target_unlabeled_size needs target_unlabeled"):
        validate(sized)


def test_a_few_target_labels_train_beside_the_source(
    tmp_path: Path, tiny_bert_dir: Path, tweets: tuple[list[str], list[str]]
) -> None:
    texts, labels = tweets
    few = _csv(tmp_path / "few.csv", texts[:10], labels[:10])
    target = _csv(tmp_path / "rest.csv", texts[10:], labels[10:])
    config = _config(tmp_path, tiny_bert_dir, target, "semi", method="self_training")
    config["data"]["target_labeled"] = {"path": str(few), "format": "csv"}
    run = fit(validate(config), quiet=True).run_dir
    log = (run / "log.txt").read_text()
    assert "data: train 74," in log and "target 38 unlabeled" in log  # 64 source + 10 target
    without = _config(tmp_path, tiny_bert_dir, target, "unsupervised", method="self_training")
    assert _steps(fit(validate(without), quiet=True).run_dir) != _steps(run)

    odd = _csv(tmp_path / "odd.csv", texts[:3], ["positive", "negative", "neutral"])
    config["data"]["target_labeled"] = {"path": str(odd), "format": "csv"}
    config["output"]["name"] = "odd"
    with pytest.raises(
        DataError, match=r"data\.target_labeled: .*odd\.csv has labels the training"
    ):
        fit(validate(config), quiet=True)
    assert not (tmp_path / "odd").exists()


def test_report_shows_the_gap_each_method_closes(
    tmp_path: Path,
    tiny_bert_dir: Path,
    tweets: tuple[list[str], list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A compare of source-only against MCC (one seed) and an oracle trained on the target's
    labels: `graft report --oracle --baseline` puts the gap closed beside them; the leaderboard
    accepts the adapted run beside the source-only one (same labeled data)."""
    texts, labels = tweets
    pool = _csv(tmp_path / "pool.csv", texts[:32], labels[:32])
    held_out = {"path": str(_csv(tmp_path / "test.csv", texts[32:], labels[32:])), "format": "csv"}
    base = _config(tmp_path, tiny_bert_dir, pool, "unused")
    base["data"]["extra_eval"] = {"tweets": held_out}
    spec = parse_spec(
        {
            "name": "adapt",
            "strategies": [
                {"name": "full", "label": "source_only"},
                {"name": "full", "label": "mcc"},
            ],
            "seeds": 1,
            "overrides": {"mcc": {"adapt.method": "mcc"}},
        }
    )
    run_compare(base, spec, isolate=False, quiet=True)
    oracle = _config(tmp_path, tiny_bert_dir, pool, "oracle")
    oracle["data"].update(train={"path": str(pool), "format": "csv"}, train_size=None)
    oracle["data"].update(val_size=4, test_size=4, extra_eval={"tweets": held_out})
    del oracle["data"]["target_unlabeled"]
    oracle_dir = fit(validate(oracle), quiet=True).run_dir
    compare_dir = tmp_path / "compare-adapt"
    scores = {
        label: json.loads((compare_dir / f"{label}-seed0" / "results.json").read_text())
        for label in ("source_only", "mcc")
    }
    oracle_score = json.loads((oracle_dir / "results.json").read_text())
    base_acc, mcc_acc = (scores[k]["extra"]["tweets"]["accuracy"] for k in ("source_only", "mcc"))
    oracle_acc = oracle_score["extra"]["tweets"]["accuracy"]

    out = tmp_path / "gap.html"
    argv = ["report", str(compare_dir), "-o", str(out)]
    assert main([*argv, "--oracle", str(oracle_dir), "--baseline", "source_only"]) == 0
    text = out.read_text()
    row = re.search(r"mcc</span></td>.*?</tr>", text[text.index('id="gap"') :], re.S)
    assert row is not None
    expected = (mcc_acc - base_acc) / (oracle_acc - base_acc) if oracle_acc > base_acc else None
    shown = f"{expected:+.2f}" if expected is not None else "–"
    assert f">{shown}<" in row.group(0), (base_acc, mcc_acc, oracle_acc)
    assert f">{100 * mcc_acc:.2f}<" in row.group(0)
    oracle_row = re.search(r"<td>oracle</td>.*?</tr>", text, re.S)
    assert oracle_row is not None and f">{100 * oracle_acc:.2f}<" in oracle_row.group(0)

    capsys.readouterr()
    assert main([*argv, "--oracle", str(oracle_dir)]) == 2  # no baseline
    assert "--oracle and --baseline go together" in capsys.readouterr().err
    assert main([*argv, "--oracle", str(oracle_dir), "--baseline", "dann"]) == 2
    assert "no strategy is labelled 'dann'" in capsys.readouterr().err
    # Without the oracle the data must match: the oracle's training set differs.
    assert main(["report", str(compare_dir), str(oracle_dir), "-o", str(out)]) == 2
    assert "differ in data" in capsys.readouterr().err
