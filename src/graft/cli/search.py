"""Hyperparameter search (grid, random, TPE, CMA-ES; pruning) over any config field.

A config with a `search:` section (space, n_trials/timeout, metric, sampler, pruner) runs one
`graft fit` per trial in output.dir/search-NAME/ with Optuna; weak trials are pruned from their
per-epoch validation metric. Writes best_config.yaml, search.json and report.html. The study
lives in study.db there, or in --storage.
"""

from __future__ import annotations

import argparse

from graft.cli.options import add_config, add_quiet
from graft.errors import UsageError

NAME = "search"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p, "a run config (YAML) with a search: section")
    p.add_argument("--n-trials", type=int, help="total trials (overrides search.n_trials)")
    p.add_argument("--timeout", help="wall-time budget, e.g. 15m (overrides search.timeout)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument(
        "--storage",
        help="an Optuna RDB URL, e.g. postgresql://user:pw@host/db, shared by workers on several "
        "machines (default: sqlite study.db in the search directory)",
    )
    p.add_argument("--study-name", help="the study's name (default: the config file's stem)")
    p.add_argument(
        "--resume", action="store_true", help="continue a killed search; finished trials stay"
    )
    p.add_argument(
        "--join", action="store_true", help="add workers to a running search (another machine)"
    )
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from graft.search import search
    from graft.units import parse_duration

    timeout = parse_duration(args.timeout, "--timeout") if args.timeout is not None else None
    if args.n_trials is not None and args.n_trials < 1:
        raise UsageError("--n-trials must be at least 1")
    result = search(
        args.config,
        args.overrides,
        storage=args.storage,
        study_name=args.study_name,
        workers=args.workers,
        resume=args.resume,
        join=args.join,
        n_trials=args.n_trials,
        timeout=timeout,
        quiet=args.quiet,
    )
    best = result.summary["best"]
    value = f"\tbest {result.summary['metric']} {best['value']:.4f}" if best else ""
    print(f"{result.search_dir}{value}")
    return 0
