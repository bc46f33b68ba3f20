"""``graft compare CONFIG`` (strategies × seeds, resumable) and ``graft report RUN…``."""

from __future__ import annotations

import argparse

from graft.cli.options import Subparsers, add_config, add_quiet


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "compare",
        help="run several strategies × seeds on the same splits; leaderboard and report",
        description="Every strategy × seed of a config (its `compare:` block, or --strategies and "
        "--seeds) on the same data splits and budget, each run a `graft fit` in "
        "output.dir/compare-NAME/. Rerunning the same command resumes: finished runs are kept. "
        "Ends with a leaderboard (mean ± std, significance against the best) and report.html.",
    )
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
    add_quiet(p)
    p.set_defaults(handler=run)

    rep = sub.add_parser(
        "report",
        help="one comparison report (HTML) from finished runs or compare directories",
        description="Group the runs by strategy and write the comparison report: leaderboard "
        "over seeds, curves, cost, domain shift, best run, configs, environment.",
    )
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or compare directories")
    rep.add_argument("--output", "-o", default="report.html", help="the HTML file to write")
    rep.add_argument("--title", help="the report's title")
    rep.set_defaults(handler=report)


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
    )
    print(f"{result.compare_dir}\treport {result.report}")
    return 0


def report(args: argparse.Namespace) -> int:
    from graft.reports.compare import report_from_dirs

    print(report_from_dirs(args.runs, args.output, args.title))
    return 0
