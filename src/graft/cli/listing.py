"""``graft list strategies | datasets | backbones``: what graft knows by name."""

from __future__ import annotations

import argparse

from graft.cli.options import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("list", help="list backbones families, strategies or datasets")
    p.add_argument("what", choices=["strategies", "datasets", "backbones"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.what == "strategies":
        from graft.strategies import strategy_summaries

        for name, summary in strategy_summaries().items():
            print(f"{name:16s} {summary}")
    elif args.what == "datasets":
        from graft.data import list_datasets

        for info in list_datasets():
            splits = ",".join(info.splits)
            print(f"{info.name:16s} {info.modality:6s} splits: {splits:12s} {info.description}")
    else:
        from graft.models import families

        print("families:", ", ".join(families()))
        print("offline pretrained: tf_efficientnet_lite0 (timm), minilm (hf)")
        print(
            "any timm/torchvision model name, or hf:<hub id or folder>, works with pretrained=false"
        )
    return 0
