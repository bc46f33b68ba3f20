"""Atomic file writes and the training checkpoint that makes ``--resume`` exact.

A checkpoint holds the model, the optimizer and scheduler of the current phase, the loop state
(phase, epoch, step, best score, early-stopping counter, history) and every RNG state. It is
written to a temporary file, fsynced, and renamed over the old one, so a crash mid-write leaves the
previous checkpoint intact. It is read with ``torch.load(weights_only=True)``: no pickle code runs.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.atomic import atomic_write
from graft.errors import DataError

CHECKPOINT = "checkpoint.pt"


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of the settings that change training (not where its output goes)."""
    relevant = {k: v for k, v in config.items() if k != "output"}
    relevant["train"] = {k: v for k, v in relevant.get("train", {}).items() if k != "progress"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def rng_states() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's state as plain lists, so weights_only loading accepts it
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    plan: dict[str, Any],
    config_digest: str,
) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state,
        "plan": plan,
        "rng": rng_states(),
        "config_hash": config_digest,
    }
    atomic_write(run_dir / CHECKPOINT, lambda f: torch.save(payload, f))


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise DataError(
            f"{path}: no checkpoint to resume from",
            hint="the run stopped before its first epoch ended; start it again without --resume",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise DataError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
