"""Interpolate a fine-tuned model with its linear-probe end (WiSE-FT) and keep the best α.

θ(α) = (1 − α)·θ_base + α·θ_ft over every floating-point tensor, for each α of --alphas, measured
on the fine-tuned run's validation, test and extra (shifted-domain) sets; the α with the best
accuracy on --select (validation by default, or a held-out extra set) is written as a graft model
directory with the whole curve and a report. --base is `pretrained` (the pretrained body with a
linear probe fitted on its features), a linear-probe run, or an LP-FT run (its probe phase).
"""

from __future__ import annotations

import argparse

NAME = "interpolate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_FT", help="the fine-tuned run directory (α = 1)")
    p.add_argument(
        "--base",
        default="pretrained",
        help="the α = 0 end: pretrained (default), a linear_probe run, or an lp_ft run",
    )
    p.add_argument(
        "--alphas", default="0:1:0.1", help="start:stop:step or a list (default 0:1:0.1)"
    )
    p.add_argument(
        "--select", default="val", help="where α is chosen: val (default) or an extra set's name"
    )
    p.add_argument("--output", "-o", help="the directory to write (default: MODEL_FT-wise_ft)")
    p.add_argument(
        "--label", default="wise_ft", help="its row's name in `graft report` (default: wise_ft)"
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
    from graft.merging.interpolate import interpolate

    target = interpolate(
        args.model,
        base=args.base,
        alphas=args.alphas,
        select=args.select,
        output=args.output,
        label=args.label,
        bn_stats=args.bn_stats,
        force=args.force,
    )
    print(f"model: {target / 'model'}   report: {target / 'report.html'}")
    return 0
