"""Quantize a fine-tuned model to int8 (ONNX Runtime) and measure what it costs in accuracy.

--method dynamic (the default for text models) quantizes weights ahead of time and activations
per batch; --method static (the default for image models) also calibrates the activations' ranges
on --calibration N training examples of the run. The model is exported to ONNX first (parity
checked). Validation and test accuracy before and after are printed and stored in results.json;
graft eval, predict and benchmark run the result with ONNX Runtime.
"""

from __future__ import annotations

import argparse

from graft.cli.options import add_model

NAME = "quantize"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument(
        "--method",
        choices=["auto", "dynamic", "static"],
        default="auto",
        help="auto: dynamic for text models, static for image models",
    )
    p.add_argument(
        "--calibration",
        type=int,
        default=1000,
        metavar="N",
        # Lite0 on Fashion-MNIST lost 1.25 test points calibrated on 200 images, 0.45 on 1,000.
        help="training examples to calibrate static quantization on (default 1000, or all)",
    )
    p.add_argument("--output", "-o", required=True, help="the folder to write")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    from graft.deploy.quantize import quantize

    summary = quantize(
        args.model,
        method=args.method,
        calibration=args.calibration,
        output=args.output,
        force=args.force,
    )
    q, size = summary["quantization"], summary["size"]
    print(
        f"int8 model ({q['method']}, int8 kernels: {q['int8_kernels']}): {summary['output']}  "
        f"{size['fp32_mb']:.1f} MB -> {size['int8_mb']:.1f} MB"
    )
    for name, before in summary["before"].items():
        after = summary["after"][name]
        print(
            f"{name}: accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} "
            f"({100 * (after['accuracy'] - before['accuracy']):+.2f} points)"
        )
    return 0
