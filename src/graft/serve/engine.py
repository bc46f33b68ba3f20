"""The model behind the server: raw inputs in, class probabilities out, a batch at a time.

Any model folder ``graft predict`` runs is served the same way (a graft PyTorch model, or an
ONNX export or int8 model on ONNX Runtime), through the same :class:`~graft.artifact.Predictor`
and graft's own pipeline: texts are tokenised, length-sorted and padded per batch, images go
through the same crop, resize and normalisation as image files do. So an answer equals what
``graft predict`` prints for the same input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.artifact import Predictor
from graft.data.images import decode_image
from graft.data.types import Examples
from graft.models.base import ImagePreprocess
from graft.runtime import Precision


@dataclass
class Engine:
    """A loaded model and what the server says about it."""

    predictor: Predictor
    model_id: str
    backend: str
    device: torch.device
    precision: Precision = "fp32"
    #: Texts are computed this many at a time, sorted by length (see ServeSettings.sub_batch).
    sub_batch: int = 16

    @property
    def modality(self) -> str:
        return self.predictor.modality

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.predictor.label_map.names)

    def image_input(self, data: bytes, origin: str, max_pixels: int) -> np.ndarray:
        """An uploaded image decoded (uint8, (H, W) or (H, W, 3)); brought to the model's size
        in :meth:`infer`. Raises :class:`~graft.errors.DataError` for anything that is not a
        usable image. Pillow only: safe on any thread."""
        return decode_image(data, origin, max_pixels)

    def infer(self, inputs: list[Any]) -> np.ndarray:
        """Class probabilities (float32, one row per input) of one batch: texts, or images
        from :meth:`image_input` (cropped and resized here exactly as image files are,
        :func:`graft.pipeline.square_image`)."""
        if self.modality == "text":
            examples = Examples("text", list(inputs), ["?"] * len(inputs), "request")
            # graft's pipeline groups texts by length: sub-batches of like lengths pad little.
            size = min(len(inputs), self.sub_batch)
        else:
            from graft.pipeline import square_image

            prep = self.predictor.preprocess
            assert isinstance(prep, ImagePreprocess)
            images = np.stack([square_image(x, prep.image_size) for x in inputs])
            examples = Examples("image", images, ["?"] * len(inputs), "request")
            size = len(inputs)
        logits = self.predictor.logits(
            examples, batch_size=size, device=self.device, precision=self.precision
        )
        return logits.softmax(1).numpy()

    def warm_up(self, batch_size: int) -> None:
        """Run the model once at the largest batch, so the first request does not pay for
        lazy initialisation (allocator growth, ONNX Runtime's first run, kernel choice)."""
        if self.modality == "text":
            inputs: list[Any] = ["a warm-up text of a few words"] * batch_size
        else:
            prep = self.predictor.preprocess
            assert isinstance(prep, ImagePreprocess)
            size = prep.image_size
            inputs = [np.zeros((size, size, 3), dtype=np.uint8)] * batch_size
        self.infer(inputs)

    def metadata(self) -> dict[str, Any]:
        """What ``GET /v1/metadata`` answers: labels, preprocessing, backbone, training
        metrics, where the model came from."""
        import graft

        meta = self.predictor.meta
        backbone = meta.get("backbone") or {}
        return {
            "model_id": self.model_id,
            "modality": self.modality,
            "labels": list(self.labels),
            "backend": self.backend,
            "device": str(self.device),
            "precision": self.precision,
            "format": meta.get("format", "graft"),
            "preprocess": self.predictor.preprocess.to_dict(),
            "backbone": {
                k: backbone[k]
                for k in ("source", "name", "num_classes", "pooling")
                if k in backbone
            },
            "metrics": meta.get("metrics") or {},
            "graft_version": graft.__version__,
        }


def model_id(folder: Path) -> str:
    """``NAME@HASH``: the run's name (a run directory's, not its ``model/``) and the first 12
    hex digits of a SHA-256 over the folder's model files, so a replaced model gets a new id."""
    name = folder.parent.name if folder.name == "model" else folder.name
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return f"{name}@{digest.hexdigest()[:12]}"
