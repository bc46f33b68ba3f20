"""``graft validate``: everything a run would build, checked, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_image_run_config, write_yaml

from graft.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def sentiment_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved MiniLM model of VADER's classes, as `distill.teacher` of a shipped config (its
    weights do not matter to validation: only that it loads and knows the data's classes)."""
    from graft.artifact import save_model
    from graft.data.named import SENTIMENT_CLASSES
    from graft.data.types import LabelMap
    from graft.models import build_backbone

    folder = tmp_path_factory.mktemp("teacher") / "model"
    backbone = build_backbone("minilm", num_classes=2, max_length=64)
    save_model(folder, backbone, LabelMap(SENTIMENT_CLASSES), plan={})
    return folder


@pytest.mark.integration
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_validates_and_nothing_is_written(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(tmp_path)  # the configs' output.dir is relative: a write would land here
    # A distillation config names its teacher as a placeholder the user overrides.
    overrides = []
    if "distill" in config.stem:
        overrides.append(f"distill.teacher={request.getfixturevalue('sentiment_teacher')}")
    assert main(["validate", str(config), *overrides]) == 0
    out, err = capsys.readouterr()
    assert f"{config}: ok" in out
    assert "phase 0:" in err  # the plan table of each phase
    if "compare" in config.stem:
        assert "compare: full (" in err and "linear_probe (head" in err
    assert _listing(tmp_path) == []


def test_a_mistake_is_reported_as_a_run_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tmp_path / "c.yaml", tiny_image_run_config({"dataset": "digits"}, tmp_path))
    assert main(["validate", str(path), "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main(["validate", str(path), "strategy.name=partial", "strategy.k=99"]) == 2
    assert "strategy" in capsys.readouterr().err
    assert main(["validate", str(path), "--quiet"]) == 0
    assert _listing(tmp_path) == ["c.yaml"]


def test_a_compare_block_is_checked_with_its_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_image_run_config({"dataset": "digits"}, tmp_path)
    config["compare"] = {
        "strategies": ["full", "linear_probe"],
        "seeds": 2,
        "overrides": {"linear_probe": {"optim.lr": -3}},
    }
    path = write_yaml(tmp_path / "c.yaml", config)
    assert main(["validate", str(path)]) == 2
    assert "compare.strategies[1]" in capsys.readouterr().err
    config["compare"]["overrides"] = {"linear_probe": {"train.epochs": 4}}
    write_yaml(path, config)
    assert main(["validate", str(path)]) == 0
    assert "linear_probe (head 4 ep)" in capsys.readouterr().err
    assert _listing(tmp_path) == ["c.yaml"]


def test_a_search_block_is_checked_against_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_image_run_config({"dataset": "digits"}, tmp_path)
    config["search"] = {
        "n_trials": 2,
        "space": {"optim.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}},
    }
    path = write_yaml(tmp_path / "c.yaml", config)
    assert main(["validate", str(path)]) == 2
    assert "search.space.optim.lrr" in capsys.readouterr().err
    assert _listing(tmp_path) == ["c.yaml"]
