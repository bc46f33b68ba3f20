"""Real pretrained weights on real data, offline: EfficientNet-Lite0 still knows a daisy through
graft's own loading and preprocessing; real ``graft fit`` runs of Lite0 (Fashion-MNIST) and MiniLM
(VADER movie reviews) beat chance, and ``graft eval`` / ``graft predict`` work on what they saved.

Each test skips when an asset it needs is absent (``python -m graft.assets fetch``); an asset that
is present but broken fails it.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import require_asset, write_yaml
from PIL import Image

from graft import assets
from graft.artifact import load_model
from graft.cli import main
from graft.data import load_examples, load_named
from graft.data.types import Examples
from graft.models import build_backbone
from graft.pipeline import Loaders

pytestmark = pytest.mark.integration

DAISY = 985  # ImageNet-1k class index of "daisy"


def above_chance(n: int, classes: int, sigmas: float = 3.0) -> float:
    """Accuracy that guessing reaches with probability ~0.1% (chance + 3 binomial std devs)."""
    p = 1.0 / classes
    return p + sigmas * math.sqrt(p * (1 - p) / n)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    return captured.out


def check_run_dir(run_dir: Path) -> dict[str, Any]:
    for name in ("results.json", "report.html", "config.yaml", "metrics.jsonl", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert (run_dir / "model" / "graft_model.json").is_file()
    assert not (run_dir / "checkpoint.pt").exists()
    assert "<html" in (run_dir / "report.html").read_text(encoding="utf-8").lower()
    return json.loads((run_dir / "results.json").read_text())


def test_lite0_knows_a_daisy() -> None:
    weights = require_asset(assets.efficientnet_lite0_weights)
    flower = Path(str(importlib.resources.files("sklearn.datasets") / "images" / "flower.jpg"))
    backbone = build_backbone("tf_efficientnet_lite0", num_classes=1000, pretrained=True)
    # graft puts a new head on; put the package's own 1000-class ImageNet head back to check.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    head = backbone.model.head.fc
    assert isinstance(head, torch.nn.Linear) and head.weight.shape == state["_fc.weight"].shape
    with torch.no_grad():
        head.weight.copy_(state["_fc.weight"])
        head.bias.copy_(state["_fc.bias"])
    # graft's own preprocessing: file → decode → centre square → 224 → normalise.
    loaders = Loaders(backbone.preprocess, None, False, 0, 0)
    examples = Examples("image", [flower], ["?"], "flower.jpg")
    batch = next(iter(loaders.loader(examples, None, 1, shuffle=False)))
    assert batch["inputs"]["pixel_values"].shape == (1, 3, 224, 224)
    backbone.model.eval()
    with torch.inference_mode():
        probs = backbone.model(**batch["inputs"]).softmax(1)[0]
    assert int(probs.argmax()) == DAISY, probs.topk(5)
    assert probs[DAISY] > 0.1


def _fashion_eval_folder(root: Path, per_class: int = 10) -> Path:
    """A few Fashion-MNIST test images as an image folder (classes whose names are folder-safe)."""
    test = load_named("fashion_mnist", "test")
    assert isinstance(test.inputs, np.ndarray)
    for cls in ("Trouser", "Bag", "Sneaker", "Sandal"):
        (root / cls).mkdir(parents=True)
        idx = [i for i, y in enumerate(test.labels) if y == cls][-per_class:]
        for i in idx:
            Image.fromarray(test.inputs[i]).save(root / cls / f"{i}.png")
    return root


def test_fit_lite0_on_fashion_mnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_asset(assets.efficientnet_lite0_weights)
    require_asset(assets.fashion_mnist_dir)
    config = write_yaml(
        tmp_path / "lite0.yaml",
        {
            "backbone": {"name": "tf_efficientnet_lite0", "pretrained": True},
            "data": {
                "train": {"dataset": "fashion_mnist"},
                "train_size": 300,
                "val_size": 100,
                "test_size": 300,
                "image_size": 32,
            },
            "strategy": {"name": "linear_probe"},
            "optim": {"lr": 1e-2},
            "train": {"epochs": 1, "batch_size": 32},
            "output": {"dir": str(tmp_path / "runs"), "progress": False},
        },
    )
    out = run_cli(["fit", str(config), "--quiet"], capsys)
    run_dir = Path(out.split("\t")[0].strip())
    results = check_run_dir(run_dir)
    assert results["test"]["accuracy"] > above_chance(300, 10), results["test"]["accuracy"]
    assert results["strategy"] == "linear_probe" and results["backbone"] == "tf_efficientnet_lite0"

    # graft eval on an image folder: the same numbers as the library's evaluate.
    folder = _fashion_eval_folder(tmp_path / "eval")
    metrics = json.loads(run_cli(["eval", str(run_dir), "--path", str(folder), "--json"], capsys))
    expected = load_model(run_dir).evaluate(load_examples(path=folder))
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["accuracy"] > above_chance(40, 10)

    files = sorted(str(p) for p in (folder / "Bag").iterdir())[:3]
    lines = run_cli(["predict", str(run_dir), *files, "--json"], capsys).splitlines()
    preds = [json.loads(line) for line in lines]
    labels = json.loads((run_dir / "model" / "graft_model.json").read_text())["labels"]
    assert [p["input"] for p in preds] == files
    assert all(p["label"] in labels and set(p["probabilities"]) == set(labels) for p in preds)


def test_fit_minilm_on_vader_movies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_asset(assets.minilm_dir)
    require_asset(assets.vader_dir)
    config = write_yaml(
        tmp_path / "minilm.yaml",
        {
            "backbone": {"name": "minilm"},
            "data": {
                "train": {"dataset": "vader_movies"},
                "train_size": 200,
                "val_size": 100,
                "test_size": 400,
                "max_length": 32,
            },
            "strategy": {"name": "linear_probe"},
            "optim": {"lr": 5e-2},
            "train": {"epochs": 1, "batch_size": 8},
            "output": {"dir": str(tmp_path / "runs"), "progress": False},
        },
    )
    out = run_cli(["fit", str(config), "--quiet"], capsys)
    run_dir = Path(out.split("\t")[0].strip())
    results = check_run_dir(run_dir)
    assert results["test"]["accuracy"] > above_chance(400, 2), results["test"]["accuracy"]
    assert (run_dir / "model" / "tokenizer").is_dir()

    # graft eval on a CSV of real (shifted-domain) tweets, as the library evaluates it.
    tweets = load_named("vader_tweets", "all").subset(range(0, 4000, 100))
    table = tmp_path / "tweets.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(tweets.inputs, tweets.labels, strict=True))
    metrics = json.loads(run_cli(["eval", str(run_dir), "--path", str(table), "--json"], capsys))
    expected = load_model(run_dir).evaluate(load_examples(path=table))
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])

    texts = ["a moving, beautifully shot film", "two hours I will never get back"]
    lines = run_cli(["predict", str(run_dir), *texts, "--json"], capsys).splitlines()
    preds = [json.loads(line) for line in lines]
    assert [p["input"] for p in preds] == texts
    assert all(p["label"] in {"negative", "positive"} for p in preds)
    assert all(sum(p["probabilities"].values()) == pytest.approx(1.0) for p in preds)
