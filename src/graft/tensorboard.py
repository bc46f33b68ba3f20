"""Optional TensorBoard event files beside ``metrics.jsonl`` (``output.tensorboard: true``).

``metrics.jsonl`` stays the record graft reads; the event files are for people who already watch
their runs in TensorBoard (``tensorboard --logdir runs``). The package is an optional extra
(``pip install 'graftkit[tensorboard]'``); the config refuses ``output.tensorboard: true`` without
it, before anything runs.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from graft.errors import UsageError

EVENTS_DIR = "tensorboard"

# metrics.jsonl keys -> TensorBoard tags: train and validation of one quantity share a
# section, so TensorBoard draws them side by side.
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "val_macro_f1": "macro_f1/validation",
    "lr": "optim/lr",
    "epoch_time_s": "speed/epoch_time_s",
    "samples_per_s": "speed/samples_per_s",
}
_NOT_SCALARS = {"epoch", "step", "phase", "phase_index"}


def tensorboard_missing() -> str | None:
    """Why event files cannot be written here (``None`` when they can)."""
    if importlib.util.find_spec("tensorboard") is None:
        return (
            "output.tensorboard needs the tensorboard package: "
            "pip install 'graftkit[tensorboard]' (or set output.tensorboard: false)"
        )
    return None


def require_tensorboard() -> None:
    """Raise :class:`UsageError` when the tensorboard package is not installed."""
    reason = tensorboard_missing()
    if reason is not None:
        raise UsageError(reason)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard tags and values of one epoch record: known keys under their sections,
    any other finite number under ``other/<key>``."""
    out = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[TAGS.get(key, f"other/{key}")] = float(value)
    return out


def write_epoch(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Append one epoch's metrics (a ``metrics.jsonl`` record) to ``RUN_DIR/tensorboard``.

    The step is the record's ``epoch``. A writer is opened and closed per epoch: nothing is held
    open across a crash, and a resumed run simply adds files (TensorBoard merges every event file
    of a directory). Returns the events directory.
    """
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    events = Path(run_dir) / EVENTS_DIR
    step = int(record.get("epoch", 0))
    writer = SummaryWriter(log_dir=str(events))
    try:
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, global_step=step)
        phase = record.get("phase")
        if isinstance(phase, str):
            writer.add_text("phase", f"epoch {step}: {phase}", global_step=step)
    finally:
        writer.close()
    return events
