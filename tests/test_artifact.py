"""The saved model: safetensors + JSON. Save → load gives identical logits for every tiny backbone
(image and text); predict speaks the label map; every way a model folder can be broken is a
DataError that names the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import NUM_CLASSES, TINY_BACKBONES, Tiny, build_tiny, random_examples
from safetensors.torch import load_file, save_file

from graft.artifact import META, WEIGHTS, LoadedModel, load_model, save_model
from graft.data.types import Examples, LabelMap
from graft.errors import DataError
from graft.models import Backbone

# Not alphabetical, on purpose: the saved order must be the one that is loaded.
LABELS = LabelMap(("zebra", "apple", "mango"))
PLAN = {"strategy": "full", "phases": [{"name": "full", "train": ["head"], "epochs": 1}]}


def perturbed(tiny: Tiny, bert_dir: Path | None) -> Backbone:
    """A seeded random-init backbone whose weights and BatchNorm statistics no longer match a
    fresh build, so a loader that forgot to load anything cannot pass."""
    backbone = build_tiny(tiny, bert_dir)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in backbone.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, b in backbone.model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    backbone.model.eval()
    return backbone


def examples_for(
    backbone: Backbone, n: int = 7, labels: tuple[str, ...] = LABELS.names
) -> Examples:
    return random_examples(backbone.modality, n, labels, seed=5)


@pytest.mark.parametrize(
    "tiny", [t for ts in TINY_BACKBONES.values() for t in ts], ids=lambda t: t.id
)
def test_save_load_identical_logits(tiny: Tiny, tmp_path: Path, request: Any) -> None:
    bert = request.getfixturevalue("tiny_bert_dir") if tiny.family == "hf" else None
    backbone = perturbed(tiny, bert)
    folder = tmp_path / "model"
    save_model(folder, backbone, LABELS, plan=PLAN, metrics={"test": {"accuracy": 0.5}})

    assert (folder / WEIGHTS).is_file() and (folder / META).is_file()
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))  # no pickles
    assert (folder / "tokenizer").is_dir() == (backbone.tokenizer is not None)

    loaded = load_model(folder)
    assert loaded.label_map == LABELS
    assert loaded.modality == backbone.modality
    assert loaded.meta["plan"] == PLAN and loaded.meta["metrics"]["test"]["accuracy"] == 0.5
    assert loaded.backbone.preprocess == backbone.preprocess
    assert loaded.backbone.group_names() == backbone.group_names()

    saved, again = backbone.model.state_dict(), loaded.backbone.model.state_dict()
    assert saved.keys() == again.keys()
    for k in saved:
        assert torch.equal(saved[k], again[k]), k

    ex = examples_for(backbone)
    original = LoadedModel(backbone, LABELS, {}, folder).logits(ex)
    assert original.shape == (len(ex), NUM_CLASSES)
    assert torch.equal(loaded.logits(ex), original)

    # A fresh build with the same seed gives other logits: loading is what made them equal.
    fresh = build_tiny(tiny, bert)
    fresh.model.eval()
    assert not torch.equal(LoadedModel(fresh, LABELS, {}, folder).logits(ex), original)


@pytest.fixture
def image_model(tmp_path: Path) -> tuple[Backbone, Path]:
    backbone = perturbed(TINY_BACKBONES["timm"][0], None)
    folder = tmp_path / "model"
    save_model(folder, backbone, LABELS, plan=PLAN)
    return backbone, folder


def test_predict_returns_labels_of_the_label_map(image_model: tuple[Backbone, Path]) -> None:
    backbone, folder = image_model
    loaded = load_model(folder)
    ex = examples_for(backbone, n=9)
    logits = loaded.logits(ex)
    preds = loaded.predict(ex)
    assert len(preds) == len(ex)
    probs = logits.softmax(1)
    for row, pred in enumerate(preds):
        best = int(logits[row].argmax())
        assert pred["label"] == LABELS.names[best]
        assert list(pred["probabilities"]) == list(LABELS.names)
        assert pred["probability"] == pytest.approx(float(probs[row, best]))
        assert sum(pred["probabilities"].values()) == pytest.approx(1.0)


def test_run_folder_is_accepted(image_model: tuple[Backbone, Path], tmp_path: Path) -> None:
    _, folder = image_model
    run = tmp_path / "run"
    run.mkdir()
    folder.rename(run / "model")
    assert load_model(run).folder == run / "model"


def test_evaluate_matches_logits(image_model: tuple[Backbone, Path]) -> None:
    backbone, folder = image_model
    loaded = load_model(folder)
    ex = examples_for(backbone, n=12, labels=("apple", "mango"))  # a subset of the classes
    metrics = loaded.evaluate(ex)
    targets = LABELS.encode(ex.labels, ex.origin)
    expected = float((loaded.logits(ex).argmax(1).numpy() == targets).mean())
    assert metrics["accuracy"] == pytest.approx(expected)


def test_evaluate_refuses_labels_the_model_never_saw(image_model: tuple[Backbone, Path]) -> None:
    backbone, folder = image_model
    ex = examples_for(backbone, n=6, labels=("apple", "durian"))
    with pytest.raises(DataError) as ei:
        load_model(folder).evaluate(ex)
    assert "durian" in str(ei.value) and "never seen in training" in str(ei.value)


# --------------------------------------------------------------------------- broken folders


def _rewrite_meta(folder: Path, change: Any) -> None:
    meta = json.loads((folder / META).read_text())
    change(meta)
    (folder / META).write_text(json.dumps(meta))


def _poison(folder: Path, value: float) -> None:
    state = load_file(str(folder / WEIGHTS))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = value
    save_file(state, str(folder / WEIGHTS))


def _drop_a_tensor(folder: Path) -> None:
    state = load_file(str(folder / WEIGHTS))
    state.pop("head.fc.bias")
    save_file(state, str(folder / WEIGHTS))


BREAKAGES: dict[str, tuple[Any, str, str]] = {
    # name: (how to break the folder, the file the message must name, words it must contain)
    "corrupt-safetensors": (
        lambda f: (f / WEIGHTS).write_bytes(b"\x00garbage" * 20),
        WEIGHTS,
        "unreadable weights",
    ),
    "truncated-safetensors": (
        lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:1000]),
        WEIGHTS,
        "unreadable weights",
    ),
    "missing-safetensors": (lambda f: (f / WEIGHTS).unlink(), WEIGHTS, "unreadable weights"),
    "nan-weights": (lambda f: _poison(f, float("nan")), WEIGHTS, "NaN"),
    "inf-weights": (lambda f: _poison(f, float("inf")), WEIGHTS, "Inf"),
    "weights-do-not-fit": (_drop_a_tensor, WEIGHTS, "do not fit"),
    "malformed-json": (lambda f: (f / META).write_text('{"labels": [1, '), META, "malformed"),
    "json-not-utf8": (lambda f: (f / META).write_bytes(b"\xff\xfe{}"), META, "malformed"),
    "json-without-labels": (
        lambda f: _rewrite_meta(f, lambda m: m.pop("labels")),
        META,
        "labels",
    ),
    "labels-not-names": (
        lambda f: _rewrite_meta(f, lambda m: m.update(labels=5)),
        META,
        "labels",
    ),
    "duplicate-labels": (
        lambda f: _rewrite_meta(f, lambda m: m.update(labels=["a", "a", "b"])),
        META,
        "duplicate",
    ),
    "labels-do-not-match-outputs": (
        lambda f: _rewrite_meta(f, lambda m: m.update(labels=["a", "b"])),
        META,
        "2 labels for 3",
    ),
    "preprocess-incomplete": (
        lambda f: _rewrite_meta(f, lambda m: m["preprocess"].pop("image_size")),
        META,
        "image_size",
    ),
    "unknown-backbone-source": (
        lambda f: _rewrite_meta(f, lambda m: m["backbone"].update(source="nosuch")),
        META,
        "nosuch",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_model_folder_is_a_data_error(
    image_model: tuple[Backbone, Path], breakage: str
) -> None:
    _, folder = image_model
    load_model(folder)  # intact, it loads
    breaker, file, words = BREAKAGES[breakage]
    breaker(folder)
    with pytest.raises(DataError) as ei:
        load_model(folder)
    msg = str(ei.value)
    assert str(folder / file) in msg, msg
    assert words in msg, msg
    assert ei.value.exit_code == 3


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a graft model folder"):
        load_model(tmp_path / "nowhere")


def test_weights_are_float32_tensors_in_safetensors(image_model: tuple[Backbone, Path]) -> None:
    backbone, folder = image_model
    state = load_file(str(folder / WEIGHTS))
    assert set(state) == set(backbone.model.state_dict())
    assert all(
        v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked")
    )
    meta = json.loads((folder / META).read_text())
    assert meta["labels"] == list(LABELS.names)
    assert meta["preprocess"]["image_size"] == 32 and meta["backbone"]["source"] == "timm"
    assert np.isfinite(meta["preprocess"]["mean"]).all()
