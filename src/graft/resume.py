"""``graft fit --resume``: what a resume checks and restores before the loop continues.

A resume continues the run recorded in a run directory: its checkpoint (model, optimizer,
scheduler, loop state, RNG states) if one was written, else the run starts over in the same
directory. A changed config or changed data is refused unless ``--force``. The loop restores
the optimizer, scheduler and RNG states itself (:func:`graft.train.train`, ``resume=``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from graft.atomic import atomic_write_text, remove_stale_temporaries, saving
from graft.checkpoint import load_checkpoint
from graft.console import RunLog
from graft.errors import DataError, UsageError
from graft.rundir import (
    BEST_WEIGHTS,
    CHECKPOINT,
    CONFIG,
    METRICS,
    REPORT,
    RESULTS,
    STEPS,
    read_run_meta,
)
from graft.safe_load import weights_mismatch
from graft.train import TrainState


def rewrite_logs(run_dir: Path, state: TrainState) -> None:
    """On resume, make metrics.jsonl and steps.jsonl say what the checkpoint says: lines a
    killed run wrote after its last checkpoint are dropped (they will be written again)."""
    metrics = "".join(json.dumps(r) + "\n" for r in state.history)
    steps = "".join(
        json.dumps({"step": i + 1, "loss": loss}) + "\n" for i, loss in enumerate(state.losses)
    )
    with saving(run_dir, "run logs"):
        atomic_write_text(run_dir / METRICS, metrics)
        atomic_write_text(run_dir / STEPS, steps)


def read_resume(run_dir: Path, digest: str, force: bool, log: RunLog) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None when the run was killed before its first one
    (it starts over in its directory). A different config is refused unless ``force``."""
    if (run_dir / RESULTS).is_file():
        raise DataError(
            f"{run_dir}: the run is finished (it has {RESULTS}); nothing to resume",
            hint="start a new run without --resume",
        )
    has_checkpoint, meta = (run_dir / CHECKPOINT).is_file(), read_run_meta(run_dir)
    if not has_checkpoint and not meta:
        raise DataError(
            f"{run_dir / CHECKPOINT}: no checkpoint to resume from",
            hint="not a graft run directory; start the run without --resume",
        )
    checkpoint = load_checkpoint(run_dir) if has_checkpoint else None
    check_config(run_dir, (checkpoint or meta).get("config_hash"), digest, force, log)
    return checkpoint


def check_config(
    run_dir: Path, recorded: str | None, digest: str, force: bool, log: RunLog
) -> None:
    """Refuse to continue a run with a config other than it started with, unless ``force``."""
    if recorded == digest:
        return
    if not force:
        raise UsageError(
            f"{run_dir}: the run was started with a different config",
            hint=f"compare with {run_dir / CONFIG}; --force resumes anyway",
        )
    log(f"warning: resuming {run_dir} with a different config (--force)")


def finish_pending(run_dir: Path, keep_checkpoint: bool) -> bool:
    """Whether a run has its results (it finished training and evaluation) but was killed
    before the clean-up and report that follow them."""
    if not (run_dir / RESULTS).is_file():
        return False
    leftovers = (run_dir / BEST_WEIGHTS).exists() or (
        not keep_checkpoint and (run_dir / CHECKPOINT).exists()
    )
    return leftovers or not (run_dir / REPORT).is_file()


def check_data(
    run_dir: Path, checkpoint: dict[str, Any] | None, fingerprint: str, force: bool, log: RunLog
) -> None:
    """Refuse to continue a run on data other than it started with, unless ``force``."""
    recorded = (checkpoint or {}).get("data_fingerprint") or read_run_meta(run_dir).get(
        "data_fingerprint"
    )
    if recorded is None or recorded == fingerprint:
        return
    if not force:
        raise DataError(
            f"{run_dir}: the data differ from those the run started with "
            f"(fingerprint {fingerprint}, was {recorded}): a file named by data.* changed",
            hint="restore the original data, or resume anyway with --force",
        )
    log(f"warning: resuming {run_dir} on changed data (--force)")


def last_checkpoint(run_dir: Path) -> str:
    """Where the last good checkpoint is, in words (it is never overwritten by a bad one)."""
    if not (run_dir / CHECKPOINT).is_file():
        return "no checkpoint was written before"
    step = load_checkpoint(run_dir)["state"]["step"]
    return f"the last good checkpoint (step {step}) is kept in {run_dir}"


def resume_state(
    run_dir: Path,
    checkpoint: dict[str, Any] | None,
    model: torch.nn.Module,
    log: RunLog,
    files: bool = True,
) -> TrainState:
    """Load the checkpoint's weights and loop state (RNG states are restored by the loop);
    clear what a killed run left half-done (``files``: this process owns the run directory,
    not a distributed run's rank > 0)."""
    if files:
        for stale in remove_stale_temporaries(run_dir / CHECKPOINT):
            log(f"removed {stale.name}: a checkpoint write that was cut off")
    state = TrainState()
    if checkpoint is None:
        log("no checkpoint yet: the run starts over")
    else:
        mismatch = weights_mismatch(model.state_dict(), checkpoint["model"])
        if mismatch:
            raise DataError(
                f"{run_dir / CHECKPOINT}: the weights do not fit this model: {mismatch}"
            )
        model.load_state_dict(checkpoint["model"])
        state = TrainState(**checkpoint["state"])
        log(
            f"resuming at epoch {state.epoch + 1}, batch {state.batch} "
            f"(phase {state.phase}, step {state.step})"
        )
    if files:
        rewrite_logs(run_dir, state)
    return state
