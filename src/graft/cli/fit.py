"""Fine-tune a pretrained backbone as a YAML config says.

Fine-tune: load data and backbone, run the strategy's plan with evaluation each epoch, keep the
best epoch, evaluate on test and extra sets, save the model, and write a report. Overrides are
dotted key=value pairs, e.g. optim.lr=3e-4.
"""

from __future__ import annotations

import argparse

from graft.cli.options import add_config, add_quiet
from graft.errors import UsageError

NAME = "fit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue an interrupted run (default: the newest unfinished one with this config)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even if the config or the data changed since the run began",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (same as train.deterministic=true)",
    )
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from graft.run import fit

    if args.force and not args.resume:
        raise UsageError("--force applies to --resume only")
    overrides = [*args.overrides, *(["train.deterministic=true"] if args.deterministic else [])]
    result = fit(args.config, overrides, resume=args.resume, force=args.force, quiet=args.quiet)
    acc = result.test_accuracy
    print(f"{result.run_dir}\ttest accuracy {acc:.4f}" if acc is not None else str(result.run_dir))
    return 0
