"""Domain-adaptation terms: what a training step adds for the unlabeled target examples of its
batch (``data.target_unlabeled``; their target is :data:`~graft.distill.IGNORE_INDEX`).

Each term takes the logits of the batch's target rows (DANN: the features of every row too) and
returns a scalar added to the supervised loss of the source rows, times ``adapt.weight``:

- ``entropy``: the mean entropy of the target predictions (Grandvalet & Bengio 2005): pushes the
  decision boundary away from the target examples.
- ``mcc``: minimum class confusion (Jin et al. 2020, "Minimum Class Confusion for Versatile
  Domain Adaptation"): the between-class confusion of the temperature-scaled target predictions,
  each example weighted by its certainty, normalised per class; no adversary.
- ``self_training``: cross-entropy against the model's own confident predictions (pseudo-labels
  whose probability reaches ``threshold``), re-labeled at every step from the current model.
- ``dann``: a domain classifier on the head's input features through a gradient-reversal layer
  (Ganin & Lempitsky 2015): the classifier learns to tell source from target, the reversed
  gradient teaches the body features it cannot; λ rises as ``2 / (1 + exp(−10 p)) − 1`` with the
  training progress p, times ``adapt.weight``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("none", "entropy", "mcc", "self_training", "dann")


def prediction_entropy(logits: Tensor) -> Tensor:
    """The mean over rows of the entropy of ``softmax(logits)`` (nats)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


def minimum_class_confusion(logits: Tensor, temperature: float = 2.5) -> Tensor:
    """MCC (Jin et al. 2020, Eqs. 1–6): with ``Ŷ = softmax(Z / T)`` over the B target rows,
    weights ``w_i = B (1 + e^{−H(Ŷ_i)}) / Σ_j (1 + e^{−H(Ŷ_j)})``, the class confusion
    ``C = Ŷᵀ diag(w) Ŷ`` with each row normalised to sum 1; the loss is the sum of its
    off-diagonal entries divided by the number of classes."""
    probs = F.softmax(logits.float() / temperature, dim=1)
    entropy = -(probs * torch.log(probs + 1e-5)).sum(1)
    weights = 1 + torch.exp(-entropy)
    weights = len(probs) * weights / weights.sum()
    confusion = (probs * weights[:, None]).T @ probs
    confusion = confusion / confusion.sum(1, keepdim=True)
    n = confusion.shape[0]
    return (confusion.sum() - confusion.trace()) / n


def pseudo_label_loss(logits: Tensor, threshold: float) -> Tensor:
    """Cross-entropy of the rows whose top probability reaches ``threshold`` against their own
    (detached) top class, averaged over all target rows (so a batch with few confident rows
    weighs little); zero when none is confident."""
    logits = logits.float()
    with torch.no_grad():
        confidence, labels = F.softmax(logits, dim=1).max(1)
        confident = confidence >= threshold
    if not bool(confident.any()):
        return logits.sum() * 0.0  # keeps the graph: backward works whatever the batch
    per_row = F.cross_entropy(logits, labels, reduction="none")
    return (per_row * confident).sum() / len(logits)


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``−λ`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lam * grad, None


def reverse_gradient(x: Tensor, lam: float) -> Tensor:
    """``x`` unchanged, with its gradient reversed and scaled by ``lam`` on the way back."""
    return GradientReversal.apply(x, lam)  # type: ignore[no-any-return]


def dann_lambda(progress: float, weight: float = 1.0) -> float:
    """Ganin & Lempitsky's schedule: 0 at the start, → ``weight`` as training ends."""
    p = min(max(progress, 0.0), 1.0)
    return weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class DomainClassifier(nn.Module):
    """Features → hidden → ReLU → dropout → one logit (target = 1, source = 0)."""

    def __init__(self, features: int, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)  # type: ignore[no-any-return]
