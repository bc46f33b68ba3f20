"""``graft search``: hyperparameter search over any config field, with Optuna.

Optuna (Akiba et al. 2019) provides the study, the samplers (grid, random, TPE, CMA-ES), the
pruners (median, successive halving, Hyperband) and the storage; this module turns a config's
``search:`` section (:mod:`graft.search.space`) into a study and runs trials, each trial a plain
:func:`graft.run.fit` in its own run directory under ``<output.dir>/search-<name>/``.

How the pieces fit:

- **Storage.** ``sqlite:///<search dir>/study.db`` by default (embedded, nothing to start), or
  any Optuna RDB URL (PostgreSQL, MySQL) so that workers on several machines share one study.
  SQLite connections wait up to 60 s for a lock instead of failing with "database is locked".
- **Trials.** Each worker runs ``study.optimize(n_trials=1)`` in a loop: Optuna records states,
  heartbeats and failures; the loop decides whether another trial may start (trial count, wall
  time). An epoch's validation metric is reported to the pruner from ``fit``'s ``on_epoch``
  callback, which raises :class:`optuna.TrialPruned` to stop a weak trial. The objective value is
  the run's best validation metric. A trial that raises is recorded FAILED with its error in the
  user attribute ``error``, and the search goes on.
- **Exactly n_trials.** Finished trials (complete, pruned, failed with an error) and trials
  running now count toward ``n_trials``, over all workers and resumes. A worker checks before it
  starts a trial, and again once the trial has its number (two workers may pass the first check
  at the same moment): a trial numbered past the budget is marked FAILED with the user attribute
  ``surplus`` and is left out of every count and report.
- **Resume.** ``--resume`` continues a killed search: trials it left RUNNING are marked FAILED
  (user attribute ``interrupted``), count for nothing, and their budget is run again with new
  samples; nothing finished is rerun. ``--join`` adds workers to a live study (another machine)
  and leaves running trials alone; a trial of a worker that died without a trace is failed by
  Optuna's heartbeat after ``GRACE_S`` seconds.
- **Workers.** ``--workers N`` starts N processes (multiprocessing, spawn) on this machine, each
  with ``cores // N`` torch threads and a sampler seeded ``seed + worker``, so that their random
  start-up trials differ.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.atomic import atomic_write_text, check_writable_dir
from graft.config import apply_override, read_yaml
from graft.console import RunLog
from graft.errors import GraftError, UsageError
from graft.inmemory import given_data
from graft.memory_files import with_files, write_files
from graft.search.space import grid_size, split_search
from graft.search.study import (
    BEST_CONFIG,
    LOG,
    SEARCH_YAML,
    FitFn,
    SearchSetup,
    create_or_load_study,
    default_storage,
    effective_n_trials,
    load_search_config,
    n_counted,
    open_storage,
    quiet_optuna,
    storage_label,
)
from graft.search.summary import summarize, write_outputs
from graft.search.worker import run_workers
from graft.tracking import parent_run


@dataclass
class SearchResult:
    """What :func:`search` returns: where its outputs are, and the summary it wrote."""

    search_dir: Path
    summary: dict[str, Any]

    @property
    def best_config(self) -> Path | None:
        path = self.search_dir / BEST_CONFIG
        return path if path.is_file() else None


def search(
    config: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    resume: bool = False,
    join: bool = False,
    n_trials: int | None = None,
    timeout: float | None = None,
    quiet: bool = False,
    fit_fn: FitFn | None = None,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    extra_eval: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Run (or continue) a hyperparameter search as the config's ``search:`` section says.

    ``n_trials``/``timeout`` (seconds) override the section's. Writes ``study.db`` (unless
    ``storage`` names another database), one ``trial-NNNN/`` run directory per trial,
    ``search.log``, ``search.json``, ``best_config.yaml`` and ``report.html`` into
    ``<output.dir>/search-<study name>/``. ``train``, ``validation``, ``test`` and
    ``extra_eval`` take data held in memory, as :func:`graft.fit` does: written once into the
    search directory (:mod:`graft.memory_files`), where every trial reads it.
    """
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if resume and join:
        raise UsageError("give --resume or --join, not both")
    started = time.time()
    given = given_data(extra_eval, train=train, validation=validation, test=test)
    base, spec, data_files = _search_config(config, overrides, study_name, given)
    updates: dict[str, Any] = {}
    if n_trials is not None:
        updates["n_trials"] = n_trials
    if timeout is not None:
        updates["timeout"] = timeout
    if updates:
        spec = spec.model_copy(update=updates)
    name = study_name or Path(config).stem
    search_dir = Path((base.get("output") or {}).get("dir") or "runs") / f"search-{name}"
    check_writable_dir(search_dir, "output.dir")
    if storage is not None:
        open_storage(storage)  # a bad URL is refused before the search directory exists
    created = not search_dir.exists()
    search_dir.mkdir(parents=True, exist_ok=True)
    write_files(data_files)
    cores = os.cpu_count() or 1
    setup = SearchSetup(
        base=base,
        spec=spec,
        search_dir=search_dir,
        storage_url=storage or default_storage(search_dir),
        study_name=name,
        quiet=quiet,
        threads=max(1, cores // workers) if workers > 1 else None,
        fit_fn=fit_fn,
        deadline=started + spec.timeout if spec.timeout is not None else None,
        workers=workers,
    )
    quiet_optuna()
    log = RunLog(quiet=quiet)
    mode = "resume" if resume else "join" if join else "new"
    try:
        study = create_or_load_study(setup, mode, log)
    except GraftError:
        if created:  # a usage mistake leaves nothing behind
            shutil.rmtree(search_dir, ignore_errors=True)
        raise
    log.attach(search_dir / LOG)
    if mode == "new":
        atomic_write_text(search_dir / SEARCH_YAML, Path(config).read_text(encoding="utf-8"))
    _log_start(log, setup, study)
    # With output.mlflow, every trial's run is nested under one parent MLflow run.
    with parent_run((base.get("output") or {}).get("mlflow", False), search_dir.name, base):
        run_workers(setup)
    summary = summarize(study, setup)
    summary["wall_time_s"] = time.time() - started
    write_outputs(study, setup, summary, log)
    return SearchResult(search_dir, summary)


def _search_config(
    config: str | Path, overrides: Sequence[str], study_name: str | None, given: Mapping[str, Any]
) -> tuple[dict[str, Any], Any, dict[Path, bytes]]:
    """(base config, spec, data files to write): with in-memory data, the base config's sources
    are the files it is written to in the search directory."""
    if not given:
        return (*load_search_config(config, list(overrides)), {})
    data = read_yaml(config)
    for override in overrides:
        apply_override(data, override)
    block = data.pop("search", None)
    out = Path((data.get("output") or {}).get("dir") or "runs")
    search_dir = out / f"search-{study_name or Path(config).stem}"
    data, files = with_files(data, given, search_dir)
    base, spec = split_search({**data, "search": block}, str(config))
    return base, spec, files


def _log_start(log: RunLog, setup: SearchSetup, study: Any) -> None:
    spec = setup.spec
    n = effective_n_trials(spec)
    done = n_counted(study)
    budget = [f"{n} trials" if n is not None else None]
    budget.append(f"{spec.timeout:.0f}s wall time" if spec.timeout is not None else None)
    log(
        f"search {setup.study_name!r}: {spec.sampler.name} sampler, {spec.pruner.name} pruner, "
        f"{spec.direction} {spec.metric}; budget "
        + " and ".join(b for b in budget if b)
        + (f" ({done} already counted)" if done else "")
        + f"; {setup.workers} worker(s)"
        + (f", {setup.threads} threads each" if setup.threads else "")
    )
    storage = storage_label(setup.storage_url, setup.search_dir)
    log(f"storage {storage}; trials in {setup.search_dir}")
    if spec.sampler.name == "cmaes" and any(p.type == "categorical" for p in spec.space.values()):
        log("cmaes: categorical parameters are sampled independently (TPE)")
    if spec.sampler.name == "grid" and spec.n_trials and spec.n_trials > (n or 0):
        log(f"grid: {grid_size(spec)} points, fewer than n_trials={spec.n_trials}")
