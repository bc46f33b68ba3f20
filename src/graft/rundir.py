"""The run directory: the contract between ``graft fit`` and everything that reads its output.

Every file name of a run lives here, and so do the readers every later layer uses (reports,
``compare``, ``search``, ``auto``): :func:`load_run`, :func:`run_state`, :func:`read_run_meta`.
The module imports neither torch nor matplotlib, so a report or a summary over many runs never
loads a model stack. ::

    RUN_DIR/
      config.yaml      the resolved config           log.txt        what was printed
      run.json         config hash, data fingerprint metrics.jsonl  one line per epoch
      steps.jsonl      one line per optimizer step   results.json   final metrics (a finished run)
      checkpoint.pt    while the run trains          best.safetensors  the best epoch's weights
      model/           model.safetensors + graft_model.json           report.html
      probe_head.safetensors   LP-FT: the head when its probe phase ended
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from graft.errors import DataError, UsageError

CONFIG = "config.yaml"
RUN_META = "run.json"
METRICS = "metrics.jsonl"  # one line per epoch
STEPS = "steps.jsonl"  # one line per optimizer step: its number and loss
RESULTS = "results.json"  # written last: its presence means the run finished
CHECKPOINT = "checkpoint.pt"
BEST_WEIGHTS = "best.safetensors"
# The head at the end of a probe phase followed by fine-tuning (LP-FT): with the pretrained body,
# the linear-probe end of a WiSE-FT interpolation (graft interpolate --base RUN_DIR).
PROBE_HEAD = "probe_head.safetensors"
LOG = "log.txt"
REPORT = "report.html"
MODEL_DIR = "model"
TENSORBOARD_DIR = "tensorboard"

RunState = Literal["done", "partial", "stale", "new"]

_NOT_A_RUN_HINT = (
    f"is this a graft run directory? `graft fit` writes {CONFIG}, {METRICS} and {RESULTS} into "
    "each run directory"
)


@dataclass(frozen=True)
class RunData:
    """The contents of one finished run directory, as read by :func:`load_run`."""

    run_dir: Path
    config_text: str
    history: list[dict[str, Any]]
    results: dict[str, Any]

    @property
    def name(self) -> str:
        """The run name from ``results.json``, else the directory name."""
        return str(self.results.get("run") or self.run_dir.name)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found", hint=_NOT_A_RUN_HINT)


def _read_text(path: Path) -> str:
    """A run file's text; a missing or unreadable file is a :class:`DataError` naming it."""
    _require_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


def read_history(path: Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl``: one JSON object per line (blank lines are skipped).

    Raises:
        DataError: the file is missing or unreadable, or a line is not a JSON object (the message
            names the line number).
    """
    text = _read_text(path)
    history: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {number} is not valid JSON ({exc.msg})",
                hint="the file may be truncated or edited by hand; fix or delete that line",
            ) from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is not a JSON object")
        history.append(record)
    return history


def read_results(path: Path) -> dict[str, Any]:
    """Read ``results.json`` (a JSON object).

    Raises:
        DataError: the file is missing, unreadable, not JSON or not a JSON object.
    """
    text = _read_text(path)
    try:
        results = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})",
            hint="the run may not have finished; rerun it or restore the file",
        ) from exc
    if not isinstance(results, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(results).__name__}")
    return results


def load_run(run_dir: Path) -> RunData:
    """Read the config text, the per-epoch history and the results of a run directory.

    Raises:
        DataError: the directory or one of its files is missing or malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a directory", hint=_NOT_A_RUN_HINT)
    config_text = _read_text(run_dir / CONFIG)
    results = read_results(run_dir / RESULTS)
    history = read_history(run_dir / METRICS)
    return RunData(run_dir=run_dir, config_text=config_text, history=history, results=results)


def run_state(run_dir: Path) -> RunState:
    """``done`` (results.json), ``partial`` (a checkpoint to resume), ``stale`` (a directory
    with neither: killed before its first epoch ended) or ``new``."""
    if (run_dir / RESULTS).is_file():
        return "done"
    if (run_dir / CHECKPOINT).is_file():
        return "partial"
    return "stale" if run_dir.exists() else "new"


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """The run's ``run.json`` (config hash, data fingerprint); empty if absent or unreadable."""
    try:
        meta = json.loads((run_dir / RUN_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def new_run_dir(root: Path, name: str | None, backbone: str, strategy: str) -> Path:
    """Where a new run goes: ``root/name`` (refused if it holds anything), else a fresh
    ``root/DATE-TIME-BACKBONE-STRATEGY`` (``-2``, ``-3``, ... when taken)."""
    if name:
        run_dir = root / name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(
                f"{run_dir}: run directory already exists",
                hint="use --resume to continue it, or choose another output.name",
            )
        return run_dir
    safe = backbone.replace("/", "_").replace(":", "_")
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{strategy}"
    run_dir, n = root / stem, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{stem}-{n}"
    return run_dir


def find_resumable(root: Path, name: str | None, digest: str) -> Path:
    """The newest unfinished run under ``root`` (or ``root/name``) whose config hash is
    ``digest``. Unfinished: no results yet, with or without a checkpoint (a run killed before
    its first one starts over)."""
    candidates = (
        [root / name]
        if name
        else sorted(
            (p for p in root.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
    )
    for run_dir in candidates:
        if (
            not (run_dir / RESULTS).is_file()
            and read_run_meta(run_dir).get("config_hash") == digest
        ):
            return run_dir
    raise DataError(
        f"{root}: no unfinished run with this config to resume",
        hint="start it without --resume, or give the run directory: --resume RUN_DIR",
    )
