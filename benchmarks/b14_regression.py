"""B14: regression of the VADER sentiment scores (−4 … +4) with MiniLM (issue 17).

``full`` fine-tuning and a ``linear_probe`` (3 seeds each, through ``graft compare``) against
predicting the training mean, in domain (movie snippets) and on two shifted domains (tweets,
Amazon snippets, scored by the same human protocol). Writes ``docs/results/regression/``:
``results.json`` (every seed, the machine) and the compare report.
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
SETS = ("test", "tweets", "amazon")
METRICS = ("rmse", "mae", "r2", "spearman")


def config(out: Path, seeds: int) -> dict[str, Any]:
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


def read_runs(compare_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with (compare_dir / "runs.csv").open() as f:
        for row in csv.DictReader(f):
            results = json.loads((compare_dir / row["run"] / "results.json").read_text())
            sets = {"test": results["test"], **results["extra"]}
            out.setdefault(row["label"], []).append(
                {
                    "seed": int(row["seed"]),
                    "wall_time_s": results["wall_time_s"],
                    **{s: {k: sets[s][k] for k in METRICS} for s in SETS},
                }
            )
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values)}

    out: dict[str, Any] = {s: {k: stat([r[s][k] for r in runs]) for k in METRICS} for s in SETS}
    return out | {"seeds": len(runs), "wall_time_s": stat([r["wall_time_s"] for r in runs])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/regression")
    ap.add_argument("--work", type=Path, default=Path("/tmp/graft-b14"), help="runs go here")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    base = config(args.work, args.seeds)
    path = args.work / "vader-score.yaml"
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
    compare_dir = args.work / "compare-vader-score"
    print(f"compare: {time.perf_counter() - started:.0f}s")
    runs = read_runs(compare_dir)
    results = {
        "machine": machine(),
        "sizes": SIZES,
        "training_mean": mean_baseline(base),
        "strategies": {label: summary(rs) for label, rs in runs.items()},
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "report.html").write_bytes((compare_dir / "report.html").read_bytes())
    for s in SETS:
        line = [f"{s:7s} mean rmse {results['training_mean'][s]['rmse']:.3f}"]
        for label, st in results["strategies"].items():
            m = st[s]
            line.append(
                f"{label} rmse {m['rmse']['mean']:.3f}±{m['rmse']['std']:.3f} "
                f"ρ {m['spearman']['mean']:.3f}±{m['spearman']['std']:.3f}"
            )
        print("  |  ".join(line))


if __name__ == "__main__":
    main()
