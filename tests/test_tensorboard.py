"""TensorBoard event files: written per epoch, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest

import graft.tensorboard as tb
from graft.config import validate
from graft.errors import UsageError

MINIMAL = {"backbone": {"name": "x"}, "data": {"train": {"dataset": "digits"}}}


def _record(epoch: int) -> dict[str, object]:
    return {
        "epoch": epoch,
        "phase": "full",
        "phase_index": 0,
        "step": 10 * epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5 + 0.1 * epoch,
        "val_loss": 1.2 / epoch,
        "val_accuracy": 0.4 + 0.1 * epoch,
        "val_macro_f1": 0.35 + 0.1 * epoch,
        "lr": 1e-3 / epoch,
        "epoch_time_s": 2.0,
        "samples_per_s": 100.0,
        "flag": True,  # not a scalar
        "grad_norm": float("nan"),  # not finite: skipped
        "new_metric": 7,  # unknown keys still land, under other/
    }


def test_events_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for epoch in (1, 2, 3):
        events = tb.write_epoch(tmp_path, _record(epoch))
    assert events == tmp_path / "tensorboard"
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(tb.TAGS.values()) | {"other/new_metric"} == tags
    val = acc.Scalars("accuracy/validation")
    assert [e.step for e in val] == [1, 2, 3]
    assert [round(e.value, 5) for e in val] == [0.5, 0.6, 0.7]
    assert [round(e.value, 6) for e in acc.Scalars("loss/train")] == [1.0, 0.5, 0.333333]


def test_missing_package_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = tb.importlib.util.find_spec
    monkeypatch.setattr(
        tb.importlib.util, "find_spec", lambda name: None if name == "tensorboard" else real(name)
    )
    with pytest.raises(UsageError, match=r"graftkit\[tensorboard\]"):
        tb.write_epoch(tmp_path, _record(1))
    assert not (tmp_path / "tensorboard").exists()
    # The config refuses it up front, naming the field.
    with pytest.raises(UsageError, match=r"output\.tensorboard: .*pip install"):
        validate({**MINIMAL, "output": {"tensorboard": True}})
    assert validate({**MINIMAL, "output": {"tensorboard": False}}).output.tensorboard is False


def test_config_accepts_tensorboard_when_installed() -> None:
    assert validate({**MINIMAL, "output": {"tensorboard": True}}).output.tensorboard is True


def test_fit_writes_one_event_per_epoch(tmp_path: Path) -> None:
    """``output.tensorboard: true`` wires the writer into ``graft fit``: each epoch of
    metrics.jsonl is in the event files, at its epoch."""
    import json

    from conftest import tiny_image_run_config
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from graft.run import fit

    config = tiny_image_run_config(
        {"dataset": "digits"},
        tmp_path / "runs",
        data={"train_size": 64, "val_size": 32, "test_size": 32},
        train={"epochs": 2},
        output={"tensorboard": True},
    )
    result = fit(validate(config), quiet=True)
    history = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    acc = EventAccumulator(str(result.run_dir / tb.EVENTS_DIR))
    acc.Reload()
    events = acc.Scalars("accuracy/validation")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([r["val_accuracy"] for r in history])
