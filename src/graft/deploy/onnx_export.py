"""``graft export --format onnx``: a graft model as an ONNX graph, checked against PyTorch.

The exporter is torch's own ``torch.onnx.export(..., dynamo=True)``: in torch 2.9+ the
maintained one (it traces with ``torch.export`` and translates through onnxscript; the older
TorchScript-based exporter is deprecated). Batch and sequence axes are dynamic, so one file
serves every batch size and text length. The export is kept only if ONNX Runtime's logits
equal eager PyTorch's within 1e-4 at batch 1, 7 and 32 on real examples
(:mod:`graft.deploy.parity`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from graft.artifact import LoadedModel
from graft.deploy.onnx_model import FORMAT_ONNX, ONNX_FILE, load_onnx_model
from graft.deploy.output import copy_companions, write_meta
from graft.deploy.parity import check_parity, parity_examples, torch_logits
from graft.errors import DataError

# ONNX opset 18: the exporter's default in torch 2.14, run by every ONNX Runtime since 1.14,
# and the first with the reductions' axes as inputs that the quantizer's tools expect.
OPSET = 18


def dynamic_shapes(inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, Any]]:
    """Batch dynamic for every input; the sequence axis too for token inputs."""
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    return {
        name: {0: batch} if name == "pixel_values" else {0: batch, 1: sequence} for name in inputs
    }


def write_onnx(net: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> None:
    """Export ``net`` (eval mode, fp32, on the CPU) called with ``inputs`` to ``path``."""
    quiet = io.StringIO()
    # The exporter prints its progress and warns about every shape guard it meets: noise for a
    # user, who gets the parity figures instead.
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
    ):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                net,
                (),
                str(path),
                kwargs=inputs,
                input_names=list(inputs),
                output_names=["logits"],
                dynamo=True,
                dynamic_shapes=dynamic_shapes(inputs),
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
        except Exception as e:  # the exporter's errors name the unsupported operator
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"torch.onnx.export could not export this {type(net).__name__}: {detail}",
                hint="try --format torchscript, or report the architecture",
            ) from None


def export_onnx(model: LoadedModel, folder: Path) -> dict[str, Any]:
    """Write ``model`` as ``model.onnx`` + ``graft_model.json`` (+ tokenizer, + the run's
    config) into ``folder``; check parity; return what was done."""
    net = model.backbone.model.to("cpu").float().eval()
    examples = parity_examples(model)
    # A batch of 4 real examples to trace: more than one, so the batch axis is not taken for a
    # constant 1.
    _, inputs = next(model.batches(examples.subset(range(min(4, len(examples)))), 4))
    copy_companions(model, folder)
    write_onnx(net, inputs, folder / ONNX_FILE)
    details = {
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "inputs": list(inputs),
        "dynamic_axes": "batch" if model.modality == "image" else "batch, sequence",
    }
    write_meta(model, folder, format=FORMAT_ONNX, onnx=details)
    exported = load_onnx_model(folder)
    parity = check_parity(
        model, torch_logits(net), exported.run, what="ONNX export", examples=examples
    )
    details["parity"] = parity.to_dict()
    write_meta(model, folder, format=FORMAT_ONNX, onnx=details)
    return {
        "format": FORMAT_ONNX,
        **details,
        "size_mb": (folder / ONNX_FILE).stat().st_size / 2**20,
    }
