"""``graft compare --workers N`` and ``--storage URL --join``: runs claimed from one Optuna study.

Real tiny compares (scikit-learn digits, the random-init timm test EfficientNet, one thread per
run), each run a child ``graft fit``: ``--workers 2`` gives the runs and the weights of a serial
compare; a starting process and a ``--join`` process on a real PostgreSQL server train every run
exactly once; a worker killed with SIGKILL has its run taken over once Optuna's heartbeat goes
stale; and the usage mistakes are one-line errors with exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import tiny_image_run_config, write_yaml
from optuna.trial import TrialState

from graft.cli import main
from graft.compare import compare
from graft.errors import UsageError
from graft.search.study import open_storage

pytestmark = pytest.mark.integration
TESTS = Path(__file__).parent


def compare_file(tmp_path: Path, strategies: list[str], seeds: int, epochs: int = 1) -> Path:
    """A compare config of digits at 32 px (120 training images): a few seconds per child run."""
    data = tiny_image_run_config(
        {"dataset": "digits"},
        tmp_path / "out",
        data={"train_size": 120, "val_size": 40, "test_size": 60},
        train={"epochs": epochs, "batch_size": 40},
        optim={"lr": 3e-3},
    )
    data["compare"] = {"strategies": strategies, "seeds": seeds}
    return write_yaml(tmp_path / "c.yaml", data)


def weights_hash(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "model" / "model.safetensors").read_bytes()).hexdigest()


def epochs_of(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def study_trials(url: str, name: str) -> list[Any]:
    storage = open_storage(url)  # a plain postgresql:// URL with the installed driver
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


# --------------------------------------------------------------------------- --workers


def test_two_workers_finish_the_runs_of_a_serial_compare_with_the_same_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = compare_file(tmp_path, ["full", "linear_probe"], seeds=1)
    serial = compare(path, name="serial", isolate=False, quiet=True)
    assert main(["compare", str(path), "--name", "two", "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    cdir = tmp_path / "out" / "compare-two"
    assert out.startswith(f"{cdir}\treport {cdir / 'report.html'}")
    assert "[worker 0]" in err and "[worker 1]" in err  # both took a run
    names = [r.run_dir.name for r in serial.records]
    assert names == ["full-seed0", "linear_probe-seed0"]
    for name in names:
        assert weights_hash(cdir / name) == weights_hash(serial.compare_dir / name)
        ours = json.loads((cdir / name / "results.json").read_text())
        theirs = json.loads((serial.compare_dir / name / "results.json").read_text())
        assert ours["test"] == theirs["test"] and ours["validation"] == theirs["validation"]
    assert (cdir / "summary.json").is_file() and (cdir / "report.html").is_file()
    # Rerunning the same command trains nothing: every run is finished on disk.
    before = {n: (cdir / n / "results.json").stat().st_mtime_ns for n in names}
    assert main(["compare", str(path), "--name", "two", "--workers", "2", "--quiet"]) == 0
    assert {n: (cdir / n / "results.json").stat().st_mtime_ns for n in names} == before


# --------------------------------------------------------------------------- --join, PostgreSQL

JOIN = """
import sys, time
sys.path.insert(0, {tests!r})
import graft.search.study as study
if {fast_heartbeat!r}:  # seconds: a dead worker's run is stale after 3 s (the starter's too)
    study.HEARTBEAT_S, study.GRACE_S = 1, 3
from graft.cli import main
from pathlib import Path
while not Path({manifest!r}).is_file():  # the starting process writes it, then the study
    time.sleep(0.1)
for _ in range(100):
    code = main(["compare", {path!r}, "--storage", {url!r}, "--join"])
    if code != 2:  # 2: the study is not there yet
        sys.exit(code)
    time.sleep(0.2)
sys.exit(code)
"""


def start_joiner(path: Path, url: str, fast_heartbeat: bool = False) -> subprocess.Popen[str]:
    """A ``graft compare --join`` process, as a second machine starts it (it waits for the
    starting process to have created the compare). Every process of a compare must use the same
    heartbeat settings: a grace period shorter than another's heartbeat interval fails its live
    runs."""
    manifest = path.parent / "out" / "compare-c" / "compare.json"
    code = JOIN.format(
        tests=str(TESTS),
        manifest=str(manifest),
        path=str(path),
        url=url,
        fast_heartbeat=fast_heartbeat,
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )


def test_a_joining_process_takes_runs_through_postgresql_without_duplicates(
    postgres_url: str, tmp_path: Path
) -> None:
    path = compare_file(tmp_path, ["linear_probe"], seeds=3)
    joiner = start_joiner(path, postgres_url)
    try:
        result = compare(path, storage=postgres_url, quiet=True)
        output, _ = joiner.communicate(timeout=300)
    finally:
        joiner.kill()
    assert joiner.returncode == 0, output
    assert "nothing left to take" in output
    assert "joined:" in output
    names = ["linear_probe-seed0", "linear_probe-seed1", "linear_probe-seed2"]
    assert [r.run_dir.name for r in result.records] == names
    trials = study_trials(postgres_url, "compare-c")
    # One trial per run, each complete, none failed or run twice.
    assert sorted(t.user_attrs["run"] for t in trials) == sorted(names)
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    workers = {t.user_attrs["worker"].split("/")[0] for t in trials}
    assert len(workers) == 2  # both processes took runs
    for name in names:
        assert epochs_of(result.compare_dir / name) == [1]  # trained once
    assert (result.compare_dir / "summary.json").is_file()


# --------------------------------------------------------------------------- a killed worker


def test_a_killed_workers_run_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joining worker dies (SIGKILL) during its run: its child ``graft fit`` gets SIGTERM
    (parent-death signal) and stops; once its heartbeat is older than the grace period, the
    starting process queues the run again and finishes it."""
    import graft.search.study as study_module

    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_module, "GRACE_S", 3)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = compare_file(tmp_path, ["linear_probe"], seeds=3, epochs=2)
    joiner = start_joiner(path, url, fast_heartbeat=True)
    killed: list[str] = []

    def kill_the_joiner_in_its_run() -> None:
        deadline = time.monotonic() + 240
        manifest = tmp_path / "out" / "compare-c" / "compare.json"
        while time.monotonic() < deadline and joiner.poll() is None:
            if not manifest.is_file():  # the starter has not created the database yet
                time.sleep(0.2)
                continue
            try:
                trials = study_trials(url, "compare-c")
            except Exception:  # not created yet
                trials = []
            for t in trials:
                who = str(t.user_attrs.get("worker", ""))
                if t.state == TrialState.RUNNING and f":{joiner.pid}/" in who:
                    time.sleep(2.0)  # its child is training
                    joiner.send_signal(signal.SIGKILL)
                    killed.append(t.user_attrs["run"])
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_joiner_in_its_run)
    killer.start()
    try:
        result = compare(path, storage=url, quiet=True)
    finally:
        killer.join()
        joiner.kill()
    assert joiner.wait() == -signal.SIGKILL and len(killed) == 1
    trials = study_trials(url, "compare-c")
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.user_attrs["run"] == killed[0]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["run"] for t in complete) == [
        "linear_probe-seed0",
        "linear_probe-seed1",
        "linear_probe-seed2",
    ]
    (retried,) = [t for t in complete if t.user_attrs["run"] == killed[0]]
    assert f":{os.getpid()}/" in retried.user_attrs["worker"]  # taken over by the starter
    for r in result.records:
        assert epochs_of(r.run_dir) == [1, 2]  # no epoch twice: no orphan trained on
    assert (result.compare_dir / "report.html").is_file()


# --------------------------------------------------------------------------- usage mistakes


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--join"], "--join needs --storage"),
        (["--workers", "0"], "--workers 0: at least 1"),
        (["--workers", "999"], "--workers 999: more than this machine's"),
        (["--workers", "2", "--in-process"], "--in-process runs one fit at a time"),
        (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the storage"),
        (["--storage", "sqlite:///{tmp}/s.db", "--join"], "--join: no compare to join"),
    ],
)
def test_usage_mistakes_are_one_line_errors(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = compare_file(tmp_path, ["linear_probe"], seeds=1)
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    assert main(["compare", str(path), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert not (tmp_path / "out" / "compare-c").exists()  # nothing written


def test_join_of_a_compare_whose_study_is_elsewhere_is_refused(tmp_path: Path) -> None:
    """The compare directory exists (started without --storage), but no study to join."""
    path = compare_file(tmp_path, ["linear_probe"], seeds=1)
    (tmp_path / "out" / "compare-c").mkdir(parents=True)
    from graft.compare.spec import load_compare, manifest, open_compare_dir, plan_runs

    base, spec = load_compare(path)
    assert spec is not None
    cdir = tmp_path / "out" / "compare-c"
    open_compare_dir(cdir, manifest(spec, plan_runs(base, spec, cdir, str(path)), str(path)), False)
    with pytest.raises(UsageError, match=r"--join: study 'compare-c' in sqlite.* does not exist"):
        compare(path, storage=f"sqlite:///{tmp_path / 's.db'}", join=True, quiet=True)
