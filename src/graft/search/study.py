"""The study of a ``graft search``: its storage, sampler and pruner, and how trials count.

Optuna (Akiba et al. 2019) provides the study, the samplers (grid, random, TPE, CMA-ES), the
pruners (median, successive halving, Hyperband) and the storage: ``sqlite:///<search dir>/study.db``
by default (embedded, nothing to start), or any Optuna RDB URL (PostgreSQL, MySQL) so that workers
on several machines share one study. SQLite connections wait up to 60 s for a lock instead of
failing with "database is locked".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.config import apply_override
from graft.console import RunLog
from graft.errors import UsageError
from graft.search.space import SearchSpec, grid_size, grid_values, split_search
from graft.yaml_file import read_yaml

# The files of a search directory, beside one trial-NNNN/ run directory per trial.
STUDY_DB = "study.db"
SUMMARY = "search.json"
BEST_CONFIG = "best_config.yaml"
LOG = "search.log"
SEARCH_YAML = "search.yaml"  # the config the search was started with
HEARTBEAT_S = 20
GRACE_S = 120
SQLITE_TIMEOUT_S = 60
FitFn = Callable[..., Any]


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


def storage_label(url: str, search_dir: Path) -> str:
    """The storage as logs and reports name it: the default database by its name in the search
    directory (not this machine's absolute path), any other URL without its password."""
    if url == default_storage(search_dir):
        return f"{STUDY_DB} (SQLite, in the search directory)"
    return redact(url)


def redact(url: str) -> str:
    """The storage URL without its password, for logs and search.json."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, host = tail.rpartition("@")
        user, colon, _ = cred.partition(":")
        return f"{head}://{user}{':***' if colon else ''}@{host}"
    return url


def open_storage(url: str, stale_trial_callback: Callable[[Any, Any], None] | None = None) -> Any:
    """An Optuna RDB storage with heartbeats (dead workers' trials get failed) and, for SQLite, a
    long lock timeout (several workers write to one file). ``stale_trial_callback`` is called
    with (study, trial) for each trial the heartbeat fails (``graft compare`` re-enqueues its
    run there, with Optuna's ``RetryHeartbeatStaleTrialCallback``)."""
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
                heartbeat_stale_trial_callback=stale_trial_callback,
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


def quiet_optuna() -> None:
    """Optuna logs each failed trial with its traceback; graft logs one line per trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_exists(storage: Any, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def open_study(setup: SearchSetup, storage: Any, *, worker: int = 0) -> Any:
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
    exists = study_exists(storage, setup.study_name)
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
    study = open_study(setup, storage)
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
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            n += 1
        except UpdateFinishedTrialError:  # finished meanwhile (a live worker elsewhere)
            continue
    return n


# --------------------------------------------------------------------------- counting


def counts_toward_budget(t: Any) -> bool:
    """Whether a trial uses up one of ``n_trials``: finished ones (complete, pruned, failed with
    an error) and running ones; not interrupted, surplus or merely enqueued trials."""
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return t.state == TrialState.FAIL and "error" in t.user_attrs


def n_counted(study: Any, below: int | None = None) -> int:
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
