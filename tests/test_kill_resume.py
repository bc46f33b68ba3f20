"""Exact resume after real kills: ``graft fit`` processes are killed with SIGKILL at random steps
(and inside checkpoint writes), stopped by SIGTERM and Ctrl-C, hit by a full disk and by a
diverging loss; each time the resumed run must end bit-identical to an uninterrupted one:
weights, optimizer state, scheduler, RNG states, per-step losses, epoch history and results.

Every run is a real process running ``graft.cli.main(["fit", ...])``. To keep the whole module
within a CI budget on a 2-core machine, most are forked from one pre-imported "zygote" process
(torch, timm and scikit-learn are imported once instead of once per run: ~3 s each); one test
runs ``python -m graft.cli fit`` itself. The kill points are drawn from a seeded generator whose
seed is printed (``GRAFT_KILL_SEED=...`` reproduces the same draws).
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import torch
from conftest import tiny_image_run_config, write_yaml
from safetensors.torch import load_file

import graft.atomic
import graft.train
from graft.checkpoint import CHECKPOINT, load_checkpoint
from graft.cli import main

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 7  # 200 training examples in batches of 32
EPOCHS = 3
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
# Wall-clock measurements differ between any two runs; everything else must not.
TIMING = {"epoch_time_s", "samples_per_s", "time_s", "wall_time_s", "peak_rss_mb", "date"}
SEED = int(os.environ.get("GRAFT_KILL_SEED", time.time_ns() % 1_000_000))
print(f"kill points drawn with GRAFT_KILL_SEED={SEED}")
# Shown with any failure of this module (tests/conftest.py): the draws it needs to be repeated.
FAILURE_NOTE = f"kill points were drawn with GRAFT_KILL_SEED={SEED}; set it to draw them again"

# Forks one `graft fit` per job line read on stdin; answers {"pid"} when it starts and {"pid",
# "code"} when it ends (code: exit status, or -signal when a signal ended it).
ZYGOTE = r"""
import json, os, sys, traceback
import torch
torch.set_num_threads(1)  # before any parallel region: forking after one would be unsafe
import sklearn.datasets, timm, matplotlib.pyplot  # what every run imports: paid once
import graft.cli, graft.reports.run, graft.run
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)  # its own process group, like a job started from a shell
        if job.get("stall"):  # stop for good just before or after a named function, marked
            import importlib, time
            module_name, name, when = job["stall"]
            module = importlib.import_module(module_name)
            real = getattr(module, name)
            def stalled(*args, _real=real, _when=when, **kwargs):
                if _when == "before":
                    open(job["marker"], "w").close(); time.sleep(3600)
                out = _real(*args, **kwargs)
                open(job["marker"], "w").close(); time.sleep(3600)
                return out
            setattr(module, name, stalled)
        out = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        code = 1
        try:
            code = graft.cli.main(job["argv"])
        except BaseException:  # a bug: show it, as the interpreter would
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    """The pre-imported process that forks runs (see the module docstring)."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def _read(self, timeout: float) -> dict[str, Any]:
        stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer from the zygote in {timeout} s")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote ended (exit {self.proc.wait()})")
        return json.loads(line)

    def start(self, argv: list[str], log: Path, **job: Any) -> int:
        """Fork a run of ``argv``; ``stall=(module, function, "before"|"after")`` and
        ``marker=PATH`` make it stop for good at that point, after creating ``marker``."""
        stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        stdin.write(json.dumps({"argv": argv, "log": str(log), **job}) + "\n")
        stdin.flush()
        return int(self._read(120)["pid"])

    def wait(self, timeout: float = 120) -> int:
        return int(self._read(timeout)["code"])

    def run(self, argv: list[str], log: Path) -> int:
        self.start(argv, log)
        return self.wait()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


# --------------------------------------------------------------------------- configs and runs


def config(
    out: Path,
    name: str,
    strategy: str,
    *,
    num_workers: int = 0,
    checkpoint_every: int | None = None,
    checkpoint_minutes: float | None = 10.0,
) -> dict[str, Any]:
    """scikit-learn digits on the random-init timm test EfficientNet at 32 px: 7 steps an epoch,
    3 epochs. ``full`` adds random augmentation and head dropout, so that the loader's and the
    process's RNG streams both matter; ``gradual`` thaws two groups in three phases and trains
    on the feature cache (phase 0) and the frozen-prefix cache (phases 1, 2)."""
    strategies = {
        "full": ({"name": "full"}, {"augment": "light"}, {"head_dropout": 0.2}),
        "gradual": ({"name": "gradual", "max_groups": 2}, {}, {}),
    }
    plan, data, backbone = strategies[strategy]
    return tiny_image_run_config(
        {"dataset": "digits"},
        out,
        data={"train_size": 200, "val_size": 50, "test_size": 50, **data},
        backbone=backbone,
        strategy=plan,
        train={"epochs": EPOCHS, "batch_size": 32},
        hardware={"num_workers": num_workers},
        checkpoint={
            "keep": True,  # the final optimizer state, for the comparison
            "every": checkpoint_every,
            "minutes": checkpoint_minutes,
        },
        optim={"lr": 3e-3},
        schedule={"name": "cosine", "warmup_ratio": 0.1},
        output={"dir": str(out), "name": name},
    )


def fit_argv(path: Path, *extra: str) -> list[str]:
    return ["fit", str(path), "--quiet", *extra]


def step_count(run_dir: Path) -> int:
    try:
        return (run_dir / "steps.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def temporaries(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(f".{CHECKPOINT}.*.tmp"))


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def wait_for(condition: Any, what: str, timeout: float = 90.0, poll: float = 0.0005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(poll)


def kill_at(
    zygote: Zygote, argv: list[str], run_dir: Path, log: Path, step: int, in_write: bool
) -> tuple[int, bool]:
    """Start ``argv`` and SIGKILL it once it has logged ``step`` steps: at once (``in_write``:
    as soon as a checkpoint's temporary file exists, i.e. inside the write) or after a random
    pause of up to 20 ms (anywhere in the next step). Returns the steps logged when it died,
    and whether the kill left a half-written temporary file behind."""
    old = inode(run_dir / "steps.jsonl")  # a resume rewrites the file: wait for the new one
    pid = zygote.start(argv, log)
    wait_for(
        lambda: inode(run_dir / "steps.jsonl") not in (None, old) and step_count(run_dir) >= step,
        f"step {step}",
    )
    if in_write:
        wait_for(lambda: temporaries(run_dir), "a checkpoint write", timeout=30, poll=0.0002)
    else:
        time.sleep(random.Random(SEED + step).uniform(0, 0.02))
    os.kill(pid, signal.SIGKILL)
    code = zygote.wait()
    assert code == -signal.SIGKILL, f"the run was not killed (exit {code}); see {log}"
    return step_count(run_dir), bool(temporaries(run_dir))


# --------------------------------------------------------------------------- comparisons


def _drop_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_drop_timing(v) for v in value]
    return value


def _same(a: Any, b: Any, where: str, diffs: list[str]) -> None:
    """Bit-for-bit equality of nested checkpoint contents (tensors with ``equal``)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.equal(b)
        if not same:
            diffs.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            diffs.append(f"{where} keys")
        for k in a.keys() & b.keys():
            _same(a[k], b[k], f"{where}.{k}", diffs)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{where} length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _same(x, y, f"{where}[{i}]", diffs)
    elif a != b:
        diffs.append(f"{where}: {a!r} != {b!r}")


def assert_bit_identical(run_dir: Path, reference: Path) -> None:
    """Final checkpoint (weights, optimizer, scheduler, loop state with every step's loss, RNG
    states), saved model, step log, epoch history and results: all equal, bit for bit."""
    ours, theirs = load_checkpoint(run_dir), load_checkpoint(reference)
    assert len(ours["state"]["losses"]) == TOTAL_STEPS
    diffs: list[str] = []
    for key in ("model", "optimizer", "scheduler", "rng", "plan", "config_hash"):
        _same(ours[key], theirs[key], key, diffs)
    _same(_drop_timing(ours["state"]), _drop_timing(theirs["state"]), "state", diffs)
    assert not diffs, f"{len(diffs)} differences, e.g. {diffs[:5]}"
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (run_dir, reference))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    for name in ("steps.jsonl", "metrics.jsonl"):
        lines = [
            [_drop_timing(json.loads(x)) for x in (d / name).read_text().splitlines()]
            for d in (run_dir, reference)
        ]
        assert lines[0] == lines[1], name
    results = [json.loads((d / "results.json").read_text()) for d in (run_dir, reference)]
    for key in ("validation", "test", "best_epoch", "data_fingerprint", "config_hash"):
        assert results[0][key] == results[1][key], key
    assert not temporaries(run_dir)


@pytest.fixture(scope="module")
def references(zygote: Zygote, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted run per strategy, with workers 0 and the default checkpoint interval
    (both are excluded from the config hash, and must not change any result)."""
    out = tmp_path_factory.mktemp("reference")
    runs = {}
    for strategy in ("full", "gradual"):
        path = write_yaml(out / f"{strategy}.yaml", config(out, strategy, strategy))
        code = zygote.run(fit_argv(path), out / f"{strategy}.log")
        assert code == 0, (out / f"{strategy}.log").read_text()
        runs[strategy] = out / strategy
    return runs


def resume_to_end(zygote: Zygote, path: Path, run_dir: Path, log: Path) -> None:
    code = zygote.run(fit_argv(path, "--resume", str(run_dir)), log)
    assert code == 0, f"exit {code}: {log.read_text()}"


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(
    zygote: Zygote, references: dict[str, Path], tmp_path: Path, strategy: str, workers: int
) -> None:
    """One SIGKILL at a random step (for ``gradual``: inside phase 1 or 2, i.e. mid-plan and
    mid-phase, on a cache that the resume must recompute); checkpoints every 3 steps, so the
    resume also redoes the steps after the last checkpoint."""
    rng = random.Random(f"{SEED}-{strategy}-{workers}")
    low = STEPS_PER_EPOCH + 1 if strategy == "gradual" else 1
    step = rng.randrange(low, TOTAL_STEPS - 1)
    print(f"{strategy}, {workers} workers: SIGKILL after step {step}")
    path = write_yaml(
        tmp_path / "run.yaml",
        config(tmp_path, "run", strategy, num_workers=workers, checkpoint_every=3),
    )
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    reached, _ = kill_at(zygote, fit_argv(path), run_dir, log, step, in_write=False)
    if reached > 3:  # else killed before or inside the first checkpoint: the resume starts over
        checkpoint = load_checkpoint(run_dir)["state"]
        assert checkpoint["step"] <= reached  # a checkpoint every 3 steps and at epoch ends
        assert checkpoint["step"] % 3 == 0 or checkpoint["step"] % STEPS_PER_EPOCH == 0
    if strategy == "gradual":
        assert load_checkpoint(run_dir)["state"]["phase"] >= 1
    resume_to_end(zygote, path, run_dir, log)
    assert_bit_identical(run_dir, references[strategy])


@pytest.mark.parametrize("last", [1, 0])
def test_sigkill_in_the_last_two_steps_then_resume_is_bit_identical(
    zygote: Zygote, references: dict[str, Path], tmp_path: Path, last: int
) -> None:
    """A kill in the second-to-last or the last step (then the final epoch's evaluation and the
    finish follow: a kill up to 20 ms later lands in one of them)."""
    path = write_yaml(tmp_path / "run.yaml", config(tmp_path, "run", "full", checkpoint_every=3))
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    kill_at(zygote, fit_argv(path), run_dir, log, TOTAL_STEPS - last, in_write=False)
    assert not (run_dir / "report.html").exists()
    resume_to_end(zygote, path, run_dir, log)
    assert_bit_identical(run_dir, references["full"])


# The finish, stage by stage: the final evaluation, the saved model, results.json (the commit
# point; the clean-up and the report follow it).
FINISH_STAGES = [
    ("graft.run", "_final_results", "before"),
    ("graft.run", "save_model", "after"),
    ("graft.run", "_close", "before"),
]


@pytest.mark.parametrize("stage", FINISH_STAGES, ids=["final-eval", "model-saved", "results"])
def test_sigkill_during_the_finish_then_resume_completes_it_identically(
    zygote: Zygote,
    references: dict[str, Path],
    tmp_path: Path,
    stage: tuple[str, str, str],
) -> None:
    """Killed inside the finishing stage, a run is completed by ``--resume`` to the same model,
    results and report as an uninterrupted one (results.json is written last of what counts;
    the clean-up and the report after it are redone)."""
    path = write_yaml(tmp_path / "run.yaml", config(tmp_path, "run", "full"))
    run_dir, log, marker = tmp_path / "run", tmp_path / "run.log", tmp_path / "stalled"
    pid = zygote.start(fit_argv(path), log, stall=list(stage), marker=str(marker))
    wait_for(marker.exists, f"the run to reach {stage}", timeout=120)
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait() == -signal.SIGKILL
    assert not (run_dir / "report.html").exists()
    assert (run_dir / "results.json").exists() == (stage[1] == "_close")
    resume_to_end(zygote, path, run_dir, log)
    assert_bit_identical(run_dir, references["full"])
    assert (run_dir / "report.html").is_file() and not (run_dir / "best.safetensors").exists()


def test_many_kills_inside_checkpoint_writes(
    zygote: Zygote, references: dict[str, Path], tmp_path: Path
) -> None:
    """Torture: a checkpoint after every step, killed again and again, half of the kills aimed
    at the moment a checkpoint's temporary file exists. Every resume loads its checkpoint (a
    load error would fail the resume), and the end is still bit-identical."""
    rng = random.Random(f"{SEED}-torture")
    kills = sorted(rng.sample(range(1, TOTAL_STEPS - 1), 12))
    print(f"SIGKILL after steps {kills}")
    path = write_yaml(tmp_path / "run.yaml", config(tmp_path, "run", "full", checkpoint_every=1))
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    mid_write = 0
    for n, step in enumerate(kills):
        argv = fit_argv(path, "--resume", str(run_dir)) if n else fit_argv(path)
        reached, cut_off = kill_at(zygote, argv, run_dir, log, step, in_write=n % 2 == 0)
        mid_write += cut_off
        # One checkpoint per step: the newest complete one is that of the last step logged, or
        # the one before when the kill cut its write off (none, if that was the first).
        newest = load_checkpoint(run_dir)["state"]["step"] if reached > 1 or not cut_off else 0
        assert reached - 1 <= newest <= reached, (reached, newest)
    print(f"{mid_write} kills left a half-written checkpoint behind")
    assert mid_write >= 1, "no kill landed inside a checkpoint write"
    resume_to_end(zygote, path, run_dir, log)
    assert "unreadable checkpoint" not in log.read_text()
    cleaned = (run_dir / "log.txt").read_text().count("a checkpoint write that was cut off")
    assert cleaned == mid_write  # each resume removed what the kill before it left
    assert_bit_identical(run_dir, references["full"])


def test_sigterm_commits_a_checkpoint_and_exits_143(
    references: dict[str, Path], zygote: Zygote, tmp_path: Path
) -> None:
    """The real command (``python -m graft.cli fit``), SIGTERM at a random step, 2 workers:
    it finishes the step, writes a checkpoint at exactly that step and exits with 143; the
    resume ends bit-identical."""
    step = random.Random(f"{SEED}-term").randrange(2, TOTAL_STEPS - 2)
    print(f"SIGTERM after step {step}")
    path = write_yaml(tmp_path / "run.yaml", config(tmp_path, "run", "full", num_workers=2))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "graft.cli", *fit_argv(path)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    wait_for(lambda: step_count(run_dir) >= step or proc.poll() is not None, f"step {step}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped: SIGTERM" in err and "--resume" in err and "Traceback" not in err
    state = load_checkpoint(run_dir)["state"]
    assert state["step"] == step_count(run_dir) >= step  # checkpointed where it stopped
    resume_to_end(zygote, path, run_dir, tmp_path / "resume.log")
    assert_bit_identical(run_dir, references["full"])


def test_ctrl_c_commits_a_checkpoint_and_exits_130(
    references: dict[str, Path], zygote: Zygote, tmp_path: Path
) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group, loader workers
    included (they ignore it; the main process stops them after its checkpoint)."""
    step = random.Random(f"{SEED}-int").randrange(2, TOTAL_STEPS - 2)
    print(f"SIGINT after step {step}")
    path = write_yaml(tmp_path / "run.yaml", config(tmp_path, "run", "full", num_workers=2))
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    pid = zygote.start(fit_argv(path), log)
    wait_for(lambda: step_count(run_dir) >= step, f"step {step}")
    os.killpg(pid, signal.SIGINT)
    assert zygote.wait() == 130, log.read_text()
    text = log.read_text()
    assert "stopped: SIGINT" in text and "Traceback" not in text
    assert load_checkpoint(run_dir)["state"]["step"] == step_count(run_dir) >= step
    resume_to_end(zygote, path, run_dir, log)
    assert_bit_identical(run_dir, references["full"])


def test_second_ctrl_c_aborts_at_once(zygote: Zygote, tmp_path: Path) -> None:
    """After the first Ctrl-C the run would finish its step and checkpoint; a second one ends it
    at once: exit 130, nothing committed. Steps are made long (96 px images) so that the second
    signal arrives while the first is being honoured, and mid-epoch checkpoints are off."""
    cfg = config(tmp_path, "run", "full", checkpoint_minutes=None)
    cfg["data"]["image_size"] = 96
    path = write_yaml(tmp_path / "run.yaml", cfg)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    pid = zygote.start(fit_argv(path), log)
    wait_for(lambda: step_count(run_dir) >= 1, "step 1")
    os.kill(pid, signal.SIGINT)
    wait_for(lambda: "SIGINT: stopping after this step" in log.read_text(), "the first stop")
    os.kill(pid, signal.SIGINT)
    assert zygote.wait() == 130
    text = log.read_text()
    assert "interrupted" in text and "stopped: SIGINT" not in text
    assert not run_dir.exists()  # no checkpoint was committed: a fresh run leaves nothing


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
    references: dict[str, Path],
    zygote: Zygote,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ENOSPC in the middle of the third checkpoint write (after some bytes went to disk): exit
    5 with a message naming the file, the second checkpoint intact and loadable, no temporary
    file left; once there is space again, the resume ends bit-identical."""
    path = write_yaml(tmp_path / "run.yaml", config(tmp_path, "run", "full", checkpoint_every=2))
    run_dir = tmp_path / "run"

    class FullDisk:
        """A file that takes 1000 bytes, then reports a full disk."""

        def __init__(self, f: IO[bytes]) -> None:
            self.f, self.written = f, 0

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.f.write(data)

        def flush(self) -> None:
            self.f.flush()

    real_atomic = graft.atomic.atomic_write
    checkpoint_writes: list[Path] = []

    def atomic_write(target: Path, write: Any) -> None:
        checkpoint_writes.append(target)
        if len(checkpoint_writes) == 3:
            real_atomic(target, lambda f: write(FullDisk(f)))
        else:
            real_atomic(target, write)

    monkeypatch.setattr("graft.checkpoint.atomic_write", atomic_write)
    code = main(fit_argv(path))
    err = capsys.readouterr().err
    assert code == 5, err
    assert f"{run_dir / CHECKPOINT}: could not write the checkpoint" in err
    assert "No space left on device" in err and "Traceback" not in err
    assert load_checkpoint(run_dir)["state"]["step"] == 4
    assert not temporaries(run_dir)
    monkeypatch.undo()
    resume_to_end(zygote, path, run_dir, tmp_path / "resume.log")
    assert_bit_identical(run_dir, references["full"])


def test_nan_loss_stops_with_exit_4_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A loss that turns NaN at step 6: the run stops before applying it, with exit 4 and a
    message naming the step and the kept checkpoint (step 4: checkpoints every 2 steps), whose
    weights are finite; a resume from it is accepted."""
    path = write_yaml(tmp_path / "run.yaml", config(tmp_path, "run", "full", checkpoint_every=2))
    real = graft.train.Objective.loss
    calls = []

    def loss(
        self: graft.train.Objective,
        logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> Any:
        calls.append(1)
        value = real(self, logits, targets, teacher_logits)
        return value * float("nan") if len(calls) == 6 else value

    monkeypatch.setattr(graft.train.Objective, "loss", loss)
    code = main(fit_argv(path))
    err = capsys.readouterr().err
    assert code == 4, err
    assert "training diverged: the loss is nan at step 6" in err
    assert "last good checkpoint (step 4)" in err and "Traceback" not in err
    kept = load_checkpoint(tmp_path / "run")
    assert kept["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_nan_weights_are_never_checkpointed(tmp_path: Path) -> None:
    """An absurd learning rate: the loss stays finite for a step or two while the weights
    explode; the run ends with exit 4, and whatever checkpoint exists has finite weights."""
    cfg = config(tmp_path, "run", "full", checkpoint_every=1)
    cfg["optim"] = {"name": "sgd", "lr": 1e6}
    code = main(fit_argv(write_yaml(tmp_path / "run.yaml", cfg)))
    assert code == 4
    if (tmp_path / "run" / CHECKPOINT).exists():
        kept = load_checkpoint(tmp_path / "run")
        assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
