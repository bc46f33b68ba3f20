"""Run several strategies × seeds on the same splits; leaderboard and report.

Every strategy × seed of a config (its `compare:` block, or --strategies and --seeds) on the
same data splits and budget, each run a `graft fit` in output.dir/compare-NAME/. Rerunning the
same command resumes: finished runs are kept. Ends with a leaderboard (mean ± std, significance
against the best) and report.html. --workers N runs N at once; --storage URL (PostgreSQL) lets
`graft compare --storage URL --join` on other machines take runs of the same compare.
"""

from __future__ import annotations

import argparse

from graft.cli.options import add_config, add_quiet

NAME = "compare"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p, "the base run config (YAML), optionally with compare:")
    p.add_argument("--strategies", help="comma-separated strategy names (replace compare:'s)")
    p.add_argument("--seeds", help="how many seeds (3), or which (0,1,2); varies train.seed")
    p.add_argument("--name", help="the compare directory's name (default: the config's)")
    p.add_argument("--resume", action="store_true", help="insist on continuing a compare")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every fit in this process (faster start; peak memory is then not per run)",
    )
    p.add_argument("--verbose", action="store_true", help="show each run's own log")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at once on this machine (threads split between them: cores // N each)",
    )
    p.add_argument(
        "--storage",
        help="an Optuna RDB URL, e.g. postgresql://user:pw@host/db, where workers on several "
        "machines claim the runs (output.dir must then be a folder they share)",
    )
    p.add_argument(
        "--join",
        action="store_true",
        help="take runs of a compare started elsewhere with the same --storage (another "
        "machine); leaves when none is left, the starting process writes the summary",
    )
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from graft.compare import compare

    result = compare(
        args.config,
        args.overrides,
        strategies=args.strategies,
        seeds=args.seeds,
        name=args.name,
        resume=args.resume,
        isolate=not args.in_process,
        quiet=args.quiet,
        verbose=args.verbose,
        workers=args.workers,
        storage=args.storage,
        join=args.join,
    )
    if args.join:
        print(f"{result.compare_dir}\tjoined: {result.ran} run(s) trained here")
    else:
        print(f"{result.compare_dir}\treport {result.report}")
    return 0
