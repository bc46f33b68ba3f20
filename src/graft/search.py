"""``graft search``: hyperparameter search over any config field, with Optuna.

Optuna (Akiba et al. 2019) provides the study, the samplers (grid, random, TPE, CMA-ES), the
pruners (median, successive halving, Hyperband) and the storage; this module turns a config's
``search:`` section (:mod:`graft.search_space`) into a study and runs trials, each trial a plain
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

import json
import multiprocessing
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from graft.atomic import atomic_write_text
from graft.config import apply_override, read_yaml, validate
from graft.console import RunLog
from graft.errors import GraftError, UsageError
from graft.search_space import (
    SEARCH_KEY,
    SearchSpec,
    apply_params,
    grid_size,
    grid_values,
    split_search,
    suggest,
)

STUDY_DB = "study.db"
SUMMARY = "search.json"
BEST_CONFIG = "best_config.yaml"
LOG = "search.log"
HEARTBEAT_S = 20
GRACE_S = 120
SQLITE_TIMEOUT_S = 60
FitFn = Callable[..., Any]


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class SearchSetup:
    """Everything a worker needs; plain data, so it can be sent to a spawned process."""

    base: dict[str, Any]
    spec: SearchSpec
    search_dir: Path
    storage_url: str
    study_name: str
    quiet: bool = False
    threads: int | None = None
    fit_fn: FitFn | None = None  # graft.run.fit; tests substitute a fast stand-in
    deadline: float | None = None  # time.time() after which no trial starts
    workers: int = 1


def load_search_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[dict[str, Any], SearchSpec]:
    """Read a search config: (base run config mapping, validated search spec). Overrides apply
    to the whole file, so ``search.n_trials=5`` works as well as ``optim.lr=1e-3``."""
    data = read_yaml(path)
    for override in overrides:
        apply_override(data, override)
    return split_search(data, str(path))


def default_storage(search_dir: Path) -> str:
    return f"sqlite:///{(search_dir / STUDY_DB).resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password, for logs and search.json."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, host = tail.rpartition("@")
        user, colon, _ = cred.partition(":")
        return f"{head}://{user}{':***' if colon else ''}@{host}"
    return url


def open_storage(url: str) -> Any:
    """An Optuna RDB storage with heartbeats (dead workers' trials get failed) and, for SQLite, a
    long lock timeout (several workers write to one file)."""
    import optuna

    url = with_installed_driver(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
            )
    except ImportError as e:
        raise UsageError(
            f"--storage {redact(url)}: the database driver is not installed ({e.__cause__ or e})",
            hint="for PostgreSQL: pip install 'graftkit[postgres]' (psycopg2-binary)",
        ) from None
    except Exception as e:  # sqlalchemy: bad URL, unreachable server, refused login
        raise UsageError(f"--storage {redact(url)}: cannot open the storage: {e}") from None


def with_installed_driver(url: str) -> str:
    """``postgresql://…`` with the PostgreSQL driver that is installed named in it.

    A plain ``postgresql://`` URL means SQLAlchemy's default driver, which changed from psycopg2
    (SQLAlchemy 2.0) to psycopg 3 (2.1): with ``graftkit[postgres]`` (psycopg2) installed, the
    URL the README shows failed under SQLAlchemy 2.1 with "No module named 'psycopg'". A URL that
    names its driver (``postgresql+psycopg2://``) is left as it is."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "postgresql":
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    return url  # none installed: opening it says which module is missing


def make_sampler(spec: SearchSpec, worker: int = 0) -> Any:
    """The sampler of the spec. CMA-ES models float and int parameters only; categorical and
    conditional ones are sampled independently by TPE (Optuna's independent sampler)."""
    import optuna

    s, seed = spec.sampler, spec.seed + worker
    if s.name == "grid":
        grid = {k: grid_values(k, p) for k, p in spec.space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            n_startup_trials=s.n_startup_trials,
            independent_sampler=optuna.samplers.TPESampler(seed=seed),
            warn_independent_sampling=False,
            seed=seed,
        )
    with warnings.catch_warnings():  # multivariate TPE is "experimental" in name only
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            n_startup_trials=s.n_startup_trials,
            multivariate=s.multivariate,
            group=s.multivariate,  # conditional spaces: model each sub-space on its own
            seed=seed,
        )


def make_pruner(spec: SearchSpec) -> Any:
    import optuna

    p = spec.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials,
            n_warmup_steps=p.n_warmup_steps,
            interval_steps=p.interval_steps,
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource,
            reduction_factor=p.reduction_factor,
            min_early_stopping_rate=p.min_early_stopping_rate,
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=p.max_resource,
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def _quiet_optuna() -> None:
    """Optuna logs each failed trial with its traceback; graft logs one line per trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _study_exists(storage: Any, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def _open_study(setup: SearchSetup, storage: Any, *, worker: int = 0) -> Any:
    import optuna

    return optuna.load_study(
        study_name=setup.study_name,
        storage=storage,
        sampler=make_sampler(setup.spec, worker),
        pruner=make_pruner(setup.spec),
    )


def create_or_load_study(setup: SearchSetup, mode: str, log: RunLog) -> Any:
    """``mode``: ``new`` (refuse an existing study), ``resume`` (a killed search: fail its
    leftover running trials) or ``join`` (a live study: leave running trials alone)."""
    import optuna

    storage = open_storage(setup.storage_url)
    exists = _study_exists(storage, setup.study_name)
    where = f"study {setup.study_name!r} in {redact(setup.storage_url)}"
    if mode == "new":
        if exists:
            raise UsageError(
                f"{where} already exists",
                hint="--resume continues it, --join adds workers to it, or choose --study-name",
            )
        study = optuna.create_study(
            study_name=setup.study_name,
            storage=storage,
            direction=setup.spec.direction,
            sampler=make_sampler(setup.spec),
            pruner=make_pruner(setup.spec),
        )
        study.set_user_attr("search_digest", setup.spec.digest())
        study.set_user_attr("metric", setup.spec.metric)
        for point in setup.spec.enqueue:
            study.enqueue_trial(point, skip_if_exists=True)
        return study
    if not exists:
        raise UsageError(f"{where} does not exist", hint="start it without --resume/--join")
    study = _open_study(setup, storage)
    if study.user_attrs.get("search_digest") != setup.spec.digest():
        raise UsageError(
            f"{where} was started with a different search (space, metric, sampler or pruner)",
            hint="resume with the same search: section, or start a new study (--study-name)",
        )
    if mode == "resume":
        n = _fail_interrupted(study, storage)
        if n:
            log(f"resume: {n} trial(s) left running by the killed search marked failed, rerun")
    return study


def _fail_interrupted(study: Any, storage: Any) -> int:
    """Mark the trials a killed search left RUNNING as FAILED (``interrupted``)."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            n += 1
        except Exception:  # finished meanwhile (a live worker elsewhere): nothing to do
            pass
    return n


# --------------------------------------------------------------------------- counting


def counts_toward_budget(t: Any) -> bool:
    """Whether a trial uses up one of ``n_trials``: finished ones (complete, pruned, failed with
    an error) and running ones; not interrupted, surplus or merely enqueued trials."""
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return t.state == TrialState.FAIL and "error" in t.user_attrs


def _n_counted(study: Any, below: int | None = None) -> int:
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if counts_toward_budget(t) and (below is None or t.number < below)
    )


def effective_n_trials(spec: SearchSpec) -> int | None:
    """``n_trials``, capped at the grid's size for the grid sampler (its default too)."""
    if spec.sampler.name != "grid":
        return spec.n_trials
    size = grid_size(spec)
    return size if spec.n_trials is None else min(spec.n_trials, size)


# --------------------------------------------------------------------------- one trial


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
    data.setdefault("output", {})
    data["output"] = {**(data["output"] or {}), "dir": str(setup.search_dir)}
    data["output"]["name"] = trial_dir_name(number)
    train = data.setdefault("train", {}) or {}
    data["train"] = train
    train["progress"] = False
    if setup.threads is not None and train.get("threads") is None:
        train["threads"] = setup.threads
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
    return {k: float(m[k]) for k in ("accuracy", "macro_f1", "loss") if k in m}


def _tidy_run_dir(run_dir: Path) -> None:
    """A pruned or failed trial's checkpoint and best weights are of no further use: drop them
    (a MiniLM checkpoint is hundreds of MB; a search makes many)."""
    from graft.checkpoint import CHECKPOINT

    for name in (CHECKPOINT, "best.safetensors"):
        (run_dir / name).unlink(missing_ok=True)


def _objective(setup: SearchSetup, worker: int, outcome: _Outcome) -> Callable[[Any], float]:
    import optuna

    from graft.run import fit

    fit_fn: FitFn = setup.fit_fn or fit
    n_trials = effective_n_trials(setup.spec)

    def objective(trial: Any) -> float:
        outcome.number = trial.number
        if n_trials is not None and _n_counted(trial.study, below=trial.number) >= n_trials:
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
    _quiet_optuna()
    log = RunLog(quiet=setup.quiet)
    log.attach(setup.search_dir / LOG)
    prefix = f"[worker {worker}] " if setup.workers > 1 else ""
    storage = open_storage(setup.storage_url)
    study = _open_study(setup, storage, worker=worker)
    n_trials = effective_n_trials(setup.spec)
    ran = 0
    while True:
        if setup.deadline is not None and time.time() >= setup.deadline:
            log(f"{prefix}wall-time budget used: no new trial")
            break
        if n_trials is not None and _n_counted(study) >= n_trials:
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


def _run_workers(setup: SearchSetup) -> None:
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


# --------------------------------------------------------------------------- the command


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
) -> SearchResult:
    """Run (or continue) a hyperparameter search as the config's ``search:`` section says.

    ``n_trials``/``timeout`` (seconds) override the section's. Writes ``study.db`` (unless
    ``storage`` names another database), one ``trial-NNNN/`` run directory per trial,
    ``search.log``, ``search.json``, ``best_config.yaml`` and ``report.html`` into
    ``<output.dir>/search-<study name>/``.
    """
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if resume and join:
        raise UsageError("give --resume or --join, not both")
    started = time.time()
    base, spec = load_search_config(config, overrides)
    updates: dict[str, Any] = {}
    if n_trials is not None:
        updates["n_trials"] = n_trials
    if timeout is not None:
        updates["timeout"] = timeout
    if updates:
        spec = spec.model_copy(update=updates)
    name = study_name or Path(config).stem
    search_dir = Path((base.get("output") or {}).get("dir") or "runs") / f"search-{name}"
    search_dir.mkdir(parents=True, exist_ok=True)
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
    _quiet_optuna()
    log = RunLog(quiet=quiet)
    log.attach(search_dir / LOG)
    mode = "resume" if resume else "join" if join else "new"
    study = create_or_load_study(setup, mode, log)
    if mode == "new":
        atomic_write_text(search_dir / "search.yaml", Path(config).read_text(encoding="utf-8"))
    _log_start(log, setup, study)
    _run_workers(setup)
    summary = summarize(study, setup)
    summary["wall_time_s"] = time.time() - started
    write_outputs(study, setup, summary, log)
    return SearchResult(search_dir, summary)


def _log_start(log: RunLog, setup: SearchSetup, study: Any) -> None:
    spec = setup.spec
    n = effective_n_trials(spec)
    done = _n_counted(study)
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
    log(f"storage {redact(setup.storage_url)}; trials in {setup.search_dir}")
    if spec.sampler.name == "cmaes" and any(p.type == "categorical" for p in spec.space.values()):
        log("cmaes: categorical parameters are sampled independently (TPE)")
    if spec.sampler.name == "grid" and spec.n_trials and spec.n_trials > (n or 0):
        log(f"grid: {grid_size(spec)} points, fewer than n_trials={spec.n_trials}")


# --------------------------------------------------------------------------- outputs


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
        "storage": redact(setup.storage_url),
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
        model = Path(t.get("run_dir", "")) / "model"
        if t.get("run_dir") and model.is_dir():
            shutil.rmtree(model, ignore_errors=True)


def write_outputs(study: Any, setup: SearchSetup, summary: dict[str, Any], log: RunLog) -> None:
    """search.json, best_config.yaml, report.html and the terminal table."""
    from graft.search_report import write_search_report

    d = setup.search_dir
    _keep_best_model_only(summary)
    best = summary["best"]
    files = {"summary": str(d / SUMMARY), "report": str(d / "report.html")}
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
    write_search_report(d / "report.html", summary)
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
