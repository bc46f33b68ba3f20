"""One comparison report (HTML) from finished runs or compare directories.

Group the runs by strategy and write the comparison report: leaderboard over seeds, curves,
cost, domain shift, best run, configs, environment.
"""

from __future__ import annotations

import argparse

NAME = "report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or compare directories")
    p.add_argument("--output", "-o", default="report.html", help="the HTML file to write")
    p.add_argument("--title", help="the report's title")
    p.add_argument(
        "--oracle",
        nargs="+",
        default=[],
        metavar="DIR",
        help="runs trained with the target's labels: the report shows how much of the "
        "baseline → oracle gap each strategy closes on the extra sets they share",
    )
    p.add_argument("--baseline", metavar="LABEL", help="the source-only strategy (with --oracle)")


def run(args: argparse.Namespace) -> int:
    from graft.reports.compare import report_from_dirs

    print(
        report_from_dirs(
            args.runs, args.output, args.title, oracle=args.oracle, baseline=args.baseline
        )
    )
    return 0
