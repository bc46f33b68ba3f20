"""One worker of a ``graft search``: trials in a loop until the budget is used up.

Each worker runs ``study.optimize(n_trials=1)`` in a loop: Optuna records states, heartbeats and
failures; the loop decides whether another trial may start (trial count, wall time). Each trial
is a plain :func:`graft.run.fit` in its own run directory; an epoch's validation metric is
reported to the pruner from ``fit``'s ``on_epoch`` callback, which raises
:class:`optuna.TrialPruned` to stop a weak trial. The objective value is the run's best
validation metric. A trial that raises is recorded FAILED with its error in the user attribute
``error``, and the search goes on.

``--workers N`` starts N processes (multiprocessing, spawn) on this machine, each with
``cores // N`` torch threads and a sampler seeded ``seed + worker``, so that their random
start-up trials differ.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.config import validate
from graft.console import RunLog
from graft.errors import GraftError
from graft.rundir import BEST_WEIGHTS, CHECKPOINT
from graft.search.space import apply_params, suggest
from graft.search.study import (
    LOG,
    FitFn,
    SearchSetup,
    effective_n_trials,
    n_counted,
    open_storage,
    open_study,
    quiet_optuna,
)


class _Surplus(Exception):
    """A trial numbered past the budget (another worker claimed the last one first)."""


@dataclass
class _Outcome:
    number: int = -1
    params: dict[str, Any] = field(default_factory=dict)
    surplus: bool = False


def trial_dir_name(number: int) -> str:
    return f"trial-{number:04d}"


def trial_config(setup: SearchSetup, params: Mapping[str, Any], number: int) -> Any:
    """The validated run config of one trial: base + sampled values, in its own directory."""
    data = apply_params(setup.base, params)
    data["output"] = {
        **(data.get("output") or {}),
        "dir": str(setup.search_dir),
        "name": trial_dir_name(number),
        "progress": False,
    }
    hardware = data["hardware"] = dict(data.get("hardware") or {})
    if setup.threads is not None and hardware.get("threads") is None:
        hardware["threads"] = setup.threads
    return validate(data, origin=f"trial {number}")


class _Reporter:
    """``fit``'s ``on_epoch``: report the epoch's metric, keep the best, prune when told."""

    def __init__(self, trial: Any, metric: str, maximize: bool) -> None:
        self.trial, self.metric, self.maximize = trial, metric, maximize
        self.best: float | None = None
        self.epochs = 0

    def __call__(self, record: dict[str, Any]) -> None:
        import math

        import optuna

        value = float(record[self.metric])
        self.epochs = int(record.get("epoch", self.epochs + 1))
        if math.isfinite(value) and (
            self.best is None or (value > self.best if self.maximize else value < self.best)
        ):
            self.best = value
        self.trial.report(value, self.epochs)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_epoch", self.epochs)
            if self.best is not None:
                self.trial.set_user_attr("best_value", self.best)
            raise optuna.TrialPruned(f"epoch {self.epochs}: {self.metric} {value:.4f}")


def _metrics_subset(m: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not m:
        return None
    keys = ("accuracy", "macro_f1", "rmse", "mae", "r2", "spearman", "map", "micro_f1", "loss")
    return {k: float(m[k]) for k in keys if k in m and m[k] is not None}


def _tidy_run_dir(run_dir: Path) -> None:
    """A pruned or failed trial's checkpoint and best weights are of no further use: drop them
    (a MiniLM checkpoint is hundreds of MB; a search makes many)."""
    for name in (CHECKPOINT, BEST_WEIGHTS):
        (run_dir / name).unlink(missing_ok=True)


def _objective(setup: SearchSetup, worker: int, outcome: _Outcome) -> Callable[[Any], float]:
    import optuna

    from graft.run import fit

    fit_fn: FitFn = setup.fit_fn or fit
    n_trials = effective_n_trials(setup.spec)

    def objective(trial: Any) -> float:
        outcome.number = trial.number
        if n_trials is not None and n_counted(trial.study, below=trial.number) >= n_trials:
            outcome.surplus = True
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number} is past n_trials={n_trials}")
        params = suggest(trial, setup.spec)
        outcome.params = params
        run_dir = setup.search_dir / trial_dir_name(trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}/{worker}")
        reporter = _Reporter(trial, setup.spec.metric, setup.spec.direction == "maximize")
        started = time.perf_counter()
        try:
            config = trial_config(setup, params, trial.number)
            result = fit_fn(config, quiet=True, on_epoch=reporter)
        except optuna.TrialPruned:
            trial.set_user_attr("wall_time_s", time.perf_counter() - started)
            _tidy_run_dir(run_dir)
            raise
        except Exception as e:
            message = e.message if isinstance(e, GraftError) else f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", message)
            trial.set_user_attr("wall_time_s", time.perf_counter() - started)
            _tidy_run_dir(run_dir)
            raise
        results = result.results
        trial.set_user_attr("wall_time_s", float(results.get("wall_time_s", 0.0)))
        trial.set_user_attr("epochs", reporter.epochs)
        trial.set_user_attr("validation", _metrics_subset(results.get("validation")))
        trial.set_user_attr("test", _metrics_subset(results.get("test")))
        if reporter.best is None:
            trial.set_user_attr("error", f"no finite {setup.spec.metric} in any epoch (diverged?)")
            raise GraftError(f"trial {trial.number}: the run diverged")
        return reporter.best

    return objective


# --------------------------------------------------------------------------- the worker loop


def _trial_line(t: Any, metric: str) -> str:
    state = t.state.name
    value = (
        f"{metric} {t.value:.4f}"
        if t.value is not None
        else f"best {metric} {t.user_attrs['best_value']:.4f}"
        if "best_value" in t.user_attrs
        else ""
    )
    extra = ""
    if state == "PRUNED" and "pruned_at_epoch" in t.user_attrs:
        extra = f" at epoch {t.user_attrs['pruned_at_epoch']}"
    if state == "FAIL":
        extra = f": {str(t.user_attrs.get('error', 'interrupted')).splitlines()[0]}"
    params = " ".join(f"{k}={format_value(v)}" for k, v in t.params.items())
    secs = t.user_attrs.get("wall_time_s")
    timing = f"  {secs:.0f}s" if isinstance(secs, int | float) else ""
    return f"trial {t.number} {state}{extra}  {value}  {params}{timing}".replace("  ", " ", 1)


def format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def run_worker(setup: SearchSetup, worker: int = 0) -> int:
    """Run trials until the budget (trials or wall time) is used up; return how many ran."""
    quiet_optuna()
    log = RunLog(quiet=setup.quiet)
    log.attach(setup.search_dir / LOG)
    prefix = f"[worker {worker}] " if setup.workers > 1 else ""
    storage = open_storage(setup.storage_url)
    study = open_study(setup, storage, worker=worker)
    n_trials = effective_n_trials(setup.spec)
    ran = 0
    while True:
        if setup.deadline is not None and time.time() >= setup.deadline:
            log(f"{prefix}wall-time budget used: no new trial")
            break
        if n_trials is not None and n_counted(study) >= n_trials:
            break
        outcome = _Outcome()
        study.optimize(
            _objective(setup, worker, outcome), n_trials=1, catch=(Exception,), gc_after_trial=True
        )
        if outcome.surplus or outcome.number < 0:
            break
        ran += 1
        (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == outcome.number]
        log(prefix + _trial_line(frozen, setup.spec.metric) + _best_suffix(study))
    return ran


def _best_suffix(study: Any) -> str:
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return ""
    return f"  (best: trial {best.number}, {best.value:.4f})"


def _worker_main(setup: SearchSetup, worker: int) -> None:
    """Entry point of a spawned worker process."""
    import torch

    if setup.threads is not None:
        torch.set_num_threads(setup.threads)
    run_worker(setup, worker)


def run_workers(setup: SearchSetup) -> None:
    if setup.workers == 1:
        run_worker(setup, 0)
        return
    # spawn: a fresh interpreter per worker (fork after torch/OpenMP initialised is unsafe).
    # OMP_WAIT_POLICY must be in the environment before a worker imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(setup, i)) for i in range(setup.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        raise
    bad = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"search workers {bad} exited with an error (see their output above)")
