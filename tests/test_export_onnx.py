"""graft export --format onnx, graft quantize, and ONNX models in graft eval / predict: parity
checked independently of the exporter's own check, dynamic axes, int8 weights really int8, the
accuracy before/after stored, and every refusal leaving nothing behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import (
    ALL_TINY,
    build_tiny,
    random_examples,
    require_asset,
    tiny_image_run_config,
    write_image_folder,
)

from graft import assets, fit
from graft.artifact import load_model, save_model
from graft.cli.app import main
from graft.data.types import LabelMap
from graft.deploy.export import export
from graft.deploy.onnx_model import ONNX_FILE
from graft.deploy.quantize import quantize
from graft.deploy.variants import load_predictor
from graft.errors import DataError, UsageError
from graft.models import build_backbone

LABELS = LabelMap(("a", "b", "c"))


def _saved(tiny: Any, bert: Path | None, folder: Path) -> Path:
    backbone = build_tiny(tiny, bert)
    save_model(folder, backbone, LABELS, plan={})
    return folder


def _ort_logits(folder: Path, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """ONNX Runtime run by hand on the exported file: not through graft's OnnxModel."""
    session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]


def _inputs(model: Any, n: int, seed: int) -> dict[str, torch.Tensor]:
    examples = random_examples(model.modality, n, list(LABELS.names), seed=seed)
    _, inputs = next(model.batches(examples, n))
    return inputs


@pytest.mark.parametrize("tiny", ALL_TINY, ids=lambda t: t.id)
def test_onnx_export_equals_eager_pytorch_at_three_batch_sizes(
    tiny: Any, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    bert = tiny_bert_dir if tiny.family == "hf" else None
    source = _saved(tiny, bert, tmp_path / "model")
    summary = export(source, "onnx", tmp_path / "onnx")
    assert set(summary["parity"]["max_abs_diff"]) == {"1", "7", "32"}
    eager = load_model(source)
    for n, seed in ((1, 1), (7, 2), (32, 3)):  # batch sizes, and texts of other lengths
        inputs = _inputs(eager, n, seed)
        with torch.no_grad():
            want = eager.backbone.model(**inputs).numpy()
        got = _ort_logits(tmp_path / "onnx", inputs)
        assert got.shape == (n, 3)
        assert np.abs(got - want).max() <= 1e-4
    meta = json.loads((tmp_path / "onnx" / "graft_model.json").read_text())
    assert meta["format"] == "onnx" and meta["labels"] == ["a", "b", "c"]
    assert (
        meta["onnx"]["opset"]
        == onnx.load(str(tmp_path / "onnx" / ONNX_FILE)).opset_import[0].version
    )


def test_text_export_has_dynamic_batch_and_sequence_axes(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    tiny = next(t for t in ALL_TINY if t.family == "hf")
    export(_saved(tiny, tiny_bert_dir, tmp_path / "model"), "onnx", tmp_path / "onnx")
    graph = onnx.load(str(tmp_path / "onnx" / ONNX_FILE)).graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, True], value.name


def test_predict_and_eval_run_an_onnx_model_like_the_pytorch_one(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = next(t for t in ALL_TINY if t.family == "hf")
    source = _saved(tiny, tiny_bert_dir, tmp_path / "model")
    export(source, "onnx", tmp_path / "onnx")
    texts = ["a good film", "the plot was dull and the actor awful", "fine"]
    outputs = []
    for model in (source, tmp_path / "onnx"):
        assert main(["predict", str(model), *texts, "--json"]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    for torch_row, onnx_row in zip(*outputs, strict=True):
        assert torch_row["label"] == onnx_row["label"]
        assert abs(torch_row["probability"] - onnx_row["probability"]) < 1e-5
    data = tmp_path / "data.csv"
    ex = random_examples("text", 20, ["a", "b", "c"], seed=5)
    data.write_text(
        "text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(ex.inputs, ex.labels, strict=True))
    )
    metrics = []
    for model in (source, tmp_path / "onnx"):
        assert main(["eval", str(model), "--path", str(data), "--json"]) == 0
        metrics.append(json.loads(capsys.readouterr().out))
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"]
    assert metrics[0]["confusion_matrix"] == metrics[1]["confusion_matrix"]


# --------------------------------------------------------------------------- refusals


def test_an_existing_output_is_refused_unless_forced(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = ALL_TINY[0]
    source = _saved(tiny, None, tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(source), "--format", "onnx", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(source), "--format", "onnx", "-o", str(out), "--force"]) == 0
    assert (out / ONNX_FILE).is_file() and not (out / "keep.txt").exists()


def test_a_failed_parity_check_says_by_how_much_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graft.deploy.onnx_model import OnnxModel

    source = _saved(ALL_TINY[0], None, tmp_path / "model")
    real_run = OnnxModel.run
    monkeypatch.setattr(
        OnnxModel, "run", lambda self, inputs, device=None: real_run(self, inputs) + 1e-2
    )
    with pytest.raises(DataError, match=r"differ from eager PyTorch's by up to 1\.00e-02"):
        export(source, "onnx", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left


def test_an_onnx_file_that_is_not_grafts_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved(ALL_TINY[0], None, tmp_path / "model")
    export(source, "onnx", tmp_path / "onnx")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / ONNX_FILE).write_bytes((tmp_path / "onnx" / ONNX_FILE).read_bytes())
    assert main(["predict", str(foreign), "x.png"]) == 3
    assert "not a graft ONNX model" in capsys.readouterr().err
    (tmp_path / "onnx" / ONNX_FILE).write_bytes(b"not a protobuf at all")
    with pytest.raises(DataError, match="ONNX Runtime can load"):
        load_predictor(tmp_path / "onnx")


def test_a_backend_the_model_is_not_for_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved(ALL_TINY[0], None, tmp_path / "model")
    export(source, "onnx", tmp_path / "onnx")
    assert main(["predict", str(tmp_path / "onnx"), "--backend", "torch", "x.png"]) == 2
    assert "cannot run on torch" in capsys.readouterr().err
    with pytest.raises(UsageError, match="export it first"):
        load_predictor(source, "onnxruntime")


# --------------------------------------------------------------------------- quantize


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN (BatchNorm) fine-tuned for one epoch on an image folder."""
    tmp = tmp_path_factory.mktemp("quantize-images")
    write_image_folder(tmp / "data")
    config = tiny_image_run_config({"path": str(tmp / "data")}, tmp / "runs")
    return fit(config, quiet=True).run_dir


def _int8_weights(path: Path) -> int:
    graph = onnx.load(str(path)).graph
    return sum(1 for t in graph.initializer if t.data_type == onnx.TensorProto.INT8)


def test_static_quantization_calibrates_and_stores_accuracy_before_and_after(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int8"
    assert main(["quantize", str(image_run), "-o", str(out), "--calibration", "20"]) == 0
    printed = capsys.readouterr().out
    assert "static" in printed and "test: accuracy" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["quantization"]["calibration_examples"] == 20
    assert _int8_weights(out / ONNX_FILE) > 0
    int8 = load_predictor(out)
    test = json.loads((image_run / "results.json").read_text())["test"]
    assert results["before"]["test"]["n"] == test["n"]
    # The stored "after" is what the written model measures.
    from graft.deploy.variants import variant_sets

    assert (
        int8.evaluate(variant_sets(int8)["test"])["accuracy"]
        == results["after"]["test"]["accuracy"]
    )
    assert not (out / "fp32").exists()


def test_dynamic_quantization_of_a_text_model_predicts(tiny_bert_dir: Path, tmp_path: Path) -> None:
    tiny = next(t for t in ALL_TINY if t.family == "hf")
    source = _saved(tiny, tiny_bert_dir, tmp_path / "model")
    summary = quantize(source, output=tmp_path / "int8")
    assert summary["quantization"]["method"] == "dynamic"
    assert summary["before"] == {}  # no run config: no data to measure on, and it says so
    assert _int8_weights(tmp_path / "int8" / ONNX_FILE) > 0
    predictions = load_predictor(tmp_path / "int8").predict(["a good film", "dull"])
    assert {p["label"] for p in predictions} <= {"a", "b", "c"}
    with pytest.raises(UsageError, match="quantized already"):
        quantize(tmp_path / "int8", output=tmp_path / "again")
    with pytest.raises(UsageError, match="calibrates on the run's training examples"):
        quantize(source, method="static", output=tmp_path / "static")
    assert not (tmp_path / "static").exists() and not (tmp_path / "again").exists()


def test_a_bad_calibration_size_is_refused(image_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--calibration 0"):
        quantize(image_run, method="static", calibration=0, output=tmp_path / "q")
    assert not (tmp_path / "q").exists()


# --------------------------------------------------------------------------- real models


@pytest.mark.integration
@pytest.mark.parametrize("name", ["minilm", "tf_efficientnet_lite0"])
def test_real_pretrained_models_export_with_parity(name: str, tmp_path: Path) -> None:
    require_asset(assets.minilm_dir if name == "minilm" else assets.efficientnet_lite0_weights)
    kwargs = {"max_length": 64} if name == "minilm" else {"image_size": 64}
    torch.manual_seed(0)
    backbone = build_backbone(name, num_classes=3, pretrained=True, **kwargs)
    save_model(tmp_path / "model", backbone, LABELS, plan={})
    summary = export(tmp_path / "model", "onnx", tmp_path / "onnx")
    assert max(summary["parity"]["max_abs_diff"].values()) <= summary["parity"]["tolerance"]
    eager = load_model(tmp_path / "model")
    inputs = _inputs(eager, 7, 11)
    with torch.no_grad():
        want = eager.backbone.model(**inputs).numpy()
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(_ort_logits(tmp_path / "onnx", inputs) - want).max() <= 1e-4 * scale


def test_exports_graft_does_not_run_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _saved(ALL_TINY[0], None, tmp_path / "model")
    for fmt, says in (("torchscript", "a torchscript export"), ("timm", "a Hugging Face or timm")):
        export(source, fmt, tmp_path / fmt)
        assert main(["predict", str(tmp_path / fmt), "x.png"]) == 3
        assert says in capsys.readouterr().err
