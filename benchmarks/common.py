"""Shared helpers of the benchmarks: machine record, quiet-load wait, measured subprocesses,
medians and ratios, JSON-lines results.

Every measured configuration runs in its own subprocess (``python bX.py --child SPEC``), so that
its peak resident memory is its own: the parent reads it with ``os.wait4`` (the child's
``ru_maxrss``), and one configuration's allocations never leak into another's timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
THREADS = 2  # the same for graft and every baseline


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# The CPU features a figure can depend on: bf16 speed needs AMX or AVX512-BF16 (without them
# bf16 is emulated, 6-180x slower than fp32), int8 speed VNNI.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile",
               "amx_bf16", "amx_int8")  # fmt: skip


def cpu_flags() -> list[str]:
    """Which of :data:`SPEED_FLAGS` this CPU has (from /proc/cpuinfo)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [flag for flag in SPEED_FLAGS if flag in have]
    return []


def load1() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, max_wait_s: float, log: Callable[[str], None] = print) -> float:
    """Wait (up to ``max_wait_s``) until the 1-minute load is below ``max_load``; return it."""
    deadline = time.monotonic() + max_wait_s
    load = load1()
    while load >= max_load and time.monotonic() < deadline:
        log(f"  load {load:.2f} >= {max_load}: waiting 30 s")
        time.sleep(30)
        load = load1()
    return load


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": len(os.sched_getaffinity(0)),
        "threads": THREADS,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def setup_child(seed: int = 0) -> None:
    """What every measured child does first: the same threads and seed for graft and peers."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)


def run_child(script: str, spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run ``script --child SPEC`` in a fresh interpreter; its JSON result plus its peak RSS
    (MiB, from the child's own rusage) and the load average when it started."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as out:
        out_path = out.name
    cmd = [sys.executable, script, "--child", json.dumps(spec), "--out", out_path]
    load_before = load1()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {spec}")
    result = json.loads(Path(out_path).read_text())
    os.unlink(out_path)
    result.update(
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        process_wall_s=wall,
        load1_at_start=load_before,
    )
    return result


def child_main(run: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """If this process is a child (``--child``), run the spec, write the result, return True."""
    if "--child" not in sys.argv:
        return False
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = json.loads(args.child)
    setup_child(spec.get("seed", 0))
    result = run(spec)
    Path(args.out).write_text(json.dumps(result))
    return True


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the script")
    p.add_argument("--repeats", type=int, default=None, help="measured repeats per configuration")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for a lower 1-min load")
    p.add_argument("--max-wait", type=float, default=600, help="give up waiting after this (s)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the training-set sizes")
    p.add_argument("--no-save", action="store_true", help="do not append to results/*.jsonl")
    return p


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def save(name: str, record: dict[str, Any], quick: bool, no_save: bool) -> None:
    """Append one JSON line to ``results/NAME.jsonl`` (quick runs go to ``NAME.quick.jsonl``)."""
    if no_save:
        return
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}{'.quick' if quick else ''}.jsonl"
    record = {"benchmark": name, "quick": quick, "machine": machine(), **record}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {path.relative_to(HERE.parent)}")


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, r in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)


def verdict(value: float, target: float, lower_is_better: bool) -> str:
    ok = value <= target if lower_is_better else value >= target
    return ("MET" if ok else "MISSED") + f" (target {'≤' if lower_is_better else '≥'}{target:g})"


def run_compare(config: dict[str, Any], path: Path) -> Path:
    """Write ``config`` (a run config with a ``compare:`` block) to ``path`` and run `graft
    compare` on it in a child process from the repository root; returns the compare directory."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "graft", "compare", str(path), "--quiet"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    print(f"  {path.stem}: {time.perf_counter() - started:.0f}s", flush=True)
    return Path(done.stdout.strip().split("\t")[0])
