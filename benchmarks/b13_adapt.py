"""B13: transfer without target labels. MiniLM trained on VADER movie snippets (labeled) with
unlabeled tweets (or Amazon snippets) as the target; each adaptation method against source-only
and an oracle trained on the target's labels; 3 seeds each, through ``graft compare``.

The target corpus is split once (seeded) into a pool and a test half, written as CSV files: the
pool is the unlabeled target (its labels are in the file and never read) and, for the oracle,
the labeled training set; the test half scores every run (``extra_eval``), so no run is scored on
examples it trained on.

    .venv/bin/python benchmarks/b13_adapt.py [--targets tweets,amazon] [--seeds 3]
        [--out docs/results/adapt]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

ROOT = Path(__file__).resolve().parents[1]
CORPORA = {"tweets": "vader_tweets", "amazon": "vader_amazon"}
METHODS = {  # label: overrides (the literature's usual weights)
    "source_only": {},
    "entropy": {"adapt.method": "entropy", "adapt.weight": 0.1},
    "mcc": {"adapt.method": "mcc", "adapt.weight": 1.0},
    "self_training": {"adapt.method": "self_training", "adapt.weight": 1.0},
    "dann": {"adapt.method": "dann", "adapt.weight": 1.0},
}
SIZES = {"source": 1000, "pool": 1000, "test": 1000}


def write_split(target: str, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The target corpus, shuffled once: a pool (CSV with labels) and a disjoint test half."""
    from graft.data import load_examples

    ex = load_examples(dataset=CORPORA[target])
    order = np.random.default_rng(seed).permutation(len(ex))
    half = len(ex) // 2
    paths = []
    for name, idx in (("pool", order[:half]), ("test", order[half:])):
        path = folder / f"{target}_{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((ex.inputs[i], ex.labels[i]) for i in idx)
        paths.append(path)
    return paths[0], paths[1]


def base_config(train: dict[str, Any], test_csv: Path, out: Path) -> dict[str, Any]:
    return {
        "backbone": {"name": "minilm", "pooling": "mean"},
        "data": {
            "train": train,
            "train_size": SIZES["source"],
            "val_size": 300,
            "test_size": 500,
            "max_length": 64,
            "extra_eval": {"target": {"path": str(test_csv), "format": "csv"}},
            "extra_size": SIZES["test"],
        },
        "strategy": {"name": "full"},
        "optim": {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_ratio": 0.1},
        "train": {"epochs": 2, "batch_size": 32},
        "output": {"dir": str(out), "progress": False},
    }


def run_compare(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "graft", "compare", str(path), "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    print(f"  {path.stem}: {time.perf_counter() - started:.0f}s", flush=True)
    return Path(done.stdout.strip().split("\t")[0])


def read_runs(compare_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with (compare_dir / "runs.csv").open() as f:
        for row in csv.DictReader(f):
            out.setdefault(row["label"], []).append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="tweets,amazon")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/adapt")
    ap.add_argument("--work", type=Path, default=Path("/tmp/graft-b13"), help="runs go here")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "sizes": SIZES, "targets": {}}
    earlier = args.out / "results.json"
    if earlier.is_file():  # targets measured by an earlier call are kept
        results["targets"] = json.loads(earlier.read_text()).get("targets", {})
    for target in args.targets.split(","):
        pool, test = write_split(target, work)
        adapted = base_config({"dataset": "vader_movies"}, test, work)
        adapted["data"]["target_unlabeled"] = {"path": str(pool), "format": "csv"}
        adapted["data"]["target_unlabeled_size"] = SIZES["pool"]
        adapted["compare"] = {
            "name": f"adapt-{target}",
            "strategies": [{"name": "full", "label": label} for label in METHODS],
            "seeds": args.seeds,
            "overrides": {k: v for k, v in METHODS.items() if v},
        }
        oracle = base_config({"path": str(pool), "format": "csv"}, test, work)
        oracle["compare"] = {
            "name": f"oracle-{target}",
            "strategies": [{"name": "full", "label": "oracle"}],
            "seeds": args.seeds,
        }
        adapted_dir = run_compare(adapted, work / f"adapt-{target}.yaml")
        oracle_dir = run_compare(oracle, work / f"oracle-{target}.yaml")
        runs = {**read_runs(adapted_dir), **read_runs(oracle_dir)}
        for folder in (adapted_dir, oracle_dir):  # the compare reports, kept with the figures
            shutil.copy(folder / "report.html", args.out / f"{folder.name}.html")
        table = {}
        for label, rows in runs.items():
            acc = [float(r["target_accuracy"]) for r in rows]
            table[label] = {
                "target_accuracy": acc,
                "mean": statistics.mean(acc),
                "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "in_domain_test_accuracy": statistics.mean(float(r["test_accuracy"]) for r in rows),
            }
        source, best_oracle = table["source_only"]["mean"], table["oracle"]["mean"]
        for row in table.values():
            gap = best_oracle - source
            row["gap_closed"] = (row["mean"] - source) / gap if gap > 0 else None
        results["targets"][target] = table
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        for label, row in table.items():
            closed = "" if row["gap_closed"] is None else f"  gap closed {row['gap_closed']:+.2f}"
            print(f"{target:7s} {label:14s} {row['mean']:.3f} ± {row['std']:.3f}{closed}")


if __name__ == "__main__":
    main()
