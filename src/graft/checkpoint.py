"""The training checkpoint that makes ``--resume`` exact, and the run's provenance digests.

A checkpoint holds everything a resumed run needs to continue bit for bit where it stopped: the
model, the optimizer and scheduler of the current phase, the loop state (phase, epoch, batch
within the epoch and the epoch's running sums, optimizer step, per-step losses, best score and
epoch, early-stopping counter, history), every RNG state of the process, the plan, the config
hash and the data fingerprint. Data-loader workers need no saved state: every random draw of the
input pipeline is a pure function of (seed, epoch, batch), see :mod:`graft.pipeline`.

It is written by :func:`graft.atomic.atomic_write` (temporary file, fsync, rename), so a process
killed mid-write leaves the previous checkpoint intact, and it is never written with NaN/Inf
weights (the last good checkpoint survives a diverging run). It is read with
``torch.load(weights_only=True)``: no pickle code runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from graft.atomic import atomic_write, saving
from graft.config import config_hash as config_hash  # re-exported: checkpoints carry it
from graft.data.digest import hash_examples
from graft.errors import DataError, TrainingDiverged
from graft.safe_load import load_weights_only, non_finite, require_finite

if TYPE_CHECKING:
    from graft.data.types import Examples, Splits

CHECKPOINT = "checkpoint.pt"


def data_fingerprint(splits: Splits, unlabeled: Mapping[str, Examples] | None = None) -> str:
    """A hash of every example the run reads (train, validation, test, extra sets, in split
    order) and its label: the text itself, the pixels of in-memory images, the bytes of image
    files (one read of each file; not their names or dates, so a copied dataset still matches).
    A changed CSV, a relabeled example or an edited image changes it. ``unlabeled``: the sets
    whose labels a run never reads (``distill.unlabeled``, ``data.target_unlabeled``), by
    field, hashed without labels (none given: the same hash as before they existed)."""
    h = hashlib.blake2b(digest_size=16)
    named = [("train", splits.train), ("validation", splits.validation), ("test", splits.test)]
    for name, examples in [*named, *sorted(splits.extra.items())]:
        if examples is not None:
            h.update(f"\0{name}\0{len(examples)}\0".encode())
            hash_examples(h, examples)
    for name, examples in sorted((unlabeled or {}).items()):
        h.update(f"\0{name}\0{len(examples)}\0".encode())
        hash_examples(h, examples, labels=False)
    return h.hexdigest()


def rng_states() -> dict[str, Any]:
    """The process's RNG states: python, numpy, torch (CPU and every GPU)."""
    np_state: Any = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's state as plain lists, so weights_only loading accepts it
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the RNG states saved by :func:`rng_states`."""
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Run a block without touching the process's RNG streams: whatever it draws, the streams
    continue afterwards as if it had not run. The training loop sets up each phase (caches,
    prefix checks) inside it, so a checkpoint written just before a phase's set-up and one
    written just after resume alike."""
    saved = rng_states()
    try:
        yield
    finally:
        restore_rng_states(saved)


def save_checkpoint(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    plan: dict[str, Any],
    config_digest: str,
    data_digest: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically. Refuses (:class:`TrainingDiverged`) to replace the last
    good checkpoint by one with NaN/Inf weights or optimizer state; raises :class:`SaveError`
    when the disk is full or the write fails (the previous checkpoint stays intact)."""
    model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
    bad = non_finite(model_state) + non_finite(optimizer_state["state"])
    if bad:
        raise TrainingDiverged(
            f"training diverged: NaN or Inf in {', '.join(bad[:3])} at step {state['step']}",
            hint="the last good checkpoint is kept; lower optim.lr or set train.max_grad_norm",
        )
    payload = {
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "state": state,
        "plan": plan,
        "rng": rng_states(),
        "config_hash": config_digest,
        "data_fingerprint": data_digest,
    }
    if extra is not None:  # e.g. an adaptation's domain classifier (graft.adapt)
        payload["extra"] = extra
    path = run_dir / CHECKPOINT
    with saving(path, "checkpoint"):
        atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read the run's checkpoint (a :class:`DataError` if it is missing or unreadable)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise DataError(
            f"{path}: no checkpoint to resume from",
            hint="the run stopped before its first checkpoint; start it again without --resume",
        )
    checkpoint = load_weights_only(
        path,
        "checkpoint",
        hint="a graft checkpoint holds only tensors and plain data; do not resume from a file you "
        "did not make",
    )
    # A foreign file that loads (any state dict) must not fail later with a KeyError.
    if not isinstance(checkpoint, dict):
        raise DataError(f"{path}: not a graft checkpoint (a {type(checkpoint).__name__})")
    missing = [k for k in ("model", "state", "config_hash") if k not in checkpoint]
    if missing or not isinstance(checkpoint["model"], dict):
        what = f"no {', '.join(missing)}" if missing else "its model is not a state dict"
        raise DataError(f"{path}: not a graft checkpoint ({what})")
    require_finite(path, checkpoint["model"], "the checkpoint is damaged; start the run again")
    return checkpoint
