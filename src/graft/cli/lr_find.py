"""Sweep the learning rate and suggest one (Smith 2017).

Train the plan's first phase for a few batches at exponentially growing learning rates, restore
the model, plot loss against LR and suggest optim.lr. Writes no run directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graft.cli.options import add_config
from graft.errors import UsageError

NAME = "lr-find"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p, "the run config (YAML)")
    p.add_argument("--steps", type=int, default=100, help="sweep length in batches")
    p.add_argument("--plot", default="lr_find.png", help="where to write the plot (PNG)")


def run(args: argparse.Namespace) -> int:
    from graft.config import load_config
    from graft.lr_find import find_lr

    if args.steps < 5:
        raise UsageError("--steps must be at least 5")
    result = find_lr(
        load_config(args.config, args.overrides), steps=args.steps, plot=Path(args.plot)
    )
    print(f"suggested optim.lr: {result['suggestion']}\tplot: {result['plot']}")
    return 0
