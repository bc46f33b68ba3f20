"""One variant measured in its own process (``python -m graft.deploy.measure JSON``): latency
at batch 1, throughput at larger batches, model size, peak memory and test accuracy, printed
as one JSON line. A fresh process per variant, so that no variant inherits another's warm
caches, thread pools or memory, and its peak resident memory is its own."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.artifact import WEIGHTS, LoadedModel, Predictor
from graft.deploy.onnx_model import ONNX_FILE, OnnxModel
from graft.deploy.variants import load_predictor, run_dir_of_variant, variant_sets
from graft.runtime import Precision, autocast, peak_rss_mb, set_threads

LATENCY_EXAMPLES = 64  # batch-1 calls per repeat: real examples of every length
THROUGHPUT_BATCHES = 8  # batches per repeat at each larger batch size


def forward_of(model: Predictor, precision: Precision) -> Any:
    """A function running one batch of model inputs, as a deployment would: ONNX Runtime's
    session, or the PyTorch model in eval and inference mode (under bf16 autocast if asked)."""
    if isinstance(model, OnnxModel):
        return model.run
    assert isinstance(model, LoadedModel)
    net = model.backbone.model.eval()
    device = torch.device("cpu")

    def run(inputs: dict[str, torch.Tensor]) -> Any:
        with torch.inference_mode(), autocast(device, precision):
            return net(**inputs)

    return run


def timed(run: Any, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """Seconds of each call."""
    out = []
    for inputs in batches:
        start = time.perf_counter()
        run(inputs)
        out.append(time.perf_counter() - start)
    return out


def weights_mb(folder: Path) -> float:
    """The size of the weights file on disk (the tokenizer and JSON are the same for all)."""
    for name in (ONNX_FILE, WEIGHTS):
        if (folder / name).is_file():
            return (folder / name).stat().st_size / 2**20
    return float("nan")


def measure(
    path: str,
    *,
    batch_sizes: list[int],
    repeats: int,
    warmup: int,
    threads: int | None,
    backend: str,
    precision: Precision,
) -> dict[str, Any]:
    """Every figure of one variant (see the module docstring)."""
    threads = set_threads(threads)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    model = load_predictor(path, backend, threads)
    load_s = time.perf_counter() - started
    run = forward_of(model, precision)
    test = variant_sets(model)["test"] if run_dir_of_variant(model) is not None else None
    if test is None:
        raise SystemExit(f"{path}: no test set known (no run config beside the model)")
    result: dict[str, Any] = {
        "path": path,
        "backend": "onnxruntime" if isinstance(model, OnnxModel) else "torch",
        "precision": "int8" if "quantization" in model.meta else precision,
        "made_by": next(
            (k for k in ("quantization", "pruned", "onnx") if k in model.meta), "fine-tuning"
        ),
        "weights_mb": weights_mb(model.folder),
        "load_s": load_s,
        "test_examples": len(test),
    }
    for size in batch_sizes:
        n = LATENCY_EXAMPLES if size == 1 else size * THROUGHPUT_BATCHES
        batches = [
            inputs for _, inputs in model.batches(test.subset(range(min(n, len(test)))), size)
        ]
        for _ in range(warmup):
            timed(run, batches[: max(1, len(batches) // 4)])
        per_call = [timed(run, batches) for _ in range(repeats)]
        examples = sum(len(next(iter(b.values()))) for b in batches)
        if size == 1:
            calls = np.asarray(per_call).ravel() * 1000
            result["latency_ms_p50"] = float(np.percentile(calls, 50))
            result["latency_ms_p99"] = float(np.percentile(calls, 99))
        totals = [sum(times) for times in per_call]
        result[f"throughput_b{size}"] = examples / float(np.median(totals))
    started = time.perf_counter()
    result["test_accuracy"] = model.evaluate(test)["accuracy"]
    result["eval_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_rss_mb()
    result["rss_before_load_mb"] = rss_before
    return result


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    print(json.dumps(measure(**options)))
