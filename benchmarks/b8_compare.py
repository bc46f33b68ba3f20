"""B8 — a whole ``graft compare`` with and without the shared feature store (same run,
alternating), and whether the leaderboards are identical.

Sides: ``store`` (a fresh, empty ``GRAFT_FEATURE_CACHE`` for each repeat: what a first compare
on a machine gets), ``no_store`` (``GRAFT_FEATURE_CACHE_SIZE=0``: every run computes its own
frozen passes), and with ``--before SRC`` also ``before``: the same command run from another
source tree (e.g. a ``git worktree`` of the commit before the store), for "faster than
today". Each side is the ``graft compare`` command in a fresh process; the time is its wall time.
The leaderboard is every run's test, validation and shifted-set scores (``runs.csv``).

    .venv/bin/python benchmarks/b8_compare.py configs/compare_vader_minilm.yaml [--repeats 2]
        [--before /tmp/before/src]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import median, save

SCORES = ("test_accuracy", "macro_f1", "best_epoch")


def _leaderboard(compare_dir: Path) -> list[dict[str, str]]:
    with (compare_dir / "runs.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keep = [k for k in rows[0] if k in SCORES or k.endswith("_accuracy")]
    return sorted(({"run": r["run"], **{k: r[k] for k in keep}} for r in rows), key=str)


def run_side(side: str, config: str, before: str | None, overrides: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRAFT_FEATURE_CACHE": f"{tmp}/features"}
        env.pop("GRAFT_FEATURE_CACHE_SIZE", None)
        if side == "no_store":
            env["GRAFT_FEATURE_CACHE_SIZE"] = "0"
        if side == "before":
            assert before is not None
            env["PYTHONPATH"] = before
        cmd = [sys.executable, "-m", "graft.cli", "compare", config, f"output.dir={tmp}/runs"]
        cmd += [*overrides, "--quiet"]
        started = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - started
        (compare_dir,) = Path(tmp, "runs").glob("compare-*")
        return {"wall_s": wall, "leaderboard": _leaderboard(compare_dir)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--before", help="another source tree's src/ folder (PYTHONPATH)")
    p.add_argument("--sides", default="store,no_store")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--set", action="append", default=[], help="an override for both sides")
    args = p.parse_args()
    sides = args.sides.split(",") + (["before"] if args.before else [])
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for r in range(args.repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            res = run_side(side, args.config, args.before, args.set)
            runs[side].append(res)
            first = runs[sides[0]][0]["leaderboard"]
            same = res["leaderboard"] == first
            print(f"  {side} repeat {r + 1}: {res['wall_s']:.1f} s, leaderboard as {sides[0]}'s "
                  f"first: {same}", flush=True)  # fmt: skip
    walls = {s: median([x["wall_s"] for x in v]) for s, v in runs.items()}
    boards = {s: [x["leaderboard"] for x in v] for s, v in runs.items()}
    reference = boards[sides[0]][0]
    identical = {s: all(b == reference for b in bs) for s, bs in boards.items()}
    for s in sides:
        print(
            f"{s:9s} median {walls[s]:7.1f} s  ×{walls[s] / walls[sides[0]]:.3f} of "
            f"{sides[0]}  leaderboard identical to {sides[0]}'s: {identical[s]}"
        )
    save(
        "b8_compare",
        {
            "config": args.config,
            "overrides": args.set,
            "repeats": args.repeats,
            "wall_s": {s: [x["wall_s"] for x in v] for s, v in runs.items()},
            "median_wall_s": walls,
            "leaderboard_identical": identical,
            "leaderboard": reference,
        },
        False,
        args.no_save,
    )


if __name__ == "__main__":
    main()
