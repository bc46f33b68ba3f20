"""Parity of an exported model with the eager PyTorch model it came from.

An export is only as good as its agreement with the model that was measured: every export
compares its logits with eager PyTorch's on real examples at several batch sizes (1, an odd
size, a full batch) and fails, saying by how much, when they differ by more than a tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.artifact import Predictor
from graft.data.types import Examples
from graft.deploy.variants import run_dir_of_variant, variant_sets
from graft.errors import DataError

PARITY_BATCHES = (1, 7, 32)
FP32_TOLERANCE = 1e-4

Inputs = dict[str, torch.Tensor]
LogitsFn = Callable[[Inputs], np.ndarray]


@dataclass
class Parity:
    """The largest absolute logit difference at each batch size, and what was compared on."""

    max_abs_diff: dict[int, float]
    examples: str
    tolerance: float

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": {str(k): v for k, v in self.max_abs_diff.items()},
            "examples": self.examples,
            "tolerance": self.tolerance,
        }


def parity_examples(model: Predictor, n: int = max(PARITY_BATCHES)) -> Examples:
    """``n`` real examples for a parity check: the first of the validation set of the run the
    model comes from (rebuilt from its ``config.yaml``), else synthetic inputs of the model's
    kind (noise images; texts of varied length from the tokenizer's vocabulary)."""
    if run_dir_of_variant(model) is not None:
        try:
            validation = variant_sets(model, ("validation",))["validation"]
            return validation.subset(range(min(n, len(validation))))
        except (DataError, OSError):
            pass  # the run's data is not on this machine: synthetic inputs still compare
    rng = np.random.default_rng(0)
    if model.modality == "image":
        images = rng.integers(0, 256, size=(n, 48, 48, 3), dtype=np.uint8)
        return Examples("image", images, ["?"] * n, "synthetic images")
    vocab = [w for w in model.tokenizer.get_vocab() if w.isalpha()][:5000]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(1, 40)))) for _ in range(n)]
    return Examples("text", texts, ["?"] * n, "synthetic texts")


def check_parity(
    model: Predictor,
    reference: LogitsFn,
    candidate: LogitsFn,
    *,
    what: str,
    examples: Examples | None = None,
    batch_sizes: Sequence[int] = PARITY_BATCHES,
    tolerance: float = FP32_TOLERANCE,
    folder: Path | None = None,
) -> Parity:
    """Compare ``candidate``'s logits with ``reference``'s on the same batches (graft's own
    pipeline with the model's preprocessing) at each batch size; raise a :class:`DataError`
    that says by how much when the largest difference exceeds ``tolerance``."""
    examples = examples if examples is not None else parity_examples(model)
    worst: dict[int, float] = {}
    scale = 1.0
    for size in batch_sizes:
        diff = 0.0
        for _, inputs in model.batches(examples, size):
            a, b = reference(inputs), candidate(inputs)
            if a.shape != b.shape:
                raise DataError(f"{what}: logits of shape {b.shape}, eager PyTorch {a.shape}")
            diff = max(diff, float(np.abs(a.astype(np.float64) - b).max()))
            scale = max(scale, float(np.abs(a).max()))
        worst[size] = diff
    # The tolerance is relative to the logits' size once they exceed 1: two correct fp32
    # engines differ by rounding, which grows with the values (Lite0's logits of up to 12
    # differed by 1.25e-4 between ONNX Runtime and PyTorch; ONNX Runtime with every graph
    # optimization off was 1.1e-4 from float64, PyTorch 2.5e-5).
    allowed = tolerance * scale
    parity = Parity(worst, examples.origin, allowed)
    if not parity.worst <= allowed:  # also catches NaN
        sizes = ", ".join(f"batch {k}: {v:.2e}" for k, v in worst.items())
        raise DataError(
            f"{what}{f' ({folder})' if folder else ''}: its logits differ from eager PyTorch's by "
            f"up to {parity.worst:.2e} (allowed {allowed:.1e}, {tolerance:.0e} x the largest "
            f"logit; {sizes}); nothing was written",
            hint="this is a bug of the exporter for this architecture; use another --format",
        )
    return parity


def torch_logits(model: torch.nn.Module) -> LogitsFn:
    """Eager PyTorch's logits of a batch (the reference of every parity check)."""

    def run(inputs: Inputs) -> np.ndarray:
        with torch.no_grad():
            return model(**inputs).float().numpy()

    return run
