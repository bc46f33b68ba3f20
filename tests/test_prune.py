"""``graft prune``: magnitude and structured pruning, saving and loading pruned shapes, the
output directory, recovery fine-tuning through ``graft fit`` (``backbone.init_from``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    TINY_BACKBONES,
    Tiny,
    build_tiny,
    one_batch,
    require_asset,
    tiny_image_run_config,
    write_image_folder,
)
from torch import nn

from graft.artifact import LoadedModel, load_model, save_model
from graft.data.types import LabelMap
from graft.deploy import prune as pruning
from graft.deploy.prune import prunable_layers, prune, prune_backbone
from graft.errors import DataError, UsageError
from graft.models import Backbone

LABELS = LabelMap(("a", "b", "c"))
EFFICIENTNET, VIT = TINY_BACKBONES["timm"]
MOBILENET, RESNET = TINY_BACKBONES["torchvision"]
BERT = TINY_BACKBONES["hf"][0]


def _loaded(tiny: Tiny, bert: Path | None = None) -> LoadedModel:
    backbone = build_tiny(tiny, bert)
    backbone.model.eval()
    return LoadedModel(backbone, LABELS, {}, Path("."))


def _logits(backbone: Backbone, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    backbone.model.eval()
    with torch.no_grad():
        return backbone.model(**inputs)


def _round_trip(loaded: LoadedModel, info: dict[str, Any], folder: Path) -> LoadedModel:
    save_model(folder, loaded.backbone, LABELS, plan={}, provenance={"shapes": info["shapes"]})
    return load_model(folder)


def _out_channels(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


# --------------------------------------------------------------------------- magnitude


def test_magnitude_zeroes_exactly_the_smallest_weights_globally_and_permanently() -> None:
    loaded = _loaded(EFFICIENTNET)
    model = loaded.backbone.model
    layers = prunable_layers(model)
    assert any(n.startswith("head.") for n, _ in layers)  # the head is pruned too
    flat = torch.cat([m.weight.detach().abs().flatten() for _, m in layers]).clone()
    k = round(0.3 * flat.numel())
    threshold = torch.kthvalue(flat, k).values  # computed independently of torch's pruning
    info = prune_backbone(loaded, "magnitude", 0.3)
    after = torch.cat([m.weight.detach().flatten() for _, m in layers])
    zeroed = after == 0
    assert abs(int(zeroed.sum()) - k) <= 1
    assert info["sparsity"]["pruned_weights"] == pytest.approx(0.3, abs=1.5 / flat.numel())
    every = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert info["sparsity"]["overall"] == pytest.approx(float((every == 0).float().mean()))
    assert float(flat[zeroed].max()) <= float(threshold) <= float(flat[~zeroed].min())
    assert info["params_after"] == info["params_before"]  # zeros, not a smaller model
    keys = list(model.state_dict())
    assert not [k for k in keys if k.endswith(("_orig", "_mask"))]
    assert not list(model.buffers()) or all("mask" not in n for n, _ in model.named_buffers())
    assert info["shapes"] == {}


# --------------------------------------------------------------------------- structured


@pytest.mark.parametrize("tiny", [EFFICIENTNET, MOBILENET, RESNET], ids=lambda t: t.name)
def test_structured_cnn_is_smaller_runs_and_reloads_with_identical_logits(
    tiny: Tiny, tmp_path: Path
) -> None:
    loaded = _loaded(tiny)
    model = loaded.backbone.model
    channels = _out_channels(model)
    inputs = one_batch(loaded.backbone, n=3)
    info = prune_backbone(loaded, "structured", 0.3)
    assert info["params_after"] < 0.75 * info["params_before"]
    assert sum(p.numel() for p in model.parameters()) == info["params_after"]
    kept = _out_channels(model) / channels
    assert 0.6 < kept < 0.8, kept  # ~30% of the channels gone
    assert model.head.fc.out_features == 3  # the classes stay
    logits = _logits(loaded.backbone, inputs)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    # the layer groups follow the replaced parameters
    grouped = {id(p) for g in loaded.backbone.groups for _, p in g.params}
    assert grouped == {id(p) for p in model.parameters()}
    again = _round_trip(loaded, info, tmp_path / "model")
    assert torch.equal(_logits(again.backbone, inputs), logits)
    assert sum(p.numel() for p in again.backbone.model.parameters()) == info["params_after"]


def test_structured_bert_removes_heads_and_ffn_neurons_and_reloads(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    loaded = _loaded(BERT, tiny_bert_dir)
    inputs = one_batch(loaded.backbone, n=4)
    info = prune_backbone(loaded, "structured", 0.3)
    assert info["params_after"] < info["params_before"]
    encoder: Any = loaded.backbone.model.body.encoder
    for layer in encoder.encoder.layer:
        att = layer.attention.self
        assert att.num_attention_heads == 1 and att.all_head_size == 16  # 2 heads → 1
        assert att.query.out_features == att.key.out_features == att.value.out_features == 16
        assert layer.attention.output.dense.in_features == 16
        assert layer.intermediate.dense.out_features == 37 - 11  # round(0.3 × 37) neurons
        assert layer.output.dense.in_features == 26
        assert layer.attention.output.dense.out_features == 32  # hidden size kept
    assert info["details"]["heads_removed_per_layer"] == [1, 1]
    logits = _logits(loaded.backbone, inputs)
    assert torch.isfinite(logits).all()
    again = _round_trip(loaded, info, tmp_path / "model")
    body: Any = again.backbone.model.body
    att = body.encoder.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.all_head_size) == (1, 16)
    assert torch.equal(_logits(again.backbone, inputs), logits)


def test_a_vit_has_no_structured_rule_and_is_left_untouched() -> None:
    loaded = _loaded(VIT)
    before = {k: v.clone() for k, v in loaded.backbone.model.state_dict().items()}
    with pytest.raises(UsageError) as e:
        prune_backbone(loaded, "structured", 0.3)
    assert "Attention" in e.value.message and "magnitude" in (e.value.hint or "")
    after = loaded.backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_malformed_shapes_in_the_json_are_a_data_error_naming_it(tmp_path: Path) -> None:
    loaded = _loaded(EFFICIENTNET)
    folder = tmp_path / "model"
    save_model(folder, loaded.backbone, LABELS, plan={}, provenance={"shapes": {"nope": {}}})
    with pytest.raises(DataError, match=r"graft_model\.json.*nope"):
        load_model(folder)


# --------------------------------------------------------------------------- the output


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A saved tiny CNN (a bare model folder: no run around it)."""
    folder = tmp_path / "source" / "model"
    save_model(folder, build_tiny(EFFICIENTNET, None), LABELS, plan={})
    return folder


@pytest.mark.parametrize("amount", [0, 1, 1.5, -0.1])
def test_amounts_outside_zero_one_are_refused_before_anything(
    amount: float, model_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="--amount"):
        prune(model_folder, method="structured", amount=amount, out=out)
    assert not out.exists()


def test_an_existing_output_is_refused_without_force_and_left_alone(
    model_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        prune(model_folder, method="magnitude", amount=0.3, out=out, log=lambda _: None)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    prune(model_folder, method="magnitude", amount=0.3, out=out, force=True, log=lambda _: None)
    assert not (out / "keep.txt").exists() and (out / "model").is_dir()


def test_a_failure_mid_way_leaves_no_output(
    model_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pruning, "save_model", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk on fire"):
        prune(model_folder, method="structured", amount=0.3, out=out, log=lambda _: None)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_bare_model_folder_is_pruned_and_recorded_but_not_fine_tuned(
    model_folder: Path, tmp_path: Path
) -> None:
    out = prune(
        model_folder, method="structured", amount=0.5, out=tmp_path / "out", log=lambda _: None
    )
    meta = json.loads((out / "model" / "graft_model.json").read_text())
    info = meta["pruned"]
    assert {"method", "amount", "sparsity", "params_before", "params_after"} <= set(info)
    assert info["finetune_epochs"] == 0 and info["source"] == str(model_folder)
    assert info["params_after"] < info["params_before"] and meta["shapes"]
    loaded = load_model(out)
    assert sum(p.numel() for p in loaded.backbone.model.parameters()) == info["params_after"]
    with pytest.raises(UsageError, match="--finetune-epochs"):
        prune(model_folder, method="magnitude", amount=0.3, finetune_epochs=1, out=tmp_path / "o2")


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny CNN run on an image folder (60 random images, 3 classes)."""
    from graft.run import fit

    tmp = tmp_path_factory.mktemp("prune-images")
    write_image_folder(tmp / "data")
    config = tiny_image_run_config(
        {"path": str(tmp / "data")},
        tmp / "runs",
        init={"head": "linear_probe"},  # recovery must not refit (or refuse) the pruned head
        optim={"lr": 3e-3},
        output={"name": "run", "progress": False},
    )
    return fit(config, quiet=True).run_dir


def test_recovery_fine_tuning_trains_the_pruned_architecture(
    image_run: Path, tmp_path: Path
) -> None:
    def quiet(_: str) -> None:
        pass

    plain = prune(image_run, method="structured", amount=0.3, out=tmp_path / "p0", log=quiet)
    tuned = prune(
        image_run,
        method="structured",
        amount=0.3,
        finetune_epochs=1,
        out=tmp_path / "p1",
        log=quiet,
    )
    a, b = (
        load_model(plain).backbone.model.state_dict(),
        load_model(tuned).backbone.model.state_dict(),
    )
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    source = json.loads((image_run / "run.json").read_text())
    for out in (plain, tuned):
        assert (out / "config.yaml").read_text() == (image_run / "config.yaml").read_text()
        run_meta = json.loads((out / "run.json").read_text())
        assert run_meta["config_hash"] == source["config_hash"]
        assert run_meta["data_fingerprint"] == source["data_fingerprint"]
    results = json.loads((tuned / "results.json").read_text())
    accuracy = results["pruned"]["accuracy"]
    for stage in ("before", "after_pruning", "after_recovery"):
        assert 0 <= accuracy[stage]["validation"] <= 1 and accuracy[stage]["test"] is not None
    assert results["validation"]["accuracy"] == accuracy["after_recovery"]["validation"]
    assert results["pruned"]["finetune_epochs"] == 1
    original = json.loads((image_run / "results.json").read_text())
    assert accuracy["before"]["validation"] == pytest.approx(original["validation"]["accuracy"])


def test_the_cli_prunes_at_several_amounts_into_a_curve(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from graft.cli import prune as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "curve"
    args = parser.parse_args(
        [str(image_run), "--method", "magnitude", "--amount", "0.2,0.6", "-o", str(out)]
    )
    assert command.run(args) == 0
    printed = capsys.readouterr().out
    assert "not faster" in printed and "validation accuracy" in printed
    curve = json.loads((out / "results.json").read_text())["curve"]
    assert [c["amount"] for c in curve] == [0.2, 0.6]
    assert curve[0]["sparsity"]["pruned_weights"] < curve[1]["sparsity"]["pruned_weights"]
    for c in curve:
        assert load_model(out / c["dir"]).meta["pruned"]["amount"] == c["amount"]


def test_init_from_refuses_what_would_overwrite_or_rebuild_the_saved_model(
    model_folder: Path,
) -> None:
    from graft.config import validate
    from graft.prepare import configured_backbone

    base = {"name": "test_efficientnet", "source": "timm", "init_from": str(model_folder)}
    data = {"train": {"path": "unused"}}
    config = validate({"backbone": base, "data": data, "init": {"head": "linear_probe"}})
    with pytest.raises(UsageError, match=r"init\.head: linear_probe"):
        configured_backbone(config, 3)
    config = validate({"backbone": {**base, "keep_layers": [0]}, "data": data})
    with pytest.raises(UsageError, match="keep_layers"):
        configured_backbone(config, 3)
    config = validate({"backbone": base, "data": data})
    with pytest.raises(UsageError, match="classes"):
        configured_backbone(config, 3, label_names=["x", "y", "z"])
    backbone = configured_backbone(config, 3, label_names=["a", "b", "c"])
    saved = load_model(model_folder).backbone.model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in backbone.model.state_dict().items())


# --------------------------------------------------------------------------- MiniLM


@pytest.mark.integration
def test_real_minilm_structured_at_0_3_is_smaller_and_still_runs() -> None:
    from graft.assets import minilm_dir
    from graft.models import build_backbone

    folder = require_asset(minilm_dir)
    backbone = build_backbone(str(folder), num_classes=2, source="hf", max_length=32)
    loaded = LoadedModel(backbone, LabelMap(("neg", "pos")), {}, Path("."))
    info = prune_backbone(loaded, "structured", 0.3)
    assert info["params_after"] < info["params_before"]
    body: Any = backbone.model.body
    att = body.encoder.encoder.layer[0].attention.self
    assert att.num_attention_heads == 12 - 4  # round(0.3 × 12)
    probs = loaded.predict(["a quietly devastating film", "dull", "the plot was fine"])
    assert len(probs) == 3 and all(0 <= p["probability"] <= 1 for p in probs)
