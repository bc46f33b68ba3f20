"""The hf, timm and torchscript exports (graft.deploy.formats): each folder loads in the plain
library its users have (transformers.pipeline, timm.create_model, torch.jit.load /
torch.export.load) and computes what graft computes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_BACKBONES, build_tiny, random_examples, require_asset

from graft.artifact import LoadedModel, load_model, save_model
from graft.data.types import LabelMap
from graft.deploy import formats
from graft.errors import DataError, UsageError

LABELS = ("neg", "neutral", "pos")
SENTENCES = [
    "A quietly devastating film, with the best performance of the year.",
    "Dull, overlong and badly acted; I wanted my evening back.",
    "It was fine.",
    "The plot goes nowhere but the actors are great " * 6,  # longer than max_length: cut
    "boring",
    "An honest, moving story about a family that falls apart and finds itself again.",
    "Not good, not bad.",
]


def saved(tmp_path: Path, tiny_index: tuple[str, int], bert: Path | None, **kw: Any) -> LoadedModel:
    """A saved and reloaded tiny model (builder options ``kw``) whose head is not zero-ish."""
    family, index = tiny_index
    tiny = TINY_BACKBONES[family][index]
    if kw:
        tiny = type(tiny)(tiny.family, tiny.name, {**tiny.kwargs, **kw})
    backbone = build_tiny(tiny, bert, num_classes=len(LABELS))
    with torch.no_grad():  # a random head with a real spread of logits
        backbone.model.head.fc.weight.normal_(0, 1.0)
        backbone.model.head.fc.bias.normal_(0, 0.5)
    folder = tmp_path / "model"
    save_model(folder, backbone, LabelMap(LABELS), plan={})
    return load_model(folder)


def out(tmp_path: Path, name: str = "export") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def pipeline_matches_graft(model: LoadedModel, folder: Path, texts: list[str]) -> None:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    got: Any = classify(texts, truncation=True, top_k=None, batch_size=4)
    want = model.predict(texts)
    for g, w in zip(got, want, strict=True):
        assert g[0]["label"] == w["label"]
        scores = {d["label"]: d["score"] for d in g}
        assert set(scores) == set(w["probabilities"])
        for label, p in w["probabilities"].items():
            assert abs(scores[label] - p) <= 1e-5, (label, scores[label], p)


# --------------------------------------------------------------------------- hf


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_folder_loads_in_a_plain_pipeline(
    tmp_path: Path, tiny_bert_dir: Path, pooling: str
) -> None:
    model = saved(tmp_path, ("hf", 0), tiny_bert_dir, pooling=pooling)
    folder = out(tmp_path)
    summary = formats.export_hf(model, folder)
    assert summary["format"] == "hf" and summary["pooling"] == pooling
    assert max(float(v) for v in summary["parity"]["max_abs_diff"].values()) <= 1e-5
    for name in ("config.json", "model.safetensors", "modeling_graft.py", "README.md"):
        assert name in summary["files"]
    import json

    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(LABELS)}
    assert config["label2id"] == {n: i for i, n in enumerate(LABELS)}
    assert "modeling_graft.GraftForSequenceClassification" in str(config["auto_map"])
    pipeline_matches_graft(model, folder, SENTENCES)


def test_hf_folder_refuses_to_load_without_trust_remote_code(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """Never silently a standard class with other predictions: it fails, naming the flag."""
    from transformers import AutoModelForSequenceClassification

    model = saved(tmp_path, ("hf", 0), tiny_bert_dir)
    folder = out(tmp_path)
    formats.export_hf(model, folder)
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False)


def test_hf_refuses_an_image_model(tmp_path: Path) -> None:
    model = saved(tmp_path, ("timm", 0), None)
    with pytest.raises(UsageError, match="text models") as e:
        formats.export_hf(model, out(tmp_path))
    assert "timm" in str(e.value) and "onnx" in str(e.value)


# --------------------------------------------------------------------------- timm


@pytest.mark.parametrize("index", [0, 1], ids=["test_efficientnet", "test_vit"])
def test_timm_folder_loads_in_plain_timm(tmp_path: Path, index: int) -> None:
    import json

    import timm

    model = saved(tmp_path, ("timm", index), None)
    folder = out(tmp_path)
    summary = formats.export_timm(model, folder)
    assert max(float(v) for v in summary["parity"]["max_abs_diff"].values()) <= 1e-5
    assert "local-dir:" in (folder / "README.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == model.backbone.spec["name"]
    assert config["num_classes"] == len(LABELS) and config["label_names"] == list(LABELS)
    cfg = config["pretrained_cfg"]
    prep = model.preprocess
    assert cfg["input_size"] == [3, 32, 32] and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == list(prep.mean) and cfg["std"] == list(prep.std)  # type: ignore[union-attr]
    from safetensors.torch import load_file

    keys = set(load_file(str(folder / "model.safetensors")))
    classifier = "classifier" if index == 0 else "head"
    assert {f"{classifier}.weight", f"{classifier}.bias"} <= keys

    x = torch.randn(9, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.backbone.model(pixel_values=x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            extra = {k: v for k, v in config["model_args"].items() if k != "num_classes"}
            overlay = timm.create_model(
                config["architecture"],
                pretrained=True,
                num_classes=len(LABELS),
                pretrained_cfg_overlay={
                    "file": str(folder / "model.safetensors"),
                    "num_classes": len(LABELS),
                },
                **extra,
            ).eval()
        assert float((local(x) - want).abs().max()) <= 1e-5
        assert float((overlay(x) - want).abs().max()) <= 1e-5
    pretrained_cfg: Any = local.pretrained_cfg
    assert pretrained_cfg["label_names"] == list(LABELS)


@pytest.mark.parametrize("family", ["hf", "torchvision"])
def test_timm_refuses_another_family(tmp_path: Path, tiny_bert_dir: Path, family: str) -> None:
    model = saved(tmp_path, (family, 0), tiny_bert_dir if family == "hf" else None)
    with pytest.raises(UsageError, match=f"of the {family} family") as e:
        formats.export_timm(model, out(tmp_path))
    assert "onnx" in str(e.value)


# --------------------------------------------------------------------------- torchscript


def test_torchscript_text_at_other_batch_sizes_and_lengths(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """Traced at one shape (batch 4, its padded length), run at others: nothing baked in."""
    model = saved(tmp_path, ("hf", 0), tiny_bert_dir)
    folder = out(tmp_path)
    summary = formats.export_torchscript(model, folder)
    assert "deprecated" in summary["note"] and "torch.export" in summary["note"]
    assert (folder / "graft_model.json").is_file() and (folder / "tokenizer").is_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(folder / "model.pt"))
    assert summary["exported_program"]["file"] == "model.pt2"
    assert "torch.export.load" in summary["load_with"]
    runs: list[Any] = [scripted, torch.export.load(str(folder / "model.pt2")).module()]
    for n, seed in ((1, 1), (5, 2), (13, 3)):
        examples = random_examples("text", n, LABELS, seed=seed)
        for _, inputs in model.batches(examples, n):
            # all padded to another length; a batch of one has no padding at all
            with torch.no_grad():
                want = model.backbone.model(**inputs)
                for run in runs:
                    got = run(inputs["input_ids"], inputs["attention_mask"])
                    assert got.shape == want.shape
                    assert float((got - want).abs().max()) <= 1e-5


def test_torchscript_image(tmp_path: Path) -> None:
    model = saved(tmp_path, ("timm", 0), None)
    folder = out(tmp_path)
    summary = formats.export_torchscript(model, folder)
    assert summary["exported_program"]["file"] == "model.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(folder / "model.pt"))
    for n in (1, 6):
        x = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            want = model.backbone.model(pixel_values=x)
            assert float((scripted(x) - want).abs().max()) <= 1e-5


# --------------------------------------------------------------------------- parity failures


def test_a_parity_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate 1e-3 off (a stand-in for an exporter bug) fails the export, saying by how
    much."""
    from graft.deploy import parity

    real = parity.check_parity

    def shifted(model: Any, reference: Any, candidate: Any, **kw: Any) -> Any:
        return real(model, reference, lambda inputs: candidate(inputs) + 1e-3, **kw)

    monkeypatch.setattr(formats, "check_parity", shifted)
    model = saved(tmp_path, ("timm", 0), None)
    with pytest.raises(DataError, match=r"timm export.*differ .* by up to 1\.00e-03"):
        formats.export_timm(model, out(tmp_path))


# --------------------------------------------------------------------------- real MiniLM


@pytest.mark.integration
def test_minilm_hf_export_in_a_pipeline(tmp_path: Path) -> None:
    from graft import assets
    from graft.models import build_backbone

    require_asset(assets.minilm_dir)
    torch.manual_seed(0)
    backbone = build_backbone("minilm", num_classes=2, max_length=64)
    with torch.no_grad():
        backbone.model.head.fc.weight.normal_(0, 0.5)
    save_model(tmp_path / "model", backbone, LabelMap(("negative", "positive")), plan={})
    model = load_model(tmp_path / "model")
    folder = out(tmp_path)
    formats.export_hf(model, folder)
    pipeline_matches_graft(model, folder, SENTENCES[:3] + SENTENCES[4:6])
