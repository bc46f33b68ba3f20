"""B14: the tasks beyond single-label classification (issue 17), each through ``graft compare``
with ``full`` fine-tuning and a ``linear_probe`` (3 seeds each).

* ``regression``: the VADER sentiment scores (−4 … +4) with MiniLM, against predicting the
  training mean, in domain (movie snippets) and on two shifted domains (tweets, Amazon
  snippets, scored by the same human protocol) → ``docs/results/regression/``.
* ``multilabel``: ``multi_mnist`` (2×2 grids of MNIST digits, the labels the digits present)
  with EfficientNet-Lite0 → ``docs/results/multilabel/``.

Each writes ``results.json`` (every seed, the machine) and the compare report.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import machine

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train": 1500, "val": 300, "test": 1000, "extra": 1000}
SETS = {"regression": ("test", "tweets", "amazon"), "multilabel": ("test",)}
METRICS = {
    "regression": ("rmse", "mae", "r2", "spearman"),
    "multilabel": ("map", "micro_f1", "macro_f1", "subset_accuracy"),
}


def multilabel_config(out: Path, seeds: int) -> dict[str, Any]:
    return {
        "task": "multilabel",
        "backbone": {"name": "tf_efficientnet_lite0", "pretrained": True},
        "data": {"train": {"dataset": "multi_mnist"}, "image_size": 64, "val_fraction": 0.1},
        "strategy": {"name": "full"},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_ratio": 0.1},
        "train": {"epochs": 8, "batch_size": 64},
        "output": {"dir": str(out), "progress": False},
        "compare": {
            "name": "multi-mnist",
            "strategies": ["full", "linear_probe"],
            "seeds": seeds,
            "overrides": {"linear_probe": {"optim.lr": 1e-2, "train.epochs": 20}},
        },
    }


def regression_config(out: Path, seeds: int) -> dict[str, Any]:
    return {
        "task": "regression",
        "backbone": {"name": "minilm", "pooling": "mean"},
        "data": {
            "train": {"dataset": "vader_movies_score"},
            "train_size": SIZES["train"],
            "val_size": SIZES["val"],
            "test_size": SIZES["test"],
            "max_length": 64,
            "extra_eval": {
                "tweets": {"dataset": "vader_tweets_score"},
                "amazon": {"dataset": "vader_amazon_score"},
            },
            "extra_size": SIZES["extra"],
        },
        "strategy": {"name": "full"},
        "optim": {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_ratio": 0.1},
        "train": {"epochs": 3, "batch_size": 32},
        "output": {"dir": str(out), "progress": False},
        "compare": {
            "name": "vader-score",
            "strategies": ["full", "linear_probe"],
            "seeds": seeds,
            # A probe trains the head alone: the usual higher rate and more epochs.
            "overrides": {"linear_probe": {"optim.lr": 1e-2, "train.epochs": 20}},
        },
    }


def mean_baseline(base: dict[str, Any]) -> dict[str, dict[str, float]]:
    """RMSE and MAE of predicting the training mean on each set (R² ≈ 0 and ρ undefined by
    construction), from the very splits the runs use."""
    from graft.config import validate
    from graft.data.targets import numeric_targets
    from graft.metrics import regression_metrics
    from graft.run_data import load_splits

    run = {k: v for k, v in base.items() if k != "compare"}
    cfg = validate(run)
    splits = load_splits(cfg.data, cfg.task)
    assert splits.scale is not None and splits.test is not None
    mean = splits.scale[0]
    out = {}
    for name, ex in (("test", splits.test), *splits.extra.items()):
        y = numeric_targets(ex)
        m = regression_metrics(y, np.full(len(y), mean))
        out[name] = {"rmse": m["rmse"], "mae": m["mae"], "r2": m["r2"], "spearman": math.nan}
    return out


def read_runs(compare_dir: Path, task: str) -> dict[str, list[dict[str, Any]]]:
    sets, metrics = SETS[task], METRICS[task]
    out: dict[str, list[dict[str, Any]]] = {}
    with (compare_dir / "runs.csv").open() as f:
        for row in csv.DictReader(f):
            results = json.loads((compare_dir / row["run"] / "results.json").read_text())
            scores = {"test": results["test"], **results["extra"]}
            out.setdefault(row["label"], []).append(
                {
                    "seed": int(row["seed"]),
                    "wall_time_s": results["wall_time_s"],
                    **{s: {k: scores[s][k] for k in metrics} for s in sets},
                }
            )
    return out


def summary(runs: list[dict[str, Any]], task: str) -> dict[str, Any]:
    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values)}

    out: dict[str, Any] = {
        s: {k: stat([r[s][k] for r in runs]) for k in METRICS[task]} for s in SETS[task]
    }
    return out | {"seeds": len(runs), "wall_time_s": stat([r["wall_time_s"] for r in runs])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["regression", "multilabel"], default="regression")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="default: docs/results/<task>")
    ap.add_argument("--work", type=Path, default=Path("/tmp/graft-b14"), help="runs go here")
    args = ap.parse_args()
    out = args.out or ROOT / "docs/results" / args.task
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    make = regression_config if args.task == "regression" else multilabel_config
    base = make(args.work, args.seeds)
    name = base["compare"]["name"]
    path = args.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "graft", "compare", str(path), "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    compare_dir = args.work / f"compare-{name}"
    print(f"compare: {time.perf_counter() - started:.0f}s")
    runs = read_runs(compare_dir, args.task)
    results: dict[str, Any] = {"machine": machine(), "task": args.task}
    if args.task == "regression":
        results |= {"sizes": SIZES, "training_mean": mean_baseline(base)}
    results["strategies"] = {label: summary(rs, args.task) for label, rs in runs.items()}
    results["runs"] = runs
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.html").write_bytes((compare_dir / "report.html").read_bytes())
    for s in SETS[args.task]:
        line = [s]
        for label, st in results["strategies"].items():
            line.append(
                label
                + " ".join(
                    f" {k} {st[s][k]['mean']:.3f}±{st[s][k]['std']:.3f}" for k in METRICS[args.task]
                )
            )
        print("  |  ".join(line))


if __name__ == "__main__":
    main()
