"""Measure model variants on this machine: latency, throughput, size, memory, accuracy.

Give the original first (a run directory), then its variants (exported, quantized, pruned,
distilled): each is measured in a fresh process with warm-up and repeats, one after another;
latency p50/p99 at batch 1, throughput at the largest --batch, the weights' size, peak memory
and accuracy on the run's test set. A table is printed; benchmark.json, benchmark.csv and
report.html (with the accuracy-against-latency picture) are written. A variant slower than the
original is flagged.
"""

from __future__ import annotations

import argparse

from graft.cli.options import add_backend

NAME = "benchmark"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL_OR_DIR", help="the reference first")
    p.add_argument("--batch", default="1,32", help="batch sizes (default 1,32)")
    add_backend(p)
    p.add_argument(
        "--precision",
        default="fp32",
        help="PyTorch models: fp32, bf16 (autocast: fast where the CPU has AVX512-BF16 or AMX, "
        "very slow where it has neither), or fp32,bf16 for a row of each",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed passes (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    p.add_argument("--output", "-o", help="the folder to write (default: benchmark-DATE)")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    from graft.deploy.benchmark import benchmark, parse_batches

    results = benchmark(
        args.models,
        batch_sizes=parse_batches(args.batch),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        backend=args.backend,
        precisions=[x.strip() for x in args.precision.split(",") if x.strip()],
        output=args.output,
        force=args.force,
    )
    print(
        f"{'variant':<40} {'MB':>7} {'p50 ms':>8} {'p99 ms':>8} {'x':>5} {'ex/s':>8} "
        f"{'x':>5} {'RSS MB':>7} {'acc':>7}"
    )
    for r in results["rows"]:
        flag = "  SLOWER than the reference" if r["slower"] else ""
        print(
            f"{r['variant'][-40:]:<40} {r['weights_mb']:7.1f} {r['latency_ms_p50']:8.2f} "
            f"{r['latency_ms_p99']:8.2f} {r['speedup_b1']:5.2f} {r['throughput']:8.1f} "
            f"{r['speedup_throughput']:5.2f} {r['peak_rss_mb']:7.0f} "
            f"{100 * r['test_accuracy']:7.2f}{flag}"
        )
    print(
        f"report: {results['output']}/report.html  (CPU {results['machine']['cpu']}, int8 "
        f"kernels: {results['machine']['int8_kernels']})"
    )
    return 0
