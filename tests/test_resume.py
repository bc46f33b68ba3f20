"""Exact resume: a run killed after epoch 1 of 3 and resumed ends bit-identical to one that was
never interrupted (weights, history, results); a changed config or nothing to resume is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_image_run_config, write_yaml
from safetensors.torch import load_file

import graft.recorder
import graft.run
from graft.checkpoint import CHECKPOINT
from graft.cli import main
from graft.config import RunConfig, validate
from graft.errors import DataError, UsageError
from graft.run import fit

# Wall-clock measurements differ between any two runs; everything else must not.
TIMING = {"epoch_time_s", "samples_per_s"}


def digits_config(out: Path, **extra: Any) -> RunConfig:
    """scikit-learn digits (real, bundled) on the random-init timm test EfficientNet at 32 px."""
    data = tiny_image_run_config(
        {"dataset": "digits"},
        out,
        data={"train_size": 200, "val_size": 50, "test_size": 50},
        train={"epochs": 3, "batch_size": 32},
        optim={"lr": 3e-3},
        schedule={"name": "cosine", "warmup_ratio": 0.1},
    )
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return validate(data)


def history(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def weights(run_dir: Path) -> dict[str, Any]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def interrupt_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make training die (as on Ctrl-C) right after the first checkpoint is written."""
    real: Callable[..., None] = graft.recorder.save_checkpoint
    calls: list[int] = []

    def save_then_die(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        calls.append(kwargs["state"]["epoch"])
        raise KeyboardInterrupt

    monkeypatch.setattr(graft.recorder, "save_checkpoint", save_then_die)
    return calls


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    result = fit(digits_config(out), quiet=True)
    return result.run_dir


def test_resume_is_bit_identical(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = digits_config(tmp_path / "runs")
    calls = interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fit(config, quiet=True)
    assert calls == [1]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / CHECKPOINT).is_file() and not (run_dir / "results.json").exists()
    assert len(history(run_dir)) == 1

    # A resume with a changed config is refused, and leaves the run as it was.
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    changed = digits_config(tmp_path / "runs", optim={"lr": 1e-3})
    with pytest.raises(UsageError, match="different config"):
        fit(changed, resume=run_dir, quiet=True)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before

    monkeypatch.undo()
    result = fit(config, resume=True, quiet=True)
    assert result.run_dir == run_dir
    assert not (run_dir / CHECKPOINT).exists() and (run_dir / "results.json").is_file()

    # Same weights, bit for bit; same history, epoch by epoch; same results.
    ours, theirs = weights(run_dir), weights(uninterrupted)
    assert ours.keys() == theirs.keys()
    different = [k for k in ours if not ours[k].equal(theirs[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert history(run_dir) == history(uninterrupted)
    assert [r["epoch"] for r in history(run_dir)] == [1, 2, 3]
    res, ref = (json.loads((d / "results.json").read_text()) for d in (run_dir, uninterrupted))
    assert res["test"] == ref["test"] and res["validation"] == ref["validation"]
    assert res["best_epoch"] == ref["best_epoch"]


def test_resume_by_path_and_an_uninterrupted_run_is_deterministic(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference itself is reproducible (else bit-identity above would prove nothing about
    resume), and resuming by an explicit run directory works too."""
    config = digits_config(tmp_path / "runs", output={"name": "mine"})
    interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fit(config, quiet=True)
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "mine"
    fit(config, resume=str(run_dir), quiet=True)
    ours, theirs = weights(run_dir), weights(uninterrupted)
    assert all(ours[k].equal(theirs[k]) for k in ours)


def test_interrupt_before_any_checkpoint_leaves_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def die(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(graft.recorder, "save_checkpoint", die)
    with pytest.raises(KeyboardInterrupt):
        fit(digits_config(tmp_path / "runs"), quiet=True)
    assert not any((tmp_path / "runs").iterdir())


def test_resume_with_nothing_to_resume(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no unfinished run"):
        fit(digits_config(tmp_path / "runs"), resume=True, quiet=True)
    with pytest.raises(DataError, match="no checkpoint"):
        fit(digits_config(tmp_path / "runs"), resume=tmp_path / "empty", quiet=True)


def test_cli_resume_with_nothing_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    config = write_yaml(tmp_path / "run.yaml", digits_config(out).to_dict())
    code = main(["fit", str(config), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 3
    assert "no unfinished run" in err and str(out) in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
