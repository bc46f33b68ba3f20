"""Classification losses from flat arguments, and class weights for imbalanced data.

``build_loss`` returns a callable ``loss(logits, targets) -> scalar Tensor``. ``targets`` are class
indices ``(N,)`` or class probabilities ``(N, C)`` (e.g. from mixup); logits are computed on in
float32 whatever the autocast dtype.

The focal loss here generalizes ``torch.nn.functional.cross_entropy`` term by term: every
``−log p_k`` term of the (weighted, label-smoothed) cross-entropy is multiplied by
``(1 − p_k)^γ``. So ``gamma=0`` reproduces cross-entropy exactly — with class weights, label
smoothing and probability targets — and the class weights play the role of Lin et al.'s α_t.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from graft.errors import UsageError

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES = ("cross_entropy", "focal")
REGRESSION_LOSSES = ("mse", "huber", "l1")
MULTILABEL_LOSSES = ("bce",)


@dataclass
class MultiLabelLoss:
    """Binary cross-entropy of each label's logit against its 0/1 target, mean over examples
    and labels; ``pos_weight`` (one per label) weighs a label's positive examples, e.g.
    negatives/positives so that a rare label counts as much as a common one."""

    pos_weight: Tensor | None = None

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        weight = self.pos_weight
        if weight is not None and weight.device != logits.device:
            weight = self.pos_weight = weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(
            logits.float(), targets.float(), pos_weight=weight
        )


@dataclass
class RegressionLoss:
    """A regression loss on standardised targets: the head's one output against ``targets``
    (float, shape (N,)), mean over the batch. ``mse``; ``huber`` (quadratic within ``delta``,
    linear beyond: robust to outlying targets); ``l1`` (the mean absolute error)."""

    name: str = "mse"
    delta: float = 1.0

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        predicted = outputs.float().reshape(-1)
        if self.name == "mse":
            return F.mse_loss(predicted, targets.float())
        if self.name == "huber":
            return F.huber_loss(predicted, targets.float(), delta=self.delta)
        return F.l1_loss(predicted, targets.float())


@dataclass
class ClassificationLoss:
    """A configured loss; call it as ``loss(logits, targets)``. Reduction is the mean over the
    batch, weighted like ``F.cross_entropy``: with class weights and index targets it is
    ``Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}``."""

    name: str = "cross_entropy"
    label_smoothing: float = 0.0
    class_weights: Tensor | None = None
    focal_gamma: float = 2.0

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        logits = logits.float()
        weight = self.class_weights
        # Weights follow the logits' device (moved once, then cached).
        if weight is not None and weight.device != logits.device:
            weight = self.class_weights = weight.to(logits.device)
        if self.name == "cross_entropy":
            return F.cross_entropy(
                logits, targets, weight=weight, label_smoothing=self.label_smoothing
            )
        return focal_loss(
            logits,
            targets,
            gamma=self.focal_gamma,
            weight=weight,
            label_smoothing=self.label_smoothing,
        )


def build_loss(
    name: str = "cross_entropy",
    *,
    label_smoothing: float = 0.0,
    class_weights: Tensor | Sequence[float] | None = None,
    focal_gamma: float = 2.0,
) -> ClassificationLoss:
    """A classification loss ``(logits, targets) -> Tensor``.

    * ``cross_entropy``: with ``label_smoothing`` ε (Szegedy et al. 2016, "Rethinking the
      Inception Architecture", §7): the target becomes ``(1 − ε)·onehot + ε/C``, so the loss is
      ``(1 − ε)·CE + ε·mean_k(−log p_k)``.
    * ``focal``: Lin et al. 2017, "Focal Loss for Dense Object Detection": ``−α_t (1 − p_t)^γ
      log p_t``, which down-weights examples the model already gets right; ``focal_gamma`` = γ
      (the paper's 2 by default), α_t = ``class_weights[y]``.

    ``class_weights`` (one per class, see :func:`class_weights_from_counts`) re-weight every
    example by the weight of its class (Cui et al. 2019 for the effective-number choice).
    """
    if name not in LOSSES:
        raise UsageError(f"loss.name: unknown loss {name!r}", hint=f"one of {', '.join(LOSSES)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise UsageError(f"loss.label_smoothing: must be in [0, 1), got {label_smoothing}")
    if focal_gamma < 0:
        raise UsageError(f"loss.focal_gamma: must be ≥ 0, got {focal_gamma}")
    weights: Tensor | None = None
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
        if weights.ndim != 1 or bool((weights < 0).any()) or not bool(weights.isfinite().all()):
            raise UsageError("loss.class_weights: one finite weight ≥ 0 per class")
    return ClassificationLoss(name, float(label_smoothing), weights, float(focal_gamma))


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Multi-class focal loss (Lin et al. 2017), mean-reduced exactly like ``F.cross_entropy``.

    With index targets: ``[(1−ε) Σ_i w_{y_i} f(p_{i,y_i}) + ε/C Σ_i Σ_k w_k f(p_ik)] / Σ_i w_{y_i}``
    where ``f(p) = −(1 − p)^γ log p``; with probability targets ``q``: ``mean_i Σ_k w_k q'_ik
    f(p_ik)`` with ``q' = (1−ε) q + ε/C``. ``gamma=0`` gives ``F.cross_entropy`` exactly.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    if gamma == 0:
        terms = -logp
    else:
        # Clamp keeps (1 − p)^γ differentiable at p = 1 for γ < 1 (its slope is infinite there).
        modulating = (1.0 - logp.exp()).clamp_min(1e-12).pow(gamma)
        terms = -modulating * logp  # (N, C): f(p_ik)
    n_classes = logits.shape[1]
    w = weight if weight is not None else None
    if targets.dtype.is_floating_point:  # class probabilities
        q = targets.float()
        if label_smoothing:
            q = q * (1.0 - label_smoothing) + label_smoothing / n_classes
        per_class = terms * q if w is None else terms * q * w
        return per_class.sum(1).mean()
    picked = terms.gather(1, targets.unsqueeze(1)).squeeze(1)
    if w is None:
        numerator = (1.0 - label_smoothing) * picked.sum()
        if label_smoothing:
            numerator = numerator + label_smoothing / n_classes * terms.sum()
        return numerator / targets.numel()
    w_t = w[targets]
    numerator = (1.0 - label_smoothing) * (w_t * picked).sum()
    if label_smoothing:
        numerator = numerator + label_smoothing / n_classes * (terms * w).sum()
    return numerator / w_t.sum()


def class_weights_from_counts(
    counts: Sequence[int] | np.ndarray | Tensor,
    scheme: Literal["inverse", "effective_number"] = "inverse",
    beta: float = 0.999,
) -> Tensor:
    """Per-class loss weights from training-set class counts ``n_c``.

    * ``inverse``: ``w_c ∝ 1 / n_c``.
    * ``effective_number``: Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of
      Samples": ``w_c ∝ (1 − β) / (1 − β^{n_c})``, the inverse of the effective number of
      samples ``E_n = (1 − β^n)/(1 − β)``; β = 0 gives equal weights, β → 1 inverse frequency
      (the paper tries 0.9 … 0.9999).

    Normalized so that the weights of the classes present sum to their number (Cui et al.'s
    convention; the weighted-mean losses above are invariant to this scale anyway). A class with
    no examples gets weight 0 (it never appears as a target).
    """
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    if n.ndim != 1 or bool((n < 0).any()):
        raise UsageError("class weights: counts must be one non-negative number per class")
    present = n > 0
    if not bool(present.any()):
        raise UsageError("class weights: every class count is 0")
    w = torch.zeros_like(n)
    if scheme == "inverse":
        w[present] = 1.0 / n[present]
    elif scheme == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise UsageError(f"class weights: beta must be in [0, 1), got {beta}")
        w[present] = (1.0 - beta) / (1.0 - torch.pow(beta, n[present]))
    else:
        raise UsageError(
            f"class weights: unknown scheme {scheme!r}", hint="inverse or effective_number"
        )
    w = w * (int(present.sum()) / w.sum())
    return w.float()
