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


def run(args: argparse.Namespace) -> int:
    from graft.reports.compare import report_from_dirs

    print(report_from_dirs(args.runs, args.output, args.title))
    return 0
