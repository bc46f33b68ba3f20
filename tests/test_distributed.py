"""Data-parallel ``graft fit`` on torch.distributed (gloo, CPU), with real processes started by
torchrun's launcher (``graft fit --nproc 2``) and the real MiniLM on real VADER reviews.

Equivalence: 2 processes × half of every batch must train what 1 process × the whole batch
trains. The references are ordinary one-process fits; the expected values are theirs, never
the code under test's. Tolerance: gradients summed over ranks round differently from one
process's sums, so weights may differ by float32 rounding carried through AdamW steps (seen:
up to 1.6e-5 after 64 steps); we allow 1e-4 (the LR is 5e-5: one step moves a weight by about
5e-5, so a wrong gradient shows up at once). Evaluation runs whole batches per rank, so on
the same weights it gives one process's numbers; on weights that differ by that rounding the
validation loss may move by ~1e-7: accuracy and F1 must be identical, the loss within 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import require_asset, write_yaml
from safetensors.torch import load_file

from graft.config import validate
from graft.distributed import ShardedBatches
from graft.pipeline import EpochBatches
from graft.run import fit

ROOT = Path(__file__).resolve().parents[1]
WEIGHT_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _minilm() -> None:
    from graft.assets import minilm_dir

    require_asset(minilm_dir)


def _config(out: Path, name: str, strategy: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {
        "backbone": {"name": "minilm", "pooling": "mean", "dropout": 0.0},
        "data": {
            "train": {"dataset": "vader_movies"},
            "train_size": 64,
            "val_size": 40,
            "test_size": 40,
            "max_length": 32,
        },
        "strategy": strategy,
        "optim": {"name": "adamw", "lr": 5e-5},
        "train": {"epochs": 2, "batch_size": 16, "precision": "fp32", **train},
        "hardware": {"threads": 1},
        "output": {"dir": str(out), "name": name, "progress": False},
    }


def _graft_fit(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graft", "fit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_shards_partition_every_global_batch_in_order() -> None:
    lengths = torch.randint(3, 40, (103,)).numpy()
    base = EpochBatches(103, 16, shuffle=True, seed=7, lengths=lengths)
    shards = [ShardedBatches(base, rank, 2) for rank in range(2)]
    for epoch in (0, 3):
        base.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        together = list(zip(*[list(s) for s in shards], strict=True))
        assert len(together) == len(base) == len(list(base))
        for whole, parts in zip(base, together, strict=True):
            assert sorted(parts[0] + parts[1]) == sorted(whole)
            assert not set(parts[0]) & set(parts[1])
            assert [len(p) for p in parts] == [-(-len(whole) // 2), len(whole) // 2]


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "full"},
        {"name": "gradual", "max_groups": 3},  # phase changes: DDP rebuilt as groups thaw
        {"name": "lp_ft"},  # a body-feature cache, then the whole model thaws
    ],
    ids=lambda s: s["name"],
)
def test_two_processes_with_half_batches_train_what_one_process_trains(
    tmp_path: Path, strategy: dict[str, Any]
) -> None:
    epochs = 3 if strategy["name"] == "lp_ft" else 2
    one = fit(validate(_config(tmp_path, "one", strategy, epochs=epochs)), quiet=True).run_dir
    config = write_yaml(tmp_path / "two.yaml", _config(tmp_path, "two", strategy, epochs=epochs))
    # No shared feature store: the ranks compute the body-feature cache between them.
    no_store = {"GRAFT_FEATURE_CACHE_SIZE": "0"}
    done = _graft_fit(str(config), "--nproc", "2", "hardware.threads=null", env=no_store)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    # Only rank 0 wrote: one run directory each, the result line printed once.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["one", "two"]
    assert done.stdout.count("test accuracy") == 1
    log = (two / "log.txt").read_text()
    assert "data parallel: 2 processes, global batch 16" in log
    assert "device cpu, 1 threads" in log  # 2 cores shared out between 2 processes
    if strategy["name"] == "lp_ft":
        assert "feature cache: body outputs computed" in log

    steps_one, steps_two = _lines(one / "steps.jsonl"), _lines(two / "steps.jsonl")
    assert [s["step"] for s in steps_one] == [s["step"] for s in steps_two]
    for a, b in zip(steps_one, steps_two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
    epochs_one, epochs_two = _lines(one / "metrics.jsonl"), _lines(two / "metrics.jsonl")
    assert len(epochs_one) == len(epochs_two) >= 2
    for a, b in zip(epochs_one, epochs_two, strict=True):
        assert (a["phase"], a["step"]) == (b["phase"], b["step"])
        assert (b["val_accuracy"], b["val_macro_f1"]) == (a["val_accuracy"], a["val_macro_f1"])
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-6)
        assert b["train_accuracy"] == a["train_accuracy"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
    assert _max_weight_diff(one, two) < WEIGHT_TOLERANCE
    results_one = json.loads((one / "results.json").read_text())
    results_two = json.loads((two / "results.json").read_text())
    assert results_two["test"]["accuracy"] == results_one["test"]["accuracy"]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_a_killed_rank_ends_the_job_and_resume_finishes_it_as_if_uninterrupted(
    tmp_path: Path,
) -> None:
    base = _config(tmp_path, "x", {"name": "full"}, epochs=3)
    base["data"]["train_size"] = 96  # 6 steps an epoch, 18 in all
    base["checkpoint"] = {"every": 2}
    base["hardware"] = {}
    config = write_yaml(tmp_path / "job.yaml", base)
    ref = _graft_fit(str(config), "--nproc", "2", "output.name=ref")
    assert ref.returncode == 0, ref.stderr[-3000:]

    cut = tmp_path / "cut"
    job = subprocess.Popen(
        [sys.executable, "-m", "graft", "fit", str(config), "--nproc", "2", "output.name=cut"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 240
    while not ((cut / "steps.jsonl").is_file() and len(_lines(cut / "steps.jsonl")) >= 7):
        assert time.monotonic() < deadline and job.poll() is None, job.communicate()
        time.sleep(0.05)
    rank1 = [pid for pid in _children(job.pid) if _rank_of(pid) == 1]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    killed = time.monotonic()
    _, err = job.communicate(timeout=120)
    assert time.monotonic() - killed < 60  # promptly: no rank waits out a collective timeout
    assert job.returncode == 6, err[-3000:]
    assert f"rank 1 (pid {rank1[0]}) was killed by SIGKILL" in err
    assert "error: the data-parallel job failed" in err
    assert not (cut / "results.json").exists()
    shutil.copytree(cut, tmp_path / "cut-one")

    resumed = _graft_fit(str(config), "--nproc", "2", "output.name=cut", "--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Same job, same ranks: the resumed run is the uninterrupted one, bit for bit.
    assert _lines(cut / "steps.jsonl") == _lines(tmp_path / "ref" / "steps.jsonl")
    wa, wb = _weights(cut), _weights(tmp_path / "ref")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # A checkpoint of 2 processes continues in 1 (the same global batches).
    one = fit(
        validate({**base, "hardware": {"threads": 1}}),
        resume=tmp_path / "cut-one",
        force=True,
        quiet=True,
    ).run_dir
    assert len(_lines(one / "steps.jsonl")) == 18
    assert _max_weight_diff(one, tmp_path / "ref") < WEIGHT_TOLERANCE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ranks_with_different_configs_stop_before_writing(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", _config(tmp_path, "x", {"name": "full"}))
    port = _free_port()
    procs = []
    for rank, lr in ((0, "5e-5"), (1, "1e-4")):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "graft", "fit", str(config), f"optim.lr={lr}"],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2, err
        assert "error: the config differs between ranks" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_distributed_command_lines(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", _config(tmp_path, "x", {"name": "full"}))
    cores = len(os.sched_getaffinity(0))
    port = _free_port()
    cases = [
        (["--nproc", str(cores + 1)], 2, f"more processes than this machine's {cores} cores"),
        (["--nproc", "0"], 2, "--nproc must be at least 1"),
        (["--nproc", "2", "hardware.device=cuda"], 2, "GPU"),
        (["--nnodes", "2"], 2, "--nnodes, --rendezvous and --job-id go with --nproc"),
        (
            [
                "--nproc",
                "1",
                "--nnodes",
                "2",
                "--rendezvous",
                f"127.0.0.1:{port}",
                "--rendezvous-timeout",
                "5",
            ],
            6,
            f"the rendezvous at 127.0.0.1:{port} could not be joined within 5s",
        ),
        (["--nproc", "2", "optim.name=lbfgs"], 2, "optim.name: lbfgs takes full-batch steps"),
    ]
    for args, code, message in cases:
        started = time.monotonic()
        done = _graft_fit(str(config), *args, timeout=180)
        assert done.returncode == code, (args, done.stderr[-2000:])
        assert message in done.stderr, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, args
        assert time.monotonic() - started < 90, args
    assert not (tmp_path / "x").exists()  # nothing half-written
