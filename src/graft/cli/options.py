"""What several commands share: the parser class and the options defined once."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from graft.errors import UsageError

DATA_FORMATS = ["image_folder", "idx", "csv", "tsv", "jsonl"]  # graft.data.sources.FORMATS


class Parser(argparse.ArgumentParser):
    """argparse, with graft's error format: a usage mistake is a :class:`UsageError` (exit 2,
    one line and a hint), not argparse's own exit."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def add_config(
    p: argparse.ArgumentParser, what: str = "the run config (YAML); see configs/"
) -> None:
    """The config file and its dotted ``key=value`` overrides (which may also follow options)."""
    p.add_argument("config", help=what)
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=3e-4")
    p.set_defaults(takes_overrides=True)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def add_table_options(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """How a data file is read: its format, the IDX labels file, the CSV/TSV/JSONL columns."""
    g.add_argument("--format", choices=DATA_FORMATS, help="default: by the file's extension")
    g.add_argument("--labels-path", help="the IDX labels file")
    g.add_argument("--text-column", default="text", help="the text column of a table (text)")
    g.add_argument("--label-column", default="label", help="the label column of a table (label)")
    g.add_argument("--delimiter", help="a CSV file's separator (default: detected from the header)")


def table_options(args: argparse.Namespace) -> dict[str, Any]:
    """The values of :func:`add_table_options`, as :func:`graft.data.load_examples` takes them."""
    return {
        "format": args.format,
        "labels_path": args.labels_path,
        "text_column": args.text_column,
        "label_column": args.label_column,
        "delimiter": args.delimiter,
    }


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="a run directory or its model/ folder, or a folder graft export (onnx), quantize "
        "or prune wrote",
    )


BACKENDS = ["auto", "torch", "onnxruntime"]  # graft.deploy.variants.BACKENDS


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="the engine: auto (the one the model's weights are for: PyTorch for a graft "
        "model, ONNX Runtime for an exported or quantized one), torch, onnxruntime",
    )
