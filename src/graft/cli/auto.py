"""Automated fine-tuning within a wall-time budget: probe, screen, search, train.

DATA is a named dataset (see `graft list datasets`) or a path (image folder, CSV/TSV/JSONL,
IDX). Picks a backbone for the data type, screens strategies cheaply (a linear probe on cached
features first, then short runs), searches around the winner, trains the final model and writes
a report, all within --budget.
"""

from __future__ import annotations

import argparse

from graft.cli.options import add_quiet, add_table_options, table_options

NAME = "auto"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a named dataset or a path")
    p.add_argument(
        "overrides", nargs="*", help="dotted.key=value set on every run, e.g. train.batch_size=64"
    )
    p.add_argument("--budget", default="15m", help="wall-time budget: 90s, 15m, 1h (15m)")
    p.add_argument("--backbone", help="the backbone (default: by data type)")
    p.add_argument("--train-size", type=int, help="cap on training examples")
    p.add_argument("--val-size", type=int, help="cap on validation examples")
    p.add_argument("--test-size", type=int, help="cap on test examples")
    p.add_argument("--image-size", type=int, help="image side in pixels")
    p.add_argument("--max-length", type=int, help="text length in tokens")
    add_table_options(p)
    p.add_argument("--output", default="runs", help="where the auto directory goes (runs)")
    p.add_argument("--name", help="the auto directory's name (default: auto-DATA)")
    add_quiet(p)
    p.set_defaults(takes_overrides=True)


def run(args: argparse.Namespace) -> int:
    from graft.auto import AutoOptions, run_auto
    from graft.units import parse_duration

    options = AutoOptions(
        data=args.data,
        budget_s=parse_duration(args.budget, "--budget"),
        backbone=args.backbone,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        image_size=args.image_size,
        max_length=args.max_length,
        **table_options(args),
        output=args.output,
        name=args.name,
        quiet=args.quiet,
        overrides=list(args.overrides),
    )
    result = run_auto(options)
    acc = result.get("final", {}).get("test_accuracy")
    shown = f"\ttest accuracy {acc:.4f}" if isinstance(acc, float) else ""
    print(f"{result['auto_dir']}{shown}")
    return 0
