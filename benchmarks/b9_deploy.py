"""B9 — every deployment variant of a fine-tuned model measured in one `graft benchmark` run:
eager PyTorch fp32 (the reference; bf16 autocast too where the CPU computes bf16 natively),
ONNX Runtime fp32, ONNX Runtime int8 (dynamic for MiniLM, static for Lite0) and structured
pruning of 30 % + 1 recovery epoch (when `graft prune` is there), against the goals of the
"After fine-tuning, part 2" issue.

    .venv/bin/python benchmarks/b9_deploy.py [--vader-run RUN] [--fashion-run RUN]
        [--work DIR] [--repeats 5] [--skip-prune]

Without --vader-run / --fashion-run it fine-tunes configs/vader_minilm.yaml and
configs/fashion_mnist_lite0.yaml first (a few minutes each on 2 cores). The variants are
built with graft's own commands (export, quantize, prune), so the user's path is measured.
Each variant is measured by `graft benchmark` in its own fresh process, one after another.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import save, table, verdict, wait_for_quiet

ROOT = Path(__file__).resolve().parents[1]
GRAFT = [sys.executable, "-m", "graft.cli"]

GOALS = {
    "vader": {"int8_speedup_b1": 2.5, "int8_loss_points": 1.0, "int8_size_ratio": 0.3},
    "fashion": {"int8_speedup_b1": 1.5, "int8_loss_points": 1.0},
    "prune": {"speedup_b1": 1.2, "loss_points": 1.5},
}


def graft(*args: str) -> None:
    print("$ graft " + " ".join(args), flush=True)
    subprocess.run([*GRAFT, *args], check=True, cwd=ROOT)


def fine_tuned(config: str, work: Path, name: str) -> Path:
    graft("fit", config, f"output.dir={work}", f"output.name={name}", "--quiet")
    return work / name


def variants(kind: str, run: Path, work: Path, prune: bool) -> list[Path]:
    """The original, then its ONNX export, int8 and (optionally) pruned variants."""
    out = [run]
    onnx = work / f"{kind}-onnx"
    graft("export", str(run), "--format", "onnx", "-o", str(onnx), "--force")
    out.append(onnx)
    int8 = work / f"{kind}-int8"
    graft("quantize", str(run), "-o", str(int8), "--force")
    out.append(int8)
    if prune:
        pruned = work / f"{kind}-pruned"
        graft(
            "prune", str(run), "--method", "structured", "--amount", "0.3",
            "--finetune-epochs", "1", "-o", str(pruned), "--force",
        )  # fmt: skip
        out.append(pruned)
    return out


def check_goals(kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals for this model: int8 and pruning against eager PyTorch fp32."""
    ref = rows[0]
    # Like against like: the fp32 (and int8) rows; a bf16 row is reported, not judged.
    by_made = {r["made_by"]: r for r in rows[1:] if r["precision"] in ("fp32", "int8")}
    found: dict[str, Any] = {}
    int8 = by_made.get("quantization")
    goals = GOALS[kind]
    if int8 is not None:
        found["int8_speedup_b1"] = ref["latency_ms_p50"] / int8["latency_ms_p50"]
        found["int8_speedup_throughput"] = int8["speedup_throughput"]
        found["int8_loss_points"] = 100 * (ref["test_accuracy"] - int8["test_accuracy"])
        found["int8_size_ratio"] = int8["weights_mb"] / ref["weights_mb"]
    pruned = by_made.get("pruned")
    if pruned is not None:
        found["prune_speedup_b1"] = ref["latency_ms_p50"] / pruned["latency_ms_p50"]
        found["prune_speedup_throughput"] = pruned["speedup_throughput"]
        found["prune_loss_points"] = 100 * (ref["test_accuracy"] - pruned["test_accuracy"])
    verdicts = {}
    for key, target in goals.items():
        if key in found:
            verdicts[key] = verdict(
                found[key], target, lower_is_better="loss" in key or "size" in key
            )
    for key, target in GOALS["prune"].items():
        if f"prune_{key}" in found:
            verdicts[f"prune_{key}"] = verdict(found[f"prune_{key}"], target, "loss" in key)
    return {"found": found, "verdicts": verdicts}


def regrade(path: Path) -> None:
    """Recompute the goals of every record of a results file from its rows (after a change
    to :func:`check_goals`); the measurements are untouched."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for record in records:
        record["goals"] = check_goals(record["model"], record["rows"])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vader-run", type=Path, help="a finished MiniLM run on VADER")
    p.add_argument("--fashion-run", type=Path, help="a finished Lite0 run on Fashion-MNIST")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "b9_deploy")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-prune", action="store_true", help="no pruned variant")
    p.add_argument("--only", choices=["vader", "fashion"], help="one model only")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    from graft.runtime import fast_bf16

    bf16 = fast_bf16(torch.device("cpu"))
    runs = {
        "vader": args.vader_run or None,
        "fashion": args.fashion_run or None,
    }
    configs = {"vader": "configs/vader_minilm.yaml", "fashion": "configs/fashion_mnist_lite0.yaml"}
    for kind in ("vader", "fashion"):
        if args.only and kind != args.only:
            continue
        run = runs[kind] or fine_tuned(configs[kind], args.work, f"{kind}-run")
        models = variants(kind, run, args.work, prune=not args.skip_prune)
        wait_for_quiet(args.max_load, 600)
        out = args.work / f"{kind}-benchmark"
        precision = "fp32,bf16" if bf16 and kind == "vader" else "fp32"
        graft(
            "benchmark", *map(str, models), "--batch", "1,32", "--repeats", str(args.repeats),
            "--precision", precision, "-o", str(out), "--force",
        )  # fmt: skip
        results = json.loads((out / "benchmark.json").read_text())
        rows = results["rows"]
        goals = check_goals(kind, rows)
        m = results["machine"]
        table(
            f"B9 {kind}: {m['cpu']}, int8 kernels {m['int8_kernels']}",
            ["variant", "MB", "p50 ms", "p99 ms", "x b1", "ex/s", "x b32", "RSS MB", "test acc"],
            [
                [Path(r["variant"]).name, r["weights_mb"], r["latency_ms_p50"], r["latency_ms_p99"],
                 r["speedup_b1"], r["throughput"], r["speedup_throughput"], r["peak_rss_mb"],
                 100 * r["test_accuracy"]]
                for r in rows
            ],
        )  # fmt: skip
        for key, text in goals["verdicts"].items():
            print(f"  {key}: {goals['found'][key]:.3f} {text}")
        save(
            "b9_deploy",
            {
                "model": kind,
                "run": str(run),
                "rows": rows,
                "goals": goals,
                "options": results["options"],
            },
            quick=False,
            no_save=args.no_save,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
