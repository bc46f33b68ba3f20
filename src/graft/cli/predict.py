"""Predict the class of images or texts with a saved model.

Each INPUT is an image file (image models) or a text (text models); for a text model, `-` reads
one text per line from standard input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from graft.cli.options import add_backend, add_model
from graft.data.types import Examples
from graft.errors import UsageError

NAME = "predict"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_backend(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--json", action="store_true", help="print predictions as JSON lines")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="fp32 (default), bf16 autocast, or auto: bf16 where the CPU/GPU computes it "
        "natively (not CNNs on a CPU), as graft serve and training do",
    )


def _stdin_texts() -> list[str]:
    """The non-blank lines of standard input, which must be UTF-8 text."""
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(f"standard input, line {line}: not UTF-8 text") from None
    return [line for line in text.splitlines() if line.strip()]


def read_inputs(model_modality: str, inputs: Sequence[str]) -> tuple[list[str], Examples]:
    """What to show for each input, and the inputs as unlabeled examples of the model's kind."""
    if model_modality == "text":
        texts: list[str] = []
        for number, item in enumerate(inputs, start=1):
            if item == "-":
                texts += _stdin_texts()
                continue
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes on the command line
                raise UsageError(f"INPUT {number}: not UTF-8 text") from None
            if not item.strip():
                raise UsageError(f"INPUT {number} is empty: give a text to classify")
            texts.append(item)
        if not texts:
            raise UsageError("no text to predict: standard input held no line of text")
        return texts, Examples("text", texts, ["?"] * len(texts), "command line")
    paths = [Path(p) for p in inputs]
    from graft.data.images import load_image

    for p in paths:
        load_image(p)  # a clear error for a missing or corrupt file, before any work
    return [str(p) for p in paths], Examples("image", paths, ["?"] * len(paths), "command line")


def run(args: argparse.Namespace) -> int:
    from graft.deploy.variants import backend_of, inference_precision, load_predictor

    loaded = load_predictor(args.model, args.backend)
    _, precision = inference_precision(loaded, backend_of(loaded.folder), "cpu", args.precision)
    shown, examples = read_inputs(loaded.modality, args.inputs)
    for item, pred in zip(shown, loaded.predict(examples, precision), strict=True):
        if args.json:
            print(json.dumps({"input": item, **pred}))
        elif "value" in pred:  # a regression: the number itself
            print(f"{pred['value']:.6g}\t{item}")
        else:
            print(f"{pred['label']}\t{pred['probability']:.3f}\t{item}")
    return 0
