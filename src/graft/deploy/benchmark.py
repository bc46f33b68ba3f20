"""``graft benchmark``: every variant of a model measured on this machine, side by side.

Each variant runs in a fresh process (:mod:`graft.deploy.measure`), one after another (never
two at once: they would share the cores), with warm-up calls and repeats; latency is the time
of the model's forward pass on inputs graft's pipeline prepared beforehand (tokenising or
resizing is the same work for every variant). The first variant given is the reference: every
other is compared with it and flagged when it is slower.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft.atomic import atomic_write_text, check_target, staged_dir
from graft.errors import DataError, UsageError
from graft.runtime import cpu_flags, environment, int8_kernels

COLUMNS = (
    "variant",
    "backend",
    "precision",
    "weights_mb",
    "latency_ms_p50",
    "latency_ms_p99",
    "speedup_b1",
    "throughput",
    "speedup_throughput",
    "peak_rss_mb",
    "test_accuracy",
    "accuracy_change_points",
    "slower",
)


def parse_batches(text: str) -> list[int]:
    """``--batch 1,32``: positive sizes, 1 first (latency), the rest for throughput."""
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--batch {text!r}: give batch sizes like 1,32") from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--batch {text!r}: batch sizes must be >= 1")
    return sizes


def measure_in_child(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """One variant's figures from a fresh Python process."""
    args = json.dumps({"path": str(path), **options})
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "graft.deploy.measure", args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DataError(f"{path}: could not be measured: {last}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def compare_rows(rows: list[dict[str, Any]], batch_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Ratios against the first row, and the flag of a variant slower than it (at batch 1 or
    in throughput at the largest batch)."""
    key = f"throughput_b{max(batch_sizes)}"
    ref = rows[0]
    out = []
    for number, original in enumerate(rows):
        row = dict(original)
        row["throughput"] = row[key]
        row["speedup_throughput"] = row[key] / ref[key]
        row["speedup_b1"] = (
            ref["latency_ms_p50"] / row["latency_ms_p50"] if "latency_ms_p50" in row else None
        )
        row["accuracy_change_points"] = 100 * (row["test_accuracy"] - ref["test_accuracy"])
        ratios = [r for r in (row["speedup_b1"], row["speedup_throughput"]) if r is not None]
        row["slower"] = number > 0 and any(r < 1.0 for r in ratios)
        out.append(row)
    return out


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def benchmark(
    models: Sequence[str | Path],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 5,
    warmup: int = 2,
    threads: int | None = None,
    backend: str = "auto",
    precisions: Sequence[str] = ("fp32",),
    output: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Measure every model of ``models`` (the first is the reference; PyTorch models once per
    precision of ``precisions``); write ``benchmark.json``,
    ``benchmark.csv`` and ``report.html`` into ``output``; return the results."""
    from graft.artifact import require_classifier
    from graft.deploy.variants import backend_of, load_predictor, model_folder

    if repeats < 1 or warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        raise UsageError(f"--precision {','.join(precisions)}: choose fp32 and/or bf16")
    target = Path(output or f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}")
    check_target(target, force)
    # Every path is checked before the first minute of measuring.
    kinds = [backend_of(model_folder(m)) for m in models]
    for model in models:
        require_classifier(load_predictor(model, backend), "graft benchmark")
    options = {
        "batch_sizes": list(batch_sizes),
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "backend": backend,
    }
    rows = []
    for model, kind in zip(models, kinds, strict=True):
        # A PyTorch model once per precision asked; an ONNX one runs in its own types.
        for precision in precisions if kind == "torch" else ("fp32",):
            row = measure_in_child(Path(model), {**options, "precision": precision})
            suffix = f" ({precision})" if kind == "torch" and len(precisions) > 1 else ""
            row["variant"] = f"{model}{suffix}"
            rows.append(row)
    rows = compare_rows(rows, batch_sizes)
    results = {
        "rows": rows,
        "options": {**options, "precisions": list(precisions)},
        "machine": {
            **environment(),
            "cpu_flags": list(cpu_flags()),
            "int8_kernels": int8_kernels(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    from graft.reports.benchmark import render_benchmark

    with staged_dir(target, "benchmark") as tmp:
        atomic_write_text(tmp / "benchmark.json", json.dumps(results, indent=1))
        atomic_write_text(tmp / "benchmark.csv", to_csv(rows))
        atomic_write_text(tmp / "report.html", render_benchmark(results))
    return {"output": str(target), **results}
