"""The outputs of a ``graft search``: ``search.json``, ``best_config.yaml``, the report and the
terminal table, all from the study alone (so they can be rebuilt after any resume).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from graft.atomic import atomic_write_text
from graft.config import validate
from graft.console import RunLog
from graft.rundir import MODEL_DIR, REPORT
from graft.search.space import SEARCH_KEY, apply_params
from graft.search.study import BEST_CONFIG, SUMMARY, SearchSetup, effective_n_trials, storage_label
from graft.search.worker import format_value


def _trial_record(t: Any) -> dict[str, Any]:
    start, end = t.datetime_start, t.datetime_complete
    state = t.state.name
    if state == "FAIL" and "error" not in t.user_attrs:
        state = "INTERRUPTED"
    return {
        "number": t.number,
        "state": state,
        "value": t.value,
        "params": dict(t.params),
        "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "duration_s": (end - start).total_seconds() if start and end else None,
        **{k: v for k, v in t.user_attrs.items() if k != "surplus"},
    }


def importances(study: Any) -> tuple[dict[str, float], str | None]:
    """fANOVA importances of the parameters over complete trials (Hutter et al. 2014), or the
    reason there are none (too few trials, nothing varied)."""
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        values = optuna.importance.get_param_importances(study, evaluator=evaluator)
        return {k: float(v) for k, v in values.items()}, None
    except Exception as e:  # optuna raises for < 2 complete trials or an empty common space
        return {}, str(e).splitlines()[0] if str(e) else type(e).__name__


def summarize(study: Any, setup: SearchSetup) -> dict[str, Any]:
    """The study as plain data (what search.json holds and the report shows)."""
    trials = [_trial_record(t) for t in study.get_trials() if "surplus" not in t.user_attrs]
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    maximize = setup.spec.direction == "maximize"
    best = (max if maximize else min)(complete, key=lambda t: t["value"]) if complete else None
    imp, why = importances(study)
    return {
        "study": setup.study_name,
        "storage": storage_label(setup.storage_url, setup.search_dir),
        "search_dir": str(setup.search_dir),
        "metric": setup.spec.metric,
        "direction": setup.spec.direction,
        "sampler": setup.spec.sampler.name,
        "pruner": setup.spec.pruner.name,
        "n_trials": effective_n_trials(setup.spec),
        "timeout_s": setup.spec.timeout,
        "states": states,
        "best": best,
        "importances": imp,
        "importances_note": why,
        "space": {
            k: p.model_dump(mode="json", exclude_none=True) for k, p in setup.spec.space.items()
        },
        "trials": trials,
    }


def best_config_mapping(setup: SearchSetup, params: Mapping[str, Any]) -> dict[str, Any]:
    """The base config with the best parameters set and ``output.name`` cleared: ready for
    ``graft fit`` (validated)."""
    data = apply_params(setup.base, params)
    output = data.get("output")
    if isinstance(output, dict):
        output.pop("name", None)
    data.pop(SEARCH_KEY, None)
    validate(data, origin=BEST_CONFIG)
    return data


def _keep_best_model_only(summary: dict[str, Any]) -> None:
    """Complete trials other than the best keep their logs, metrics and report but not their
    weights: only the best model is worth keeping (refit it with best_config.yaml if needed)."""
    best = summary["best"]
    for t in summary["trials"]:
        if t["state"] != "COMPLETE" or best is None or t["number"] == best["number"]:
            continue
        model = Path(t.get("run_dir", "")) / MODEL_DIR
        if t.get("run_dir") and model.is_dir():
            shutil.rmtree(model, ignore_errors=True)


def write_outputs(study: Any, setup: SearchSetup, summary: dict[str, Any], log: RunLog) -> None:
    """search.json, best_config.yaml, report.html and the terminal table."""
    from graft.reports.search import write_search_report

    d = setup.search_dir
    _keep_best_model_only(summary)
    best = summary["best"]
    files = {"summary": str(d / SUMMARY), "report": str(d / REPORT)}
    if best is not None:
        data = best_config_mapping(setup, best["params"])
        header = (
            f"# best config of search {setup.study_name!r}: trial {best['number']}, "
            f"{summary['metric']} {best['value']:.4f}\n# graft fit {d / BEST_CONFIG}\n"
        )
        atomic_write_text(d / BEST_CONFIG, header + yaml.safe_dump(data, sort_keys=False))
        files["best_config"] = str(d / BEST_CONFIG)
    summary["files"] = files
    atomic_write_text(d / SUMMARY, json.dumps(summary, indent=1, default=str))
    write_search_report(d / REPORT, summary)
    _print_table(log, summary)


def _print_table(log: RunLog, summary: dict[str, Any], top: int = 10) -> None:
    maximize = summary["direction"] == "maximize"
    scored = [t for t in summary["trials"] if t["value"] is not None]
    scored.sort(key=lambda t: t["value"], reverse=maximize)
    rows = [
        [
            t["number"],
            t["state"],
            f"{t['value']:.4f}",
            " ".join(f"{k}={format_value(v)}" for k, v in t["params"].items()),
            f"{t.get('wall_time_s') or 0:.0f}s",
        ]
        for t in scored[:top]
    ]
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary["states"].items()))
    headers = ["trial", "state", summary["metric"], "params", "time"]
    log.table(f"search {summary['study']}: {states}", headers, rows)
    files = summary["files"]
    if summary["best"] is None:
        log("no trial completed: no best config")
    else:
        log(f"best config: {files['best_config']}")
    log(f"report: {files['report']}   summary: {files['summary']}")
