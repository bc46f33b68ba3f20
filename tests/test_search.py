"""``graft search``: the search space in YAML, its validation, and the study mechanics (pruning,
failures, resume, workers on one SQLite study), plus one search end to end through the real
``fit`` on digits.

Tests about study mechanics replace the trial's training with :func:`fake_fit`, a stand-in that
reports scripted validation metrics through ``on_epoch`` exactly as ``fit`` does (it is a module
function so that spawned worker processes can unpickle it).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import tiny_image_run_config, write_yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from graft.cli import main
from graft.config import RunConfig, validate
from graft.errors import UsageError
from graft.run import FitResult
from graft.search import BEST_CONFIG, default_storage, open_storage, redact, search
from graft.search.space import distributions, parse_search, split_search, suggest
from graft.units import parse_duration

# --------------------------------------------------------------------------- helpers

CALLS_FILE = "GRAFT_TEST_FIT_CALLS"  # env: a file where fake_fit appends one line per call
SLEEP = "GRAFT_TEST_FIT_SLEEP"  # env: seconds fake_fit sleeps per epoch


def fake_fit(config: RunConfig, *, quiet: bool = True, on_epoch: Any = None) -> FitResult:
    """A run in milliseconds: val_accuracy peaks at lr = 1e-3 and grows with the epoch; lr >= 1
    raises (a crashing trial). Each call is appended to the file named by $GRAFT_TEST_FIT_CALLS."""
    lr = config.optim.lr
    run_dir = Path(config.output.dir) / str(config.output.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get(CALLS_FILE):
        with open(os.environ[CALLS_FILE], "a", encoding="utf-8") as f:
            f.write(f"{config.output.name} {lr}\n")
    if lr >= 1.0:
        raise RuntimeError(f"exploded at lr {lr}")
    quality = max(0.0, 1.0 - abs(math.log10(lr) + 3.0) / 4.0)
    record: dict[str, Any] = {}
    for epoch in range(1, config.train.epochs + 1):
        time.sleep(float(os.environ.get(SLEEP, "0")))
        acc = quality * (0.5 + 0.5 * epoch / config.train.epochs)
        record = {"epoch": epoch, "val_accuracy": acc, "val_loss": 1 - acc, "val_macro_f1": acc}
        if on_epoch is not None:
            on_epoch(record)
    metrics = {"accuracy": record["val_accuracy"], "macro_f1": record["val_accuracy"], "loss": 0.5}
    return FitResult(run_dir, {"validation": metrics, "test": metrics, "wall_time_s": 0.01})


def base_config(out: Path) -> dict[str, Any]:
    return tiny_image_run_config(
        {"dataset": "digits"},
        out,
        data={"train_size": 150, "val_size": 50, "test_size": 50},
        train={"epochs": 2, "batch_size": 32},
        optim={"lr": 3e-3},
    )


SPACE: dict[str, Any] = {
    "optim.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
    "strategy.name": {"type": "categorical", "choices": ["full", "discriminative", "lp_ft"]},
    "strategy.decay": {
        "type": "float",
        "low": 0.5,
        "high": 0.95,
        "when": {"strategy.name": "discriminative"},
    },
    "train.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
}


def search_file(tmp_path: Path, name: str = "s", **search_opts: Any) -> Path:
    data = base_config(tmp_path / "runs")
    data["search"] = {"space": SPACE, "n_trials": 4, "sampler": "random", **search_opts}
    return write_yaml(tmp_path / f"{name}.yaml", data)


def study_of(tmp_path: Path, name: str = "s") -> optuna.Study:
    search_dir = tmp_path / "runs" / f"search-{name}"
    return optuna.load_study(study_name=name, storage=open_storage(default_storage(search_dir)))


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.txt"
    path.write_text("")
    monkeypatch.setenv(CALLS_FILE, str(path))
    return path


def call_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --------------------------------------------------------------------------- the space


def test_yaml_space_yields_the_declared_distributions(tmp_path: Path) -> None:
    _, spec = split_search(yaml.safe_load(search_file(tmp_path).read_text()), "s.yaml")
    dists = distributions(spec)
    assert dists == {
        "optim.lr": FloatDistribution(1e-5, 1e-1, log=True),
        "strategy.name": CategoricalDistribution(["full", "discriminative", "lp_ft"]),
        "strategy.decay": FloatDistribution(0.5, 0.95),
        "train.batch_size": IntDistribution(16, 64, step=16),
    }
    assert spec.space["strategy.decay"].when == {"strategy.name": "discriminative"}
    assert (spec.n_trials, spec.sampler.name, spec.pruner.name) == (4, "random", "median")
    assert spec.direction == "maximize"
    # The condition: decay is sampled for discriminative only.
    fixed = {"optim.lr": 1e-3, "strategy.name": "full", "train.batch_size": 32}
    assert suggest(optuna.trial.FixedTrial(fixed), spec) == fixed
    fixed_d = {**fixed, "strategy.name": "discriminative", "strategy.decay": 0.7}
    assert suggest(optuna.trial.FixedTrial(fixed_d), spec) == fixed_d


def test_sampler_and_pruner_options_and_durations() -> None:
    spec = parse_search(
        {
            "space": {"optim.lr": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.1}},
            "sampler": {"name": "grid"},
            "pruner": {"name": "hyperband", "min_resource": 1, "reduction_factor": 2},
            "timeout": "1h30m",
            "metric": "val_loss",
        }
    )
    assert spec.timeout == 5400 and spec.direction == "minimize"
    assert spec.pruner.name == "hyperband" and spec.pruner.reduction_factor == 2
    assert parse_duration("90s", "x") == 90 and parse_duration("15m", "x") == 900
    assert parse_duration(20, "x") == 20 and parse_duration("2.5m", "x") == 150
    for bad in ("15 minutes", "0s", "-3", "m", ""):
        with pytest.raises(UsageError, match="--budget"):
            parse_duration(bad, "--budget")


def test_storage_urls_are_logged_without_their_password() -> None:
    assert redact("postgresql://me:s3cret@db:5432/graft") == "postgresql://me:***@db:5432/graft"
    assert redact("postgresql://me@db/graft") == "postgresql://me@db/graft"
    assert redact("sqlite:////tmp/x/study.db") == "sqlite:////tmp/x/study.db"


def _with(space_key: str, value: Any) -> dict[str, Any]:
    return {**SPACE, space_key: value}


MALFORMED = [
    (
        {"space": _with("optim.lr", {"type": "float", "low": 1e-3, "high": 1e-5})},
        "search.space.optim.lr: low",
    ),
    (
        {"space": _with("optim.lr", {"type": "float", "low": 0.0, "high": 1.0, "log": True})},
        "search.space.optim.lr: a log range needs low > 0",
    ),
    ({"space": _with("optim.lr", {"low": 1e-5, "high": 1e-3})}, "search.space.optim.lr.type"),
    (
        {"space": _with("optim.lr", {"type": "float", "low": "tiny", "high": 1e-3})},
        "search.space.optim.lr.low",
    ),
    (
        {"space": _with("optim.lr", {"type": "float", "low": 1e-5, "high": 1e-3, "lg": True})},
        "search.space.optim.lr.lg: unknown field",
    ),
    (
        {"space": _with("optim.lrr", {"type": "float", "low": 1e-5, "high": 1e-3})},
        "search.space.optim.lrr",
    ),
    (
        {"space": _with("optim.name", {"type": "categorical", "choices": ["adamw", "adam_x"]})},
        "search.space.optim.name: the value 'adam_x'",
    ),
    (
        {"space": {"strategy.name": {"type": "categorical", "choices": ["full", "fool"]}}},
        "search.space.strategy.name: unknown strategy 'fool'",
    ),
    (
        {"space": _with("train.epochs", {"type": "int", "low": 0, "high": 3})},
        "search.space.train.epochs: the value 0",
    ),
    (
        {"space": {**SPACE, "strategy.decay": {**SPACE["strategy.decay"], "when": {"x.y": 1}}}},
        "search.space.strategy.decay.when: 'x.y'",
    ),
    ({"space": SPACE, "sampler": "bayes"}, "search.sampler: unknown name 'bayes'"),
    ({"space": SPACE, "pruner": {"name": "median", "warmup": 2}}, "search.pruner.warmup"),
    ({"space": SPACE, "sampler": "grid"}, "search.space.optim.lr: the grid sampler needs"),
    ({"space": SPACE, "n_trial": 3}, "search.n_trial: unknown field"),
    ({"space": SPACE, "timeout": "ten minutes"}, "search.timeout: not a duration"),
    ({"space": SPACE, "n_trials": None}, "search: give n_trials, timeout, or both"),
    ({"space": {}}, "search.space: give at least one parameter"),
    (
        {"space": SPACE, "n_trials": 2, "enqueue": [{"optim.momentum": 0.5}]},
        "search.enqueue.0: optim.momentum not in search.space",
    ),
]


@pytest.mark.parametrize(("search_block", "expected"), MALFORMED)
def test_malformed_space_is_a_usage_error_naming_the_field(
    tmp_path: Path, search_block: dict[str, Any], expected: str
) -> None:
    data = {**base_config(tmp_path), "search": {"n_trials": 2, **search_block}}
    with pytest.raises(UsageError) as info:
        split_search(data, "s.yaml")
    assert expected in str(info.value)


def test_cli_reports_a_malformed_space_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        **base_config(tmp_path / "runs"),
        "search": {
            "space": _with("optim.lrr", {"type": "float", "low": 1e-5, "high": 1e-3}),
            "n_trials": 2,
        },
    }
    path = write_yaml(tmp_path / "bad.yaml", data)
    assert main(["search", str(path)]) == 2
    assert "search.space.optim.lrr" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was written
    assert main(["search", str(search_file(tmp_path)), "--timeout", "5 parsecs"]) == 2
    assert "--timeout: not a duration" in capsys.readouterr().err


# --------------------------------------------------------------------------- study mechanics


def test_a_bad_trial_is_pruned(tmp_path: Path, calls: Path) -> None:
    space = {"optim.lr": {"type": "float", "low": 1e-6, "high": 0.5, "log": True}}
    path = search_file(
        tmp_path,
        space=space,
        n_trials=4,
        pruner={"name": "median", "n_startup_trials": 2},
        # two good trials set the median, then a far too small and a good learning rate
        enqueue=[{"optim.lr": 1e-3}, {"optim.lr": 5e-4}, {"optim.lr": 1e-6}, {"optim.lr": 1.2e-3}],
    )
    result = search(path, fit_fn=fake_fit, quiet=True)
    states = {t["number"]: t["state"] for t in result.summary["trials"]}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "COMPLETE"}
    pruned = result.summary["trials"][2]
    assert pruned["pruned_at_epoch"] == 1 and list(pruned["intermediate"]) == ["1"]
    assert result.summary["best"]["number"] == 0


def test_a_raising_trial_is_failed_with_its_error_and_the_study_goes_on(
    tmp_path: Path, calls: Path
) -> None:
    space = {"optim.lr": {"type": "float", "low": 1e-5, "high": 2.0, "log": True}}
    path = search_file(
        tmp_path,
        space=space,
        n_trials=3,
        enqueue=[{"optim.lr": 1e-3}, {"optim.lr": 1.5}, {"optim.lr": 3e-4}],
    )
    result = search(path, fit_fn=fake_fit, quiet=True)
    trials = result.summary["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1]["error"] == "RuntimeError: exploded at lr 1.5"
    assert result.summary["states"] == {"COMPLETE": 2, "FAIL": 1}
    assert len(call_lines(calls)) == 3
    log = (result.search_dir / "search.log").read_text()
    assert "trial 1 FAIL: RuntimeError: exploded at lr 1.5" in log


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test's own study.ask()
def test_resume_reruns_nothing_finished(
    tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = search_file(tmp_path, n_trials=5, pruner="none")

    # The first search is killed (Ctrl-C) in its third trial.
    def interrupt_on_third(config: RunConfig, **kw: Any) -> FitResult:
        if len(call_lines(calls)) == 2:
            with calls.open("a") as f:
                f.write(f"{config.output.name} interrupted\n")
            raise KeyboardInterrupt
        return fake_fit(config, **kw)

    with pytest.raises(KeyboardInterrupt):
        search(path, fit_fn=interrupt_on_third, quiet=True)
    # ... and a second worker died hard (kill -9) mid-trial: its trial is still RUNNING.
    study = study_of(tmp_path)
    study.ask()
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.RUNNING,
    ]
    # Without --resume, an existing study is refused.
    with pytest.raises(UsageError, match="already exists"):
        search(path, fit_fn=fake_fit, quiet=True)
    before = call_lines(calls)
    result = search(path, fit_fn=fake_fit, quiet=True, resume=True)
    new = call_lines(calls)[len(before) :]
    # 2 finished + 3 new = 5; the new calls run new trials only (numbers 4, 5, 6).
    assert [line.split()[0] for line in new] == ["trial-0004", "trial-0005", "trial-0006"]
    assert result.summary["states"] == {"COMPLETE": 5, "INTERRUPTED": 2}
    finished = [t for t in result.summary["trials"] if t["state"] == "COMPLETE"]
    assert len({t["number"] for t in finished}) == 5
    # A resume of a finished search runs nothing.
    result = search(path, fit_fn=fake_fit, quiet=True, resume=True)
    assert len(call_lines(calls)) == len(before) + 3


KILLED_SEARCH = """
import sys
sys.path.insert(0, {tests!r})
import graft.search.study as study
study.HEARTBEAT_S, study.GRACE_S = 1, 3  # seconds: a dead trial is stale after 3 s
from test_search import fake_fit
from graft.search import search
search({path!r}, fit_fn=fake_fit, quiet=True)
"""


def sigkill_a_search_in_its_third_trial(path: Path, calls: Path) -> None:
    """A real search process, killed with SIGKILL while its third trial runs: that trial is
    left RUNNING in the study, as a dead worker leaves it."""
    env = {**os.environ, CALLS_FILE: str(calls), SLEEP: "0.5"}
    code = KILLED_SEARCH.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 120
    while len(call_lines(calls)) < 3:
        assert proc.poll() is None, f"the search ended first (exit {proc.returncode})"
        assert time.monotonic() < deadline, "the search did not reach its third trial"
        time.sleep(0.05)
    # The third trial has started (its fit wrote its line; it sleeps 0.5 s). A moment more lets
    # Optuna's heartbeat thread record the trial's first heartbeat: a worker killed before that
    # leaves a trial no heartbeat can ever fail (Optuna's limit, not graft's).
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_resume_after_a_real_sigkill_reruns_nothing_finished(tmp_path: Path, calls: Path) -> None:
    path = search_file(tmp_path, n_trials=5, pruner="none")
    sigkill_a_search_in_its_third_trial(path, calls)
    states = [t.state for t in study_of(tmp_path).trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    before = len(call_lines(calls))
    result = search(path, fit_fn=fake_fit, quiet=True, resume=True)
    new = [line.split()[0] for line in call_lines(calls)[before:]]
    assert new == ["trial-0003", "trial-0004", "trial-0005"]
    assert result.summary["states"] == {"COMPLETE": 5, "INTERRUPTED": 1}
    (dead,) = [t for t in study_of(tmp_path).trials if t.state == TrialState.FAIL]
    assert dead.number == 2 and dead.user_attrs.get("interrupted") is True


def test_a_dead_workers_trial_is_failed_by_the_heartbeat_when_workers_join(
    tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--join leaves running trials alone (they may be live elsewhere); Optuna's heartbeat fails
    the one whose worker died once its heartbeat is older than the grace period, and its budget
    is spent again."""
    import graft.search.study as study_module

    path = search_file(tmp_path, n_trials=4, pruner="none")
    sigkill_a_search_in_its_third_trial(path, calls)
    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_module, "GRACE_S", 3)
    time.sleep(4.5)  # past the grace period since the dead trial's last heartbeat
    result = search(path, fit_fn=fake_fit, quiet=True, join=True)
    assert result.summary["states"] == {"COMPLETE": 4, "INTERRUPTED": 1}
    (dead,) = [t for t in study_of(tmp_path).trials if t.state == TrialState.FAIL]
    assert dead.number == 2 and "interrupted" not in dead.user_attrs  # the heartbeat's doing


def test_two_workers_on_one_sqlite_study_finish_exactly_n_distinct_trials(
    tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP, "0.1")  # trials overlap between the workers
    path = search_file(tmp_path, n_trials=8, pruner="none")
    result = search(path, fit_fn=fake_fit, quiet=True, workers=2)
    complete = [t for t in result.summary["trials"] if t["state"] == "COMPLETE"]
    assert len(complete) == 8
    assert len({t["number"] for t in complete}) == 8
    assert len({t["run_dir"] for t in complete}) == 8
    assert len({t["worker"].rsplit("/", 1)[1] for t in complete}) == 2  # both took part
    assert len(call_lines(calls)) == 8
    log = (result.search_dir / "search.log").read_text()
    assert "locked" not in log.lower() and "error" not in log.lower()


def test_grid_runs_every_point_once_and_cmaes_takes_categoricals(
    tmp_path: Path, calls: Path
) -> None:
    space = {
        "optim.lr": {"type": "categorical", "choices": [1e-4, 1e-3]},
        "train.epochs": {"type": "int", "low": 1, "high": 3, "step": 2},
    }
    result = search(
        search_file(tmp_path, "grid", space=space, sampler="grid", n_trials=None, pruner="none"),
        fit_fn=fake_fit,
        quiet=True,
    )
    points = {
        (t["params"]["optim.lr"], t["params"]["train.epochs"]) for t in result.summary["trials"]
    }
    assert points == {(1e-4, 1), (1e-4, 3), (1e-3, 1), (1e-3, 3)}
    result = search(
        search_file(tmp_path, "cma", sampler="cmaes", n_trials=4, pruner="none"),
        fit_fn=fake_fit,
        quiet=True,
    )
    assert result.summary["states"] == {"COMPLETE": 4}


# --------------------------------------------------------------------------- end to end


def test_search_end_to_end_through_the_real_fit(tmp_path: Path) -> None:
    data = base_config(tmp_path / "runs")
    data["search"] = {
        "n_trials": 3,
        "sampler": {"name": "tpe", "n_startup_trials": 2},
        "pruner": "median",
        "space": {
            "optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "strategy.name": {"type": "categorical", "choices": ["full", "discriminative"]},
            "strategy.decay": {
                "type": "float",
                "low": 0.5,
                "high": 0.9,
                "when": {"strategy.name": "discriminative"},
            },
        },
        "enqueue": [{"strategy.name": "discriminative"}],
    }
    path = write_yaml(tmp_path / "digits.yaml", data)
    assert main(["search", str(path), "--quiet", "train.epochs=1"]) == 0
    search_dir = tmp_path / "runs" / "search-digits"
    summary = json.loads((search_dir / "search.json").read_text())
    assert summary["states"] == {"COMPLETE": 3}
    first = summary["trials"][0]
    assert (
        first["params"]["strategy.name"] == "discriminative" and "strategy.decay" in first["params"]
    )
    assert {"accuracy", "loss"} <= set(first["validation"]) and first["test"] is not None
    assert first["value"] == pytest.approx(first["intermediate"]["1"])
    best = summary["best"]
    # The trial's run directory is a complete run; only the best trial keeps its model.
    best_dir = Path(best["run_dir"])
    assert (best_dir / "results.json").is_file() and (best_dir / "model").is_dir()
    others = [Path(t["run_dir"]) for t in summary["trials"] if t["number"] != best["number"]]
    assert all((d / "results.json").is_file() and not (d / "model").exists() for d in others)
    # best_config.yaml: the base config with the best values, ready for graft fit.
    config = validate(yaml.safe_load((search_dir / BEST_CONFIG).read_text()))
    assert config.optim.lr == pytest.approx(best["params"]["optim.lr"])
    assert config.strategy.name == best["params"]["strategy.name"]
    assert config.output.name is None and config.train.epochs == 1
    report = (search_dir / "report.html").read_text()
    for heading in ("Optimisation history", "Parallel coordinates", "Hyperparameter importances"):
        assert heading in report
    assert report.count("data:image/png;base64") >= 3
