"""``graft quantize``: int8 through ONNX Runtime, with the accuracy before and after.

- ``dynamic`` (the default for text encoders): weights quantized to int8 ahead of time,
  activations per batch at run time; no calibration data. The right tool for transformers,
  whose activation ranges vary from input to input.
- ``static`` (the default for image models): weights and activations quantized, the
  activations' ranges calibrated on N training examples; QDQ format, per-channel weights. The
  right tool for CNNs, where run-time range computation would cost what int8 saves.

Which int8 arithmetic is safe depends on the CPU: with VNNI or AMX-INT8 (u8 activations × s8
weights, 32-bit accumulation) the full 8-bit range is used; without them (AVX2 only) ONNX
Runtime's u8×s8 kernel sums pairs in 16 bits, which can saturate, so the weights are quantized
to 7 bits (``reduce_range``), as ONNX Runtime's documentation advises. PyTorch's own int8 path
(``torch.ao.quantization``) is deprecated in the pinned torch and its quantized models save only
as pickles: graft does not use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from graft.artifact import LoadedModel, Predictor, require_classifier
from graft.atomic import atomic_write_text, check_target, staged_dir
from graft.data.types import Examples
from graft.deploy.onnx_export import export_onnx
from graft.deploy.onnx_model import FORMAT_ONNX, ONNX_FILE, OnnxModel, load_onnx_model
from graft.deploy.output import copy_companions, write_meta
from graft.deploy.variants import load_predictor, run_dir_of_variant, variant_sets
from graft.errors import DataError, UsageError
from graft.runtime import int8_kernels

Method = Literal["auto", "dynamic", "static"]
METHODS = ("auto", "dynamic", "static")
CALIBRATION_BATCH = 16


def resolve_method(method: str, source: Predictor) -> str:
    """``auto``: dynamic for text models, static (calibrated) for image models."""
    if method not in METHODS:
        raise UsageError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "auto":
        return "dynamic" if source.modality == "text" else "static"
    return method


class Calibration:
    """ONNX Runtime's calibration reader over graft's own batches of training examples."""

    def __init__(self, model: OnnxModel, examples: Examples) -> None:
        self.batches = iter([inputs for _, inputs in model.batches(examples, CALIBRATION_BATCH)])
        self.names = [i.name for i in model.session().get_inputs()]

    def get_next(self) -> dict[str, np.ndarray] | None:
        inputs = next(self.batches, None)
        return None if inputs is None else {n: inputs[n].numpy() for n in self.names}

    def rewind(self) -> None:  # part of ORT's reader interface; one pass is all graft asks
        pass


def calibration_examples(source: Predictor, n: int) -> Examples:
    """The first ``n`` training examples of the run (a seeded, shuffled split already)."""
    if n < 1:
        raise UsageError(f"--calibration {n}: give a number of examples >= 1")
    if run_dir_of_variant(source) is None:
        raise UsageError(
            f"{source.folder}: static quantization calibrates on the run's training examples, "
            "and this model has no run config beside it",
            hint="quantize a run directory (or an export of one), or use --method dynamic",
        )
    train = variant_sets(source, ("train",))["train"]
    return train.subset(range(min(n, len(train))), f"{train.origin} (calibration)")


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """The quantizer logs advice through the root logger (pre-processing, per-channel
    defaults) that graft has already followed or decided against: not for the user."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def clean_shapes(source: Path, target: Path) -> None:
    """A copy of the ONNX file without its recorded intermediate shapes. torch's exporter
    records some that its own graph optimizer then invalidates (a transposed weight keeps its
    old shape), and ONNX's strict shape inference, which the quantizer runs, refuses them;
    ONNX infers them again."""
    import onnx

    graph = onnx.load(str(source))
    del graph.graph.value_info[:]
    onnx.save(graph, str(target))


def quantize_onnx(
    fp32: OnnxModel, path: Path, method: str, calibration: Examples | None
) -> dict[str, Any]:
    """Write the int8 model of ``fp32`` to ``path``; return the settings used."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    kernels = int8_kernels()
    reduce_range = kernels == "none"
    with tempfile.TemporaryDirectory(dir=path.parent) as work, quiet_root_logger():
        prepared = Path(work) / "prepared.onnx"
        clean_shapes(fp32.folder / ONNX_FILE, prepared)
        if method == "static":
            # ONNX Runtime's pre-processing folds BatchNorm into the convolutions before the
            # weights are quantized (else they are quantized unfolded, and the fold at load
            # time is lost). For the dynamic path it measured slower (2.9 vs 2.2 ms per
            # MiniLM text here): skipped.
            quant_pre_process(str(prepared), str(prepared), skip_symbolic_shape=True)
        if method == "dynamic":
            quantize_dynamic(
                prepared,
                path,
                weight_type=QuantType.QInt8,
                # Per output channel: MiniLM on VADER lost 1.4 test points per tensor, 0.1 so.
                per_channel=True,
                reduce_range=reduce_range,
            )
            return {
                "method": "dynamic",
                "weights": "int8 (per channel)",
                "activations": "uint8, ranges per batch at run time",
                "reduce_range": reduce_range,
                "int8_kernels": kernels,
            }
        assert calibration is not None
        quantize_static(
            prepared,
            path,
            Calibration(fp32, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "method": "static",
        "weights": "int8 (per channel)",
        "activations": "uint8, ranges calibrated (MinMax)",
        "format": "QDQ",
        "calibration_examples": len(calibration),
        "reduce_range": reduce_range,
        "int8_kernels": kernels,
    }


def ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def accuracy(model: Predictor, sets: dict[str, Examples]) -> dict[str, Any]:
    """Classification metrics of ``model`` on each named set."""
    return {name: model.evaluate(examples) for name, examples in sets.items()}


def quantize(
    model_path: str | Path,
    *,
    method: Method = "auto",
    calibration: int = 1000,
    output: str | Path,
    force: bool = False,
) -> dict[str, Any]:
    """Quantize the model at ``model_path`` (a graft model or run directory: exported to ONNX
    first, parity checked; or an ONNX export) to int8 into the folder ``output``; measure both
    on the run's validation and test sets; return the summary (also ``results.json``)."""
    target = Path(output)
    check_target(target, force)
    source = load_predictor(model_path)
    require_classifier(source, "graft quantize")
    chosen = resolve_method(method, source)
    if isinstance(source, OnnxModel) and "quantization" in source.meta:
        raise UsageError(f"{source.folder}: is quantized already; quantize the fp32 model")
    calib = calibration_examples(source, calibration) if chosen == "static" else None
    has_data = run_dir_of_variant(source) is not None
    sets = variant_sets(source, ("validation", "test")) if has_data else {}
    started = time.perf_counter()
    with staged_dir(target, "quantized model") as tmp:
        if isinstance(source, LoadedModel):
            fp32_dir = tmp / "fp32"
            fp32_dir.mkdir()
            export_onnx(source, fp32_dir)
            fp32 = load_onnx_model(fp32_dir)
        else:
            assert isinstance(source, OnnxModel)
            fp32 = source
        copy_companions(source, tmp)
        settings = quantize_onnx(fp32, tmp / ONNX_FILE, chosen, calib)
        settings["onnxruntime"] = ort_version()
        write_meta(source, tmp, format=FORMAT_ONNX, quantization=settings)
        try:
            int8 = load_onnx_model(tmp)
        except DataError as e:
            raise DataError(f"the quantized model does not load: {e.message}") from None
        size = {
            "fp32_mb": (fp32.folder / ONNX_FILE).stat().st_size / 2**20,
            "int8_mb": (tmp / ONNX_FILE).stat().st_size / 2**20,
        }
        results: dict[str, Any] = {
            "quantization": settings,
            "size": size,
            "before": accuracy(source, sets),
            "after": accuracy(int8, sets),
            "quantize_time_s": time.perf_counter() - started,
        }
        if isinstance(source, LoadedModel):
            shutil.rmtree(tmp / "fp32")  # the int8 model is the output; the export was a step
        atomic_write_text(tmp / "results.json", json.dumps(results, indent=1))
    return {"output": str(target), **results}
