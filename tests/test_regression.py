"""Regression (``task: regression``): the metrics against values worked out by hand, the target
standardisation, numbers read from files with errors that name the line, stratified splits of
continuous targets, the refused combinations, and real runs of the tiny BERT on the VADER
sentiment scores: fit → save → load gives the same numbers, eval and predict in the targets'
units, a compare ranked by RMSE.
"""

from __future__ import annotations

import csv
import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from graft.artifact import load_model
from graft.cli import main
from graft.compare import run_compare
from graft.compare.spec import parse_spec
from graft.config import validate
from graft.data import load_examples, make_splits
from graft.data.targets import Standardizer, numeric_targets, strata
from graft.data.types import Examples
from graft.errors import DataError, UsageError
from graft.metrics import regression_metrics
from graft.run import fit
from graft.tasks import score


def test_regression_metrics_match_a_hand_computation() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 2.0, 2.5, 5.0])  # errors 0.5, 0, -0.5, 1
    m = regression_metrics(y, pred, loss=0.25)
    assert m["n"] == 4 and m["loss"] == 0.25
    assert m["mae"] == pytest.approx(2.0 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 0.25 + 1) / 4))
    # Σ(y − ȳ)² = 2.25 + 0.25 + 0.25 + 2.25 = 5; Σ error² = 1.5
    assert m["r2"] == pytest.approx(1 - 1.5 / 5)
    assert m["spearman"] == pytest.approx(1.0)  # the same order
    # Ties share their mean rank: pred ranks 1.5, 1.5, 3, 4 against 1, 2, 3, 4.
    tied = regression_metrics(y, np.array([0.0, 0.0, 7.0, 9.0]))
    r, t = np.array([1.5, 1.5, 3, 4]), np.array([1, 2, 3, 4.0])
    by_hand = ((r - r.mean()) * (t - t.mean())).sum() / math.sqrt(
        ((r - r.mean()) ** 2).sum() * ((t - t.mean()) ** 2).sum()
    )
    assert tied["spearman"] == pytest.approx(by_hand)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.integers(0, 5, size=50).astype(float)  # many ties
    assert regression_metrics(a, b)["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic)
    # Predicting the mean: R² 0; the wrong way round: negative.
    assert regression_metrics(y, np.full(4, 2.5))["r2"] == pytest.approx(0.0)
    assert regression_metrics(y, y[::-1].copy())["r2"] < 0
    assert score({"rmse": 1.0}, "rmse") > score({"rmse": 2.0}, "rmse")  # lower is better
    assert score({"r2": 0.5}, "r2") > score({"r2": 0.1}, "r2")


def test_standardisation_round_trips() -> None:
    values = np.array([1.0, 3.0])
    s = Standardizer.fit(values, "x")
    assert (s.mean, s.std) == (2.0, 1.0)
    assert s.encode(values).tolist() == [-1.0, 1.0]
    scores = load_examples(dataset="vader_tweets_score")
    y = numeric_targets(scores)
    fitted = Standardizer.fit(y, scores.origin)
    z = fitted.encode(y)
    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-6 and float(z.std()) == pytest.approx(1.0, abs=1e-6)
    # float32 standardised values: back to the file's numbers within float32 precision.
    assert np.max(np.abs(fitted.decode(z) - y)) < 1e-6 * fitted.std * 8
    assert Standardizer.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(DataError, match="every training target is 3"):
        Standardizer.fit(np.array([3.0, 3.0]), "t.csv")


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def test_labels_that_are_not_numbers_name_file_and_line(tmp_path: Path) -> None:
    good = [("fine", "1.5"), ("bad", "-2"), ("meh", "0")]
    ex = load_examples(path=_write_csv(tmp_path / "ok.csv", good))
    assert numeric_targets(ex).tolist() == [1.5, -2.0, 0.0]
    text = load_examples(path=_write_csv(tmp_path / "t.csv", [*good, ("odd", "lots")]))
    with pytest.raises(DataError, match=r"t\.csv: line 5: the label 'lots' is not a number"):
        numeric_targets(text)
    inf = load_examples(path=_write_csv(tmp_path / "i.csv", [("big", "inf"), *good]))
    with pytest.raises(DataError, match=r"i\.csv: line 2: the label 'inf' is not a finite"):
        numeric_targets(inf)
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_text('{"text": "a", "label": 1.5}\n\n{"text": "b", "label": "x"}\n')
    with pytest.raises(DataError, match=r"j\.jsonl: line 3: the label 'x' is not a number"):
        numeric_targets(load_examples(path=jsonl))
    in_memory = Examples("text", ["a", "b"], ["1", "?"], "inputs")
    with pytest.raises(DataError, match=r"inputs: example 2: the label '\?'"):
        numeric_targets(in_memory)


def test_regression_splits_stratify_by_quantile_and_scale_the_training_targets() -> None:
    ex = load_examples(dataset="vader_movies_score")
    splits = make_splits(ex, seed=3, task="regression", target_name="score")
    assert splits.label_map.names == ("score",)
    train = numeric_targets(splits.train)
    assert splits.scale == (pytest.approx(train.mean()), pytest.approx(train.std()))
    test = numeric_targets(splits.test) if splits.test is not None else np.array([])
    # Every decile of the whole set holds about its share of the test split (±2 examples).
    bins = np.array([int(b) for b in strata(numeric_targets(ex))])
    whole = np.bincount(bins) / len(bins)
    edges = np.quantile(numeric_targets(ex), np.linspace(0, 1, 11)[1:-1])
    test_bins = np.bincount(np.searchsorted(np.unique(edges), test, side="right"), minlength=10)
    assert np.all(np.abs(test_bins - whole * len(test)) <= 2)
    assert splits.test is not None and splits.train.lines and splits.test.lines
    assert not set(splits.train.lines) & set(splits.test.lines)  # no file line in both
    assert sorted(strata(np.arange(8.0))) == ["0", "0", "0", "0", "1", "1", "1", "1"]


def _config(tmp: Path, bert: Path, name: str, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "task": "regression",
        "backbone": {"name": str(bert), "source": "hf", "pretrained": False},
        "data": {
            "train": {"dataset": "vader_movies_score"},
            "train_size": 96,
            "val_size": 32,
            "test_size": 32,
            "max_length": 32,
            "extra_eval": {"tweets": {"dataset": "vader_tweets_score"}},
            "extra_size": 32,
        },
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 16, "precision": "fp32"},
        "hardware": {"threads": 1},
        "output": {"dir": str(tmp), "name": name, "progress": False},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def test_config_defaults_and_refusals(tmp_path: Path, tiny_bert_dir: Path) -> None:
    config = validate(_config(tmp_path, tiny_bert_dir, "x"))
    assert (config.loss.name, config.train.metric) == ("mse", "rmse")
    with pytest.raises(UsageError, match=r"train\.metric: 'accuracy' does not score regression"):
        validate(_config(tmp_path, tiny_bert_dir, "x", train={"metric": "accuracy"}))
    with pytest.raises(UsageError, match=r"loss\.name: 'focal' is not a regression loss"):
        validate(_config(tmp_path, tiny_bert_dir, "x", loss={"name": "focal"}))
    classify = _config(tmp_path, tiny_bert_dir, "x", loss={"name": "huber"})
    del classify["task"]
    with pytest.raises(UsageError, match=r"loss\.name: 'huber' is not a classification loss"):
        validate(classify)
    for section, values, field in [
        ("loss", {"class_weights": "inverse"}, "loss.class_weights"),
        ("data", {"mixup_alpha": 0.2}, "data.mixup_alpha"),
        ("init", {"head": "linear_probe"}, "init.head"),
        ("adapt", {"method": "mcc"}, "adapt.method"),
    ]:
        bad = validate(_config(tmp_path, tiny_bert_dir, field, **{section: values}))
        with pytest.raises(UsageError, match=f"{field}: not with task: regression"):
            fit(bad, quiet=True)
        assert not (tmp_path / field).exists()
    mismatch = _config(tmp_path, tiny_bert_dir, "mismatch")
    mismatch["data"]["extra_eval"] = {"tweets": {"dataset": "vader_tweets"}}
    with pytest.raises(UsageError, match=r"data\.extra_eval\.tweets: 'vader_tweets' is a "):
        fit(validate(mismatch), quiet=True)
    assert not (tmp_path / "mismatch").exists()


def test_fit_save_load_eval_predict(
    tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = fit(validate(_config(tmp_path, tiny_bert_dir, "reg", loss={"name": "huber"})))
    results = result.results
    assert results["task"] == "regression" and result.test_accuracy is None
    assert set(results["test"]) == {"n", "mae", "rmse", "r2", "spearman", "loss"}
    history = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train_rmse", "val_rmse", "val_spearman"} <= set(history[0])
    # The best epoch is the one with the lowest validation RMSE.
    assert results["best_epoch"] == min(history, key=lambda r: r["val_rmse"])["epoch"]

    model = load_model(result.run_dir)
    assert model.task.kind == "regression" and model.meta["target"]["std"] > 0
    texts = ["a wonderful film", "a dull and cruel mess", "it is a film"]
    values = [p["value"] for p in model.predict(texts)]
    # The numbers are the head's outputs turned back into the targets' units, by hand.
    z = model.logits(model.examples(texts))[:, 0].double().numpy()
    mean, std = model.meta["target"]["mean"], model.meta["target"]["std"]
    assert values == pytest.approx((z * std + mean).tolist(), rel=1e-12)

    # Evaluating the saved model on the run's own tweets set gives the run's numbers.
    config = validate(_config(tmp_path, tiny_bert_dir, "reg"))
    from graft.run_data import load_splits

    tweets = load_splits(config.data, config.task).extra["tweets"]
    again = model.evaluate(tweets)
    for key in ("rmse", "mae", "r2", "spearman"):
        assert again[key] == pytest.approx(results["extra"]["tweets"][key], rel=1e-5), key

    capsys.readouterr()
    assert main(["predict", str(result.run_dir), "a wonderful film"]) == 0
    assert capsys.readouterr().out.startswith(f"{values[0]:.6g}\ta wonderful film")
    assert main(["eval", str(result.run_dir), "--dataset", "vader_amazon_score"]) == 0
    assert "rmse" in capsys.readouterr().out
    assert main(["eval", str(result.run_dir), "--dataset", "vader_amazon"]) == 3
    assert "the label 'negative' is not a number" in capsys.readouterr().err
    out = str(tmp_path / "out")
    for command in (
        ["export", str(result.run_dir), "--format", "onnx", "-o", out],
        ["quantize", str(result.run_dir), "-o", out],
    ):
        assert main(command) == 2, command
        assert "handles classifiers only" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    with socket.socket() as s:  # a free port for the server that must refuse the model
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = [sys.executable, "-m", "graft", "serve", str(result.run_dir), "--port", str(port)]
    done = subprocess.run(serve, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "graft serve handles classifiers only" in done.stderr


def test_compare_ranks_regressions_by_rmse(tmp_path: Path, tiny_bert_dir: Path) -> None:
    base = _config(tmp_path, tiny_bert_dir, "unused", train={"epochs": 1})
    spec = parse_spec({"name": "reg", "strategies": ["full", "linear_probe"], "seeds": 1})
    result = run_compare(base, spec, isolate=False, quiet=True)
    rmse = {r.label: r.results["test"]["rmse"] for r in result.records}
    assert [row.label for row in result.summary] == sorted(rmse, key=rmse.__getitem__)
    header = (result.compare_dir / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("strategy,label,seeds,test_rmse_mean,test_rmse_std")
    report = (result.compare_dir / "report.html").read_text()
    assert "test RMSE" in report and "Spearman ρ" in report
    assert torch.isfinite(torch.tensor(list(rmse.values()))).all()
