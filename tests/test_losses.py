"""Losses follow their formulas: class weights, label smoothing, focal (γ=0 is cross-entropy),
and class weights from counts (inverse frequency, Cui et al.'s effective number)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from graft.errors import UsageError
from graft.losses import build_loss, class_weights_from_counts


def _batch(seed: int = 0, n: int = 16, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 2, torch.randint(0, c, (n,), generator=g)


def test_class_weights_change_the_loss_as_a_weighted_mean() -> None:
    logits, y = _batch()
    w = torch.tensor([1.0, 3.0, 0.5, 2.0])
    plain = build_loss("cross_entropy")(logits, y)
    weighted = build_loss("cross_entropy", class_weights=w)(logits, y)
    per_example = -F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(plain, per_example.mean())
    torch.testing.assert_close(weighted, (w[y] * per_example).sum() / w[y].sum())
    assert not torch.isclose(plain, weighted)


def test_label_smoothing_follows_the_formula() -> None:
    # target (1 − ε)·onehot + ε/C  ⇒  loss = (1 − ε)·CE + ε·mean_k(−log p_k)
    logits, y = _batch()
    eps = 0.2
    logp = F.log_softmax(logits, 1)
    ce = -logp.gather(1, y[:, None]).squeeze(1)
    uniform = -logp.mean(1)
    expected = ((1 - eps) * ce + eps * uniform).mean()
    got = build_loss("cross_entropy", label_smoothing=eps)(logits, y)
    torch.testing.assert_close(got, expected)
    assert not torch.isclose(got, ce.mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_focal_with_gamma_zero_is_cross_entropy(smoothing: float, weighted: bool, soft: bool):
    logits, y = _batch(1)
    w = torch.tensor([0.5, 2.0, 1.0, 4.0]) if weighted else None
    targets = F.softmax(torch.randn(16, 4), 1) if soft else y
    focal = build_loss("focal", focal_gamma=0.0, class_weights=w, label_smoothing=smoothing)
    ce = build_loss("cross_entropy", class_weights=w, label_smoothing=smoothing)
    torch.testing.assert_close(focal(logits, targets), ce(logits, targets))


def test_focal_down_weights_easy_examples_by_the_formula() -> None:
    logits, y = _batch(2)
    gamma = 2.0
    p_t = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    expected = (-((1 - p_t) ** gamma) * p_t.log()).mean()
    got = build_loss("focal", focal_gamma=gamma)(logits, y)
    torch.testing.assert_close(got, expected)
    assert got < build_loss("cross_entropy")(logits, y)
    # α_t from class weights: Σ α_t·FL_i / Σ α_t
    alpha = torch.tensor([0.25, 1.0, 1.0, 0.5])
    fl = -((1 - p_t) ** gamma) * p_t.log()
    weighted = build_loss("focal", focal_gamma=gamma, class_weights=alpha)(logits, y)
    torch.testing.assert_close(weighted, (alpha[y] * fl).sum() / alpha[y].sum())


def test_focal_gradient_is_finite_for_confident_predictions() -> None:
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 0.0, 60.0]], requires_grad=True)
    loss = build_loss("focal", focal_gamma=0.5)(logits, torch.tensor([0, 2]))
    loss.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


def test_class_weights_inverse_and_effective_number() -> None:
    counts = [100, 10, 1]
    inv = class_weights_from_counts(counts, "inverse")
    raw = torch.tensor([1 / 100, 1 / 10, 1.0])
    torch.testing.assert_close(inv, raw * 3 / raw.sum())  # ∝ 1/n, summing to C = 3
    beta = 0.99
    eff = class_weights_from_counts(counts, "effective_number", beta=beta)
    raw = torch.tensor([(1 - beta) / (1 - beta**n) for n in counts])
    torch.testing.assert_close(eff, raw * 3 / raw.sum())
    # effective number sits between no re-weighting and inverse frequency
    assert inv[2] / inv[0] > eff[2] / eff[0] > 1.0
    torch.testing.assert_close(
        class_weights_from_counts(counts, "effective_number", beta=0.0), torch.ones(3)
    )
    with_empty = class_weights_from_counts([5, 0, 20], "inverse")
    assert with_empty[1] == 0 and float(with_empty.sum()) == pytest.approx(2.0)
    assert math.isclose(float(with_empty[0] / with_empty[2]), 4.0, rel_tol=1e-6)


def test_loss_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown loss"):
        build_loss("hinge")
    with pytest.raises(UsageError, match="label_smoothing"):
        build_loss(label_smoothing=1.0)
    with pytest.raises(UsageError, match="class_weights"):
        build_loss(class_weights=[1.0, -1.0])
    with pytest.raises(UsageError, match="scheme"):
        class_weights_from_counts([1, 2], "sqrt")  # type: ignore[arg-type]
