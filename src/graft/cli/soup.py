"""Average the weights of several fine-tuned runs into one model (a model soup).

The ingredients are finished runs of one backbone on the same data (run directories, or compare
directories: e.g. a compare's seeds). --greedy (the default) adds runs in order of validation
accuracy and keeps each only if the soup's validation accuracy does not drop; --uniform averages
them all. The soup is written as a graft model directory with a report.
"""

from __future__ import annotations

import argparse

NAME = "soup"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_OR_COMPARE_DIR", help="the ingredients")
    method = p.add_mutually_exclusive_group()
    method.add_argument(
        "--greedy", dest="method", action="store_const", const="greedy", help="(default)"
    )
    method.add_argument("--uniform", dest="method", action="store_const", const="uniform")
    p.set_defaults(method="greedy")
    p.add_argument("--output", "-o", help="the directory to write (default: BEST_RUN-METHOD_soup)")
    p.add_argument(
        "--label", help="its row's name in `graft report` (default: greedy_soup / uniform_soup)"
    )
    p.add_argument(
        "--bn-stats",
        choices=["mix", "recompute"],
        default="mix",
        help="BatchNorm running statistics: mixed like the weights (default), or measured "
        "again on the training examples",
    )
    p.add_argument("--force", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    from graft.merging.soup import soup

    target = soup(
        args.runs,
        method=args.method,
        output=args.output,
        label=args.label,
        bn_stats=args.bn_stats,
        force=args.force,
    )
    print(f"model: {target / 'model'}   report: {target / 'report.html'}")
    return 0
