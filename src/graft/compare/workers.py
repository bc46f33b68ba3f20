"""Many workers on one compare: each run is claimed from an Optuna study, as search trials are.

A compare's planned runs are the trials of one Optuna study, named after the compare directory
(``compare-<name>``): one enqueued trial per run, its name in the user attribute ``run``. A
worker takes the next run by asking the study for a trial (``study.optimize(n_trials=1)``), which
moves one WAITING trial to RUNNING in a single storage transaction, so two workers never take the
same run; the trial's state then records the run as running, complete or failed, and Optuna's
heartbeat fails the trial of a worker that died, after which Optuna's
``RetryHeartbeatStaleTrialCallback`` puts its run back in the queue for another worker (which
continues it from the run's last checkpoint).

- ``--workers N`` alone: an in-memory study shared by N threads of this process (nothing to
  store: the run directories are what a rerun resumes from). Each thread runs its runs as child
  ``graft fit`` processes with ``cores // N`` threads and ``OMP_WAIT_POLICY=PASSIVE``.
- ``--storage URL``: the study in an Optuna RDB storage (:func:`graft.search.study.open_storage`,
  the same as ``graft search``), so that ``--join`` processes on other machines take runs too.
  They need the compare directory at their ``output.dir``: a shared filesystem.

The starting process keeps its workers until every run is complete (taking over runs of dead
workers meanwhile), then writes the summary and the report; a joining process leaves when
nothing is left to take. Whatever the claiming, a run is :func:`graft.compare.execute.run_one`:
the same ``graft fit`` as in a serial compare, resumed by the state of its run directory.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.compare.execute import load_record, run_one
from graft.compare.spec import PlannedRun
from graft.compare.stats import RunRecord, ranking_of
from graft.console import RunLog
from graft.errors import GraftError, UsageError
from graft.rundir import run_state
from graft.search.study import open_storage, quiet_optuna, redact, study_exists

RUN_ATTR = "run"  # the user attribute that names a trial's run
POLL_S = 2.0  # how often a starting process with nothing to take looks at the study again


@dataclass(frozen=True)
class WorkerPlan:
    """What the workers of one process need."""

    compare_dir: Path
    runs: Sequence[PlannedRun]
    spec_hash: str
    storage_url: str | None  # None: an in-memory study, this process's workers only
    join: bool = False
    workers: int = 1
    threads: int | None = None  # each child's hardware.threads (unless its config sets them)
    isolate: bool = True
    verbose: bool = False

    @property
    def study_name(self) -> str:
        return self.compare_dir.name

    @property
    def where(self) -> str:
        url = "memory" if self.storage_url is None else redact(self.storage_url)
        return f"study {self.study_name!r} in {url}"


@dataclass
class _Shared:
    """What the worker threads of one process share."""

    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    ran: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Surplus(Exception):
    """A trial that is no run's: the queue emptied between a look at it and the ask."""


def latest_trials(study: Any) -> dict[str, Any]:
    """Each run's latest trial (a run that was taken over or resumed has several)."""
    latest: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get(RUN_ATTR)
        if isinstance(name, str) and (name not in latest or t.number > latest[name].number):
            latest[name] = t
    return latest


def _accuracy(record: RunRecord) -> float:
    """The run's value in the study: its ranking metric (accuracy; a regression's RMSE). A
    compare's study only hands out runs: the value informs, it steers no sampler."""
    metric = ranking_of([record]).metric
    value = record.score(metric, "test")
    value = record.score(metric, "validation") if value is None else value
    return float(value) if value is not None else 0.0


def open_compare_study(plan: WorkerPlan, log: RunLog) -> tuple[Any, Any]:
    """The compare's storage and study, created with one queued trial per run, or opened.

    A starting process (not ``--join``) on an existing study is a resume: trials left RUNNING by
    the killed compare are failed (user attribute ``interrupted``), and every run that is not
    finished on disk is queued again; finished runs are never queued."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    quiet_optuna()
    if plan.storage_url is None:
        storage: Any = optuna.storages.InMemoryStorage()
    else:
        storage = open_storage(
            plan.storage_url, stale_trial_callback=RetryHeartbeatStaleTrialCallback()
        )
    exists = study_exists(storage, plan.study_name)
    if plan.join and not exists:
        raise UsageError(
            f"--join: {plan.where} does not exist",
            hint="start the compare first: the same command without --join",
        )
    if exists:
        study = optuna.load_study(study_name=plan.study_name, storage=storage)
        if study.user_attrs.get("spec_hash") != plan.spec_hash:
            raise UsageError(
                f"{plan.where} belongs to a different compare (other strategies, seeds or configs)",
                hint="run the same config and options on every machine, or give another --name",
            )
    else:
        study = optuna.create_study(
            study_name=plan.study_name, storage=storage, direction="maximize"
        )
        study.set_user_attr("spec_hash", plan.spec_hash)
    if plan.join:
        return storage, study
    study_id = storage.get_study_id_from_name(plan.study_name)
    latest = latest_trials(study)
    interrupted = 0
    for run in plan.runs:
        t = latest.get(run.name)
        if t is not None and t.state == TrialState.RUNNING:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            interrupted += 1
        done = run_state(run.run_dir) == "done"
        if t is not None and t.state == TrialState.COMPLETE and done:
            continue
        if done:  # finished before this study knew of it (a serial compare, a deleted study)
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.COMPLETE,
                    value=_accuracy(load_record(run)),
                    user_attrs={RUN_ATTR: run.name, "finished_before": True},
                )
            )
        elif t is None or t.state != TrialState.WAITING:
            study.enqueue_trial({}, user_attrs={RUN_ATTR: run.name})
    if interrupted:
        log(f"resume: {interrupted} run(s) left running by the killed compare queued again")
    return storage, study


def _objective(
    plan: WorkerPlan, worker: int, shared: _Shared, log: RunLog
) -> Any:  # Callable[[optuna.Trial], float]
    by_name = {r.name: (i, r) for i, r in enumerate(plan.runs, start=1)}
    prefix = f"[worker {worker}] " if plan.workers > 1 else ""
    who = f"{socket.gethostname()}:{os.getpid()}/{worker}"

    def objective(trial: Any) -> float:
        name = trial.user_attrs.get(RUN_ATTR)
        if name not in by_name:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number} is no run's (the queue was empty)")
        index, run = by_name[name]
        trial.set_user_attr("worker", who)
        try:
            record = run_one(
                run,
                plan.compare_dir,
                log=log,
                position=f"{prefix}[{index}/{len(plan.runs)}]",
                isolate=plan.isolate,
                verbose=plan.verbose,
                threads=plan.threads,
                passive=plan.workers > 1,
            )
        except KeyboardInterrupt:
            # Hand the run back: another worker (or a rerun) continues it from its checkpoint.
            trial.set_user_attr("interrupted", True)
            trial.study.enqueue_trial({}, user_attrs={RUN_ATTR: name})
            raise
        except Exception as e:
            trial.set_user_attr("error", e.message if isinstance(e, GraftError) else repr(e))
            with shared.lock:
                shared.errors.append(e)
            shared.stop.set()
            raise
        if record is None:  # finished on disk already (e.g. by a worker whose trial was lost)
            trial.set_user_attr("finished_before", True)
            record = load_record(run)
        else:
            with shared.lock:
                shared.ran += 1
        return _accuracy(record)

    return objective


def _work(plan: WorkerPlan, storage: Any, worker: int, shared: _Shared, log: RunLog) -> None:
    """One worker: take runs until every run is complete (a starting process) or until none is
    left to take (a joining one)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    objective = _objective(plan, worker, shared, log)
    names = [r.name for r in plan.runs]
    while not shared.stop.is_set():
        optuna.storages.fail_stale_trials(study)  # a dead worker's run back in the queue
        latest = latest_trials(study)
        states = [latest[n].state if n in latest else None for n in names]
        if all(s == TrialState.COMPLETE for s in states):
            return
        failed = [
            latest[n]
            for n in names
            if n in latest
            and latest[n].state == TrialState.FAIL
            and "error" in latest[n].user_attrs
        ]
        if failed:  # a run's own error: the compare stops, as a serial one does
            t = failed[0]
            with shared.lock:
                shared.errors.append(
                    GraftError(
                        f"run {t.user_attrs[RUN_ATTR]} failed on worker "
                        f"{t.user_attrs.get('worker', '?')}: {t.user_attrs['error']}",
                        hint="fix it, then run the same `graft compare` again: it resumes",
                    )
                )
            shared.stop.set()
            return
        if TrialState.WAITING not in states:
            if plan.join:
                return
            shared.stop.wait(POLL_S)  # runs of other workers are still going
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


def run_workers(plan: WorkerPlan, log: RunLog) -> int:
    """Run the compare's runs with ``plan.workers`` workers in this process; return how many
    runs this process trained. Raises the first run's error (the other workers finish the run
    they are on and take no new one)."""
    storage, study = open_compare_study(plan, log)
    shared = _Shared()
    if plan.workers == 1:
        _work(plan, storage, 0, shared, log)  # this thread: an in-process fit needs the main one
    else:

        def guarded(worker: int) -> None:
            try:
                _work(plan, storage, worker, shared, log)
            except BaseException as e:  # re-raised by the main thread
                with shared.lock:
                    shared.errors.append(e)
                shared.stop.set()

        threads = [
            threading.Thread(target=guarded, args=(i,), name=f"compare-worker-{i}")
            for i in range(plan.workers)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            shared.stop.set()
            for t in threads:
                t.join()
            raise
    if shared.errors:
        raise shared.errors[0]
    latest = latest_trials(study)
    finished = sum(r.name in latest and latest[r.name].state.name == "COMPLETE" for r in plan.runs)
    if plan.join:
        log(
            f"nothing left to take: {finished} of {len(plan.runs)} runs finished, "
            f"{shared.ran} by this process; the starting process writes the summary"
        )
    return shared.ran
