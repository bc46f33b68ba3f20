"""Evaluate a saved model on a labeled dataset.

Accuracy, macro-F1, per-class scores and the confusion matrix of a saved model on labeled data.
The data's labels must be among the model's classes.
"""

from __future__ import annotations

import argparse
import json

from graft.cli.options import add_backend, add_model, add_table_options, table_options
from graft.errors import UsageError

NAME = "eval"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_backend(p)
    g = p.add_argument_group("data (a named set, or a file/folder)")
    g.add_argument("--dataset", help="a named real dataset (see `graft list datasets`)")
    g.add_argument("--split", help="the named set's split (default: test if it has one)")
    g.add_argument("--path", help="an image folder, IDX images file, or CSV/TSV/JSONL file")
    add_table_options(g)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from graft.data import get_dataset, load_examples
    from graft.deploy.variants import load_predictor
    from graft.metrics import summary_line

    if args.dataset is not None and args.path is not None:
        raise UsageError("graft eval: give --dataset NAME or --path FILE, not both")
    if args.dataset is None and args.path is None:
        raise UsageError(
            "graft eval needs one of --dataset NAME or --path FILE",
            hint="e.g. graft eval runs/RUN --dataset vader_tweets",
        )
    loaded = load_predictor(args.model, args.backend)
    split = args.split
    if args.dataset and split is None:
        split = "test" if "test" in get_dataset(args.dataset).splits else None
    examples = load_examples(
        dataset=args.dataset, split=split, path=args.path, **table_options(args)
    )
    metrics = loaded.evaluate(examples)
    names = list(loaded.label_map.names)
    if args.json:
        print(json.dumps(metrics))
        return 0
    print(f"{examples.origin}: {summary_line(metrics)}")
    if "per_class" not in metrics:  # a regression: the line above is the whole answer
        return 0
    width = max(len(n) for n in names)
    print(f"{'class':<{width}}  precision  recall      f1  support")
    for name in names:
        c = metrics["per_class"][name]
        print(
            f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  "
            f"{c['support']:7d}"
        )
    return 0
