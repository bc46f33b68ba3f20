"""Prune a fine-tuned model: zero its smallest weights, or remove whole channels / heads.

--method magnitude: global unstructured magnitude pruning of the Linear and convolution weights
(body and head, not embeddings), made permanent. It only zeroes weights: dense CPU kernels are
NOT faster on zeros, and the file is as large. --method structured: whole channels of a CNN,
whole attention heads and FFN neurons of a BERT-like encoder: a smaller, faster model.
--finetune-epochs N fine-tunes the pruned model N epochs with the run's own config to recover
accuracy. Several amounts (--amount 0.1,0.3,0.5) write DIR/amount-A/ each and a size/accuracy
curve in DIR/results.json.
"""

from __future__ import annotations

import argparse

NAME = "prune"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a run directory (or a model folder)")
    p.add_argument(
        "--method", choices=["magnitude", "structured"], required=True, help="what to remove"
    )
    p.add_argument(
        "--amount",
        required=True,
        help="the fraction to prune, between 0 and 1 (several: 0.1,0.3,0.5)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        metavar="N",
        help="recovery fine-tuning epochs with the run's config (default 0)",
    )
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="the directory to write")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    from graft.deploy.prune import parse_amounts, prune, prune_curve

    amounts = parse_amounts(args.amount)
    common = {
        "method": args.method,
        "finetune_epochs": args.finetune_epochs,
        "out": args.output,
        "force": args.force,
    }
    if len(amounts) == 1:
        target = prune(args.model, amount=amounts[0], **common)
    else:
        target = prune_curve(args.model, amounts=amounts, **common)
    print(f"pruned model: {target}")
    return 0
