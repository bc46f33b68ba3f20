"""Export a fine-tuned model to a standard format: ONNX, Hugging Face, timm, TorchScript.

Every export is checked against the eager PyTorch model on real examples at batch 1, 7 and 32
(ONNX and TorchScript: max |logit difference| <= 1e-4) and refused, saying by how much, when it
differs. ONNX: dynamic batch and sequence axes, labels and preprocessing in graft_model.json;
graft eval / predict / benchmark run it with ONNX Runtime. hf: a folder that
transformers.pipeline loads (text models); timm: the checkpoint and config timm loads.
"""

from __future__ import annotations

import argparse
import json

from graft.cli.options import add_model

NAME = "export"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from graft.deploy.export import FORMATS

    add_model(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="the format to write")
    p.add_argument("--output", "-o", required=True, help="the folder to write")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args: argparse.Namespace) -> int:
    from graft.deploy.export import export

    summary = export(args.model, args.format, args.output, force=args.force)
    if args.json:
        print(json.dumps(summary))
        return 0
    parity = summary.get("parity", {}).get("max_abs_diff", {})
    checked = ", ".join(f"batch {k} {float(v):.1e}" for k, v in parity.items())
    print(f"{args.format} model: {summary['output']}")
    if checked:
        print(f"parity with eager PyTorch (max |logit difference|): {checked}")
    return 0
