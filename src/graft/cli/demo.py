"""Fine-tune MiniLM on VADER sentiment and EfficientNet-Lite0 on Fashion-MNIST.

Two real fine-tunes of real pretrained models on real data (subsets sized for a few minutes on a
2-core CPU), each with a report. Run from the repository root.
"""

from __future__ import annotations

import argparse

NAME = "demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", default="configs", help="folder with the demo configs")
    p.add_argument("--output", default="runs/demo", help="where the run directories go")


def run(args: argparse.Namespace) -> int:
    from graft.demo import print_summary, run_demo

    print_summary(run_demo(args.configs, args.output))
    return 0
