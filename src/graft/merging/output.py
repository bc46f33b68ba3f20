"""What ``graft interpolate`` and ``graft soup`` write: a directory laid out like a finished
run's (``model/``, ``results.json``, ``config.yaml``, ``run.json``, an empty ``metrics.jsonl``,
``report.html``), so that ``graft eval``, ``graft predict``, ``graft report`` and another
interpolation or soup read it as they read a run. It is written in a temporary directory beside
the target and renamed at the end: an error or a kill leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.artifact import save_model
from graft.atomic import atomic_write_text, check_target, staged_dir
from graft.data.types import LabelMap
from graft.errors import UsageError
from graft.models import Backbone
from graft.rundir import CONFIG, METRICS, MODEL_DIR, REPORT, RESULTS, RUN_META
from graft.runtime import environment, peak_rss_mb


def check_label(label: str) -> None:
    """``--label``: how the model's row is named in reports (letters, digits, _ - .)."""
    if not label or not label.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise UsageError(f"--label {label!r}: use letters, digits, _ - .")


def common_results(
    source: dict[str, Any], strategy: str, name: str, started: float, evaluated: dict[str, Any]
) -> dict[str, Any]:
    """The fields of a run's ``results.json`` for a merged model: ``evaluated`` (validation,
    test, extra), the strategy label of the report rows, and the costs. The wall time adds this
    command's to the source run's: a merged model costs its fine-tuning too."""
    own = time.perf_counter() - started
    return {
        **evaluated,
        "run": name,
        "backbone": source.get("backbone"),
        "strategy": strategy,
        "plan": source.get("plan"),
        "best_epoch": source.get("best_epoch"),
        "saved_epoch": source.get("saved_epoch"),
        "wall_time_s": float(source.get("wall_time_s") or 0.0) + own,
        "merge_time_s": own,
        "trainable_params": source.get("trainable_params"),
        "total_params": source.get("total_params"),
        "peak_rss_mb": peak_rss_mb(),
        "precision": source.get("precision"),
        "environment": environment(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "config_hash": source.get("config_hash"),
        "data_fingerprint": source.get("data_fingerprint"),
    }


def write_merged(
    target: Path,
    *,
    force: bool,
    source_run: Path,
    backbone: Backbone,
    label_map: LabelMap,
    results: dict[str, Any],
    details_key: str,
    render_report: Callable[[Path], str],
) -> Path:
    """Write the merged model's directory at ``target`` (see the module docstring).
    ``results[details_key]`` (the α curve, the soup's ingredients) also goes into the model's
    ``graft_model.json``; ``render_report(directory)`` returns the report's HTML."""
    check_target(target, force)
    with staged_dir(target, "merged model") as tmp:
        shutil.copyfile(source_run / CONFIG, tmp / CONFIG)
        meta = {
            "config_hash": results.get("config_hash"),
            "data_fingerprint": results.get("data_fingerprint"),
            "made_by": details_key,
        }
        atomic_write_text(tmp / RUN_META, json.dumps(meta))
        atomic_write_text(tmp / METRICS, "")
        backbone.model.to("cpu")
        save_model(
            tmp / MODEL_DIR,
            backbone,
            label_map,
            plan=results.get("plan") or {},
            metrics={k: results.get(k) for k in ("validation", "test", "extra")},
            provenance={
                "config_hash": str(results.get("config_hash")),
                "data_fingerprint": str(results.get("data_fingerprint")),
                details_key: results[details_key],
            },
        )
        atomic_write_text(tmp / RESULTS, json.dumps(results, indent=1))
        atomic_write_text(tmp / REPORT, render_report(tmp))
    return target
