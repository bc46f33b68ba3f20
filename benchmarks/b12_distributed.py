"""B12: data-parallel ``graft fit`` on one 2-core machine, and what a step's all-reduce costs.

1. Time per epoch of a real fine-tune, one process × 2 threads against ``--nproc 2`` (two
   processes × 1 thread, gloo), for MiniLM on VADER and EfficientNet-Lite0 on Fashion-MNIST;
   the second epoch of each run (the first pays the warm-up), runs alternated, medians.
2. The all-reduce of one step's gradients, as DDP sends them (25 MB buckets, gloo, 2 processes
   on loopback), for each model's trainable parameters: median of repeats.

Results: ``docs/results/distributed/results.json`` (+ README, written by hand from it).

    .venv/bin/python benchmarks/b12_distributed.py [--repeats 3] [--out docs/results/distributed]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

ROOT = Path(__file__).resolve().parents[1]
BUCKET_BYTES = 25 * 1024 * 1024  # DDP's default bucket_cap_mb

RUNS = {
    "minilm": {
        "backbone": {"name": "minilm", "pooling": "mean"},
        "data": {
            "train": {"dataset": "vader_movies"},
            "train_size": 512,
            "val_size": 128,
            "test_size": 128,
            "max_length": 64,
        },
        "strategy": {"name": "full"},
        "optim": {"name": "adamw", "lr": 5e-5},
        "train": {"epochs": 2, "batch_size": 32},
    },
    "lite0": {
        "backbone": {"name": "tf_efficientnet_lite0", "pretrained": True},
        "data": {
            "train": {"dataset": "fashion_mnist"},
            "train_size": 1024,
            "val_size": 256,
            "test_size": 256,
            "image_size": 64,
        },
        "strategy": {"name": "full"},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 64},
    },
}


def epoch_time(name: str, nproc: int, out: Path) -> dict[str, Any]:
    """One fit; the second epoch's time and samples/s from its metrics.jsonl."""
    config = {**RUNS[name], "output": {"dir": str(out), "name": f"{name}-{nproc}-{time.time_ns()}"}}
    config["output"]["progress"] = False
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "graft", "fit", str(path), "--quiet"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    run_dir = out / config["output"]["name"]
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    log = (run_dir / "log.txt").read_text()
    steps = len((run_dir / "steps.jsonl").read_text().splitlines()) // len(epochs)
    return {
        "epoch_time_s": epochs[1]["epoch_time_s"],
        "samples_per_s": epochs[1]["samples_per_s"],
        "steps_per_epoch": steps,
        "precision": "bf16" if "bf16 autocast" in log else "fp32",
        "val_accuracy": epochs[-1]["val_accuracy"],
    }


def trainable_sizes() -> dict[str, int]:
    """Trainable parameters of each model under ``full`` (what DDP all-reduces each step)."""
    from graft.models import build_backbone

    sizes = {}
    for name, spec in (("minilm", "minilm"), ("lite0", "tf_efficientnet_lite0")):
        backbone = build_backbone(spec, num_classes=10 if name == "lite0" else 2)
        sizes[name] = sum(p.numel() for p in backbone.model.parameters() if p.requires_grad)
    return sizes


def _allreduce_worker(rank: int, port: int, sizes: dict[str, int], repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for name, n in sizes.items():
        per_bucket = BUCKET_BYTES // 4
        buckets = [torch.randn(min(per_bucket, n - i)) for i in range(0, n, per_bucket)]
        times = []
        for i in range(repeats + 2):
            dist.barrier()
            started = time.perf_counter()
            for b in buckets:
                dist.all_reduce(b)
            if i >= 2:  # two warm-up rounds
                times.append(time.perf_counter() - started)
        results[name] = {
            "params": n,
            "megabytes": n * 4 / 1e6,
            "buckets": len(buckets),
            "allreduce_ms_median": 1000 * statistics.median(times),
            "allreduce_ms_all": [round(1000 * t, 2) for t in times],
        }
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def allreduce_cost(sizes: dict[str, int], repeats: int) -> dict[str, Any]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        mp.spawn(_allreduce_worker, args=(port, sizes, repeats, f.name), nprocs=2)
        return json.loads(Path(f.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/distributed")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "epochs": {}, "allreduce": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            rows: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for r in range(args.repeats):
                for nproc in (1, 2) if r % 2 == 0 else (2, 1):  # alternate which goes first
                    row = epoch_time(name, nproc, Path(tmp))
                    rows[nproc].append(row)
                    print(name, nproc, row, flush=True)
            one = statistics.median(r["epoch_time_s"] for r in rows[1])
            two = statistics.median(r["epoch_time_s"] for r in rows[2])
            results["epochs"][name] = {
                "one_process_2_threads": rows[1],
                "two_processes_1_thread": rows[2],
                "median_epoch_s": {"1x2": one, "2x1": two},
                "speedup_2x1_over_1x2": one / two,
            }
    sizes = trainable_sizes()
    results["allreduce"] = allreduce_cost(sizes, repeats=10)
    for name, row in results["allreduce"].items():
        per_step = results["epochs"][name]["median_epoch_s"]["2x1"] / max(
            1, results["epochs"][name]["two_processes_1_thread"][0]["steps_per_epoch"]
        )
        row["step_s_2x1"] = per_step
        row["allreduce_share_of_step"] = row["allreduce_ms_median"] / 1000 / per_step
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("allreduce",)}, indent=1))
    for name, r in results["epochs"].items():
        print(name, r["median_epoch_s"], f"speedup {r['speedup_2x1_over_1x2']:.2f}")


if __name__ == "__main__":
    main()
