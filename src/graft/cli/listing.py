"""List backbone families, strategies or datasets."""

from __future__ import annotations

import argparse

NAME = "list"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["strategies", "datasets", "backbones"])


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
