"""A graft model exported to ONNX (or quantized), run by ONNX Runtime.

The folder holds ``model.onnx``, the same ``graft_model.json`` as a PyTorch graft model (labels,
preprocessing, the backbone it came from) with a ``format`` of ``onnx``, and the tokenizer of a
text model. Inputs are made by graft's own pipeline, so the exported model sees exactly what
the PyTorch one saw.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.artifact import META, Predictor
from graft.data.types import Examples, LabelMap
from graft.errors import DataError, UsageError
from graft.models.base import ImagePreprocess, TextPreprocess
from graft.runtime import Precision

ONNX_FILE = "model.onnx"
FORMAT_ONNX = "onnx"


def session(path: Path, threads: int | None = None, device: torch.device | None = None) -> Any:
    """An ONNX Runtime session for ``path``: every graph optimization on, ``threads`` intra-op
    threads (default: all cores, like graft's PyTorch paths), one inter-op thread (the graphs
    are sequential), on CUDA when ``device`` is a GPU and the CUDA provider exists."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UsageError(
                "this ONNX Runtime has no CUDA provider: the exported model runs on the CPU",
                hint="install onnxruntime-gpu, or use the PyTorch model on the GPU",
            )
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own exception types for a bad file
        raise DataError(f"{path}: not a model ONNX Runtime can load ({e})") from None


@dataclass
class OnnxModel(Predictor):
    """A graft model exported to ONNX, run by ONNX Runtime."""

    label_map: LabelMap
    meta: dict[str, Any]
    folder: Path
    prep: ImagePreprocess | TextPreprocess
    text_tokenizer: Any = None
    threads: int | None = None
    sessions: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return "text" if isinstance(self.prep, TextPreprocess) else "image"

    @property
    def preprocess(self) -> ImagePreprocess | TextPreprocess:
        return self.prep

    @property
    def tokenizer(self) -> Any:
        return self.text_tokenizer

    def session(self, device: torch.device | None = None) -> Any:
        """The ONNX Runtime session (one per device kind, made on first use)."""
        kind = device.type if device is not None else "cpu"
        if kind not in self.sessions:
            self.sessions[kind] = session(self.folder / ONNX_FILE, self.threads, device)
        return self.sessions[kind]

    def run(
        self, inputs: dict[str, torch.Tensor], device: torch.device | None = None
    ) -> np.ndarray:
        """The logits of one batch of model inputs (as graft's pipeline makes them)."""
        sess = self.session(device)
        feed = {i.name: inputs[i.name].numpy() for i in sess.get_inputs()}
        return np.asarray(sess.run(None, feed)[0], dtype=np.float32)

    def logits(
        self,
        examples: Examples,
        batch_size: int = 64,
        *,
        device: torch.device | None = None,
        precision: Precision = "fp32",
    ) -> torch.Tensor:
        """The logits of ``examples`` in their order (float32, on the CPU). ``precision`` must
        be fp32: an exported model runs in the types it was exported (or quantized) with."""
        if precision != "fp32":
            raise UsageError(
                f"an ONNX model runs in the types it was exported with, not under {precision} "
                "autocast"
            )
        examples = self.examples(examples)
        out = torch.empty((len(examples), len(self.label_map)), dtype=torch.float32)
        for index, inputs in self.batches(examples, batch_size):
            out[torch.as_tensor(index)] = torch.from_numpy(self.run(inputs, device))
        return out


def is_onnx_folder(folder: Path) -> bool:
    return (folder / ONNX_FILE).is_file()


def load_onnx_model(folder: Path, threads: int | None = None) -> OnnxModel:
    """Load an ONNX folder written by ``graft export --format onnx`` or ``graft quantize``.
    An ONNX file without graft's description beside it is refused: graft would not know its
    labels or preprocessing."""
    meta_path = folder / META
    if not meta_path.is_file():
        raise DataError(
            f"{folder / ONNX_FILE}: not a graft ONNX model (no {META} beside it: its labels and "
            "preprocessing are unknown)",
            hint="export the model with `graft export MODEL --format onnx -o DIR`",
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_ONNX:
            raise ValueError(f"its format is {meta.get('format')!r}, not {FORMAT_ONNX!r}")
        label_map = LabelMap(tuple(str(x) for x in meta["labels"]))
        prep_d = meta["preprocess"]
        prep: ImagePreprocess | TextPreprocess = (
            ImagePreprocess(
                int(prep_d["image_size"]),
                tuple(prep_d["mean"]),  # type: ignore[arg-type]
                tuple(prep_d["std"]),  # type: ignore[arg-type]
                int(prep_d.get("channels", 3)),
            )
            if prep_d["kind"] == "image"
            else TextPreprocess(int(prep_d["max_length"]))
        )
    except KeyError as e:
        raise DataError(f"{meta_path}: malformed model description: no {e.args[0]!r}") from None
    except (json.JSONDecodeError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path}: malformed model description ({e})") from None
    tokenizer = None
    if isinstance(prep, TextPreprocess):
        from transformers import AutoTokenizer

        tokenizer_dir = folder / "tokenizer"
        if not tokenizer_dir.is_dir():
            raise DataError(f"{folder}: a text model without its tokenizer/ folder")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = OnnxModel(label_map, meta, folder, prep, tokenizer, threads)
    outputs = model.session().get_outputs()
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if isinstance(width, int) and width != len(label_map):
        raise DataError(
            f"{folder / ONNX_FILE}: {width} outputs for {len(label_map)} labels in {META}"
        )
    return model
