"""Penalties have the documented value and gradient and change training as claimed; constraints
hold after every step of a run (and were actually violated before they were applied)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from graft.regularize import (
    L2SP,
    Clamp,
    DistanceBound,
    L1Penalty,
    L2Penalty,
    MaxNorm,
    NonNegative,
    SignConstraint,
    clip_gradients,
)


class Tiny(nn.Module):
    """A 'pretrained' body and a new head, named like graft's models."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU())
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    return x, (x[:, :3] @ torch.randn(3, 3, generator=g)).argmax(1)


def _model(seed: int = 0, scale: float = 1.0) -> Tiny:
    torch.manual_seed(seed)
    m = Tiny()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return p.grad


def test_l1_penalty_value_gradient_and_frozen_params() -> None:
    m = _model()
    pen = L1Penalty(m, 0.3)
    expected = 0.3 * sum(p.abs().sum() for p in m.parameters())
    value = pen.penalty()
    torch.testing.assert_close(value, expected)
    value.backward()
    for p in m.parameters():
        torch.testing.assert_close(p.grad, 0.3 * p.detach().sign())
    m.body.requires_grad_(False)  # frozen groups drop out of the sum
    torch.testing.assert_close(pen.penalty(), 0.3 * sum(p.abs().sum() for p in m.head.parameters()))


def test_l2_penalty_is_coupled_weight_decay() -> None:
    # SGD on loss + wd/2·‖w‖² takes exactly the steps of SGD(weight_decay=wd).
    x, y = _data()
    a, b = _model(), _model()
    pen = L2Penalty(a.parameters(), 0.2)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.2)
    for _ in range(5):
        opt_a.zero_grad()
        (nn.functional.cross_entropy(a(x), y) + pen.penalty()).backward()
        opt_a.step()
        opt_b.zero_grad()
        nn.functional.cross_entropy(b(x), y).backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_l2sp_value_and_gradient() -> None:
    m = _model()
    reg = L2SP(m.named_parameters(), strength_backbone=0.5, strength_head=0.1)
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.25)  # "fine-tuned" away from the snapshot
    assert {n for n, _ in reg.head} == {"head.weight", "head.bias"}
    value = reg.penalty()
    # α/2 Σ_backbone ‖w − w⁰‖² + β/2 Σ_head ‖w‖²
    expected = 0.5 * 0.5 * sum(
        ((p - w0[n]) ** 2).sum() for n, p in m.named_parameters() if n.startswith("body")
    ) + 0.5 * 0.1 * sum((p**2).sum() for p in m.head.parameters())
    torch.testing.assert_close(value, expected)
    value.backward()
    for n, p in m.named_parameters():
        want = 0.5 * (p - w0[n]) if n.startswith("body") else 0.1 * p
        torch.testing.assert_close(p.grad, want.detach())
    assert reg.distance() == pytest.approx(
        0.25 * sum(p.numel() for p in m.body.parameters()) ** 0.5, rel=1e-5
    )


def test_l2sp_keeps_weights_closer_to_pretrained_than_weight_decay() -> None:
    # Same data, same steps, same strength: L2-SP pulls the backbone towards w⁰, weight decay
    # pulls it towards 0 — so it ends far nearer the pretrained weights (and nearer than no
    # regularization at all).
    x, y = _data()
    strength = 1.0

    def run(kind: str) -> float:
        m = _model(scale=3.0)  # pretrained weights well away from zero
        w0 = [p.detach().clone() for p in m.body.parameters()]
        reg = L2SP(m.named_parameters(), strength, 0.0) if kind == "l2sp" else None
        wd = strength if kind == "wd" else 0.0
        groups: list[dict[str, Any]] = [
            {"params": list(m.body.parameters()), "weight_decay": wd},
            {"params": list(m.head.parameters())},
        ]
        opt = torch.optim.SGD(groups, lr=0.1)
        for _ in range(30):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x), y)
            if reg is not None:
                loss = loss + reg.penalty()
            loss.backward()
            opt.step()
        body = [p.detach() for p in m.body.parameters()]
        return sum(float(((p - r) ** 2).sum()) for p, r in zip(body, w0, strict=True)) ** 0.5

    d_l2sp, d_wd, d_none = run("l2sp"), run("wd"), run("none")
    assert d_l2sp < d_none < d_wd
    assert d_l2sp < 0.25 * d_wd


def test_l2sp_snapshot_is_a_copy_and_reference_by_name() -> None:
    m = _model()
    reg = L2SP(m.named_parameters(), 1.0)
    assert float(reg.penalty().detach()) == 0.0
    first = m.body[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight.add_(1.0)
    assert float(reg.penalty().detach()) > 0.0  # the snapshot did not move with the weights
    ref = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    to_zero = L2SP(m.named_parameters(), 1.0, reference=ref)
    body_sq = sum(float((p.detach() ** 2).sum()) for p in m.body.parameters())
    assert float(to_zero.penalty().detach()) == pytest.approx(0.5 * body_sq, rel=1e-5)


def _stepper(model: Tiny, lr: float = 0.5):
    """One SGD step per call, with a large LR and a loss that makes weights grow."""
    x, y = _data(1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x) * 3, y) - 0.1 * model.head.weight.sum()
        loss.backward()
        opt.step()

    return step


STEPS = 15


def test_max_norm_holds_after_every_step() -> None:
    m = _model(scale=2.0)
    c = MaxNorm(m, max_norm=1.0)
    assert len(c.weights) == 2  # the two Linear weights, not the biases
    violated, step = False, _stepper(m)
    for _ in range(STEPS):
        step()
        norms = torch.cat([w.detach().norm(dim=1) for w in c.weights])
        violated |= bool((norms > 1.0 + 1e-6).any())
        c.apply()
        for w in c.weights:
            assert bool((w.detach().norm(dim=1) <= 1.0 + 1e-6).all())
    assert violated


def test_max_norm_rescales_only_long_rows_and_handles_conv() -> None:
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))  # row norms 5 and 0.5
    MaxNorm([w], max_norm=2.0).apply()
    torch.testing.assert_close(w.detach()[0], torch.tensor([1.2, 1.6]))
    assert torch.equal(w.detach()[1], torch.tensor([0.3, 0.4]))
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight.mul_(50)
    MaxNorm(conv, max_norm=0.5).apply()
    assert bool((conv.weight.detach().flatten(1).norm(dim=1) <= 0.5 + 1e-6).all())
    with pytest.raises(ValueError, match="2 dims"):
        MaxNorm([nn.Parameter(torch.zeros(3))], max_norm=1.0)


@pytest.mark.parametrize(
    ("make", "holds"),
    [
        (lambda m: Clamp(m, -0.2, 0.2), lambda p: bool(((p >= -0.2) & (p <= 0.2)).all())),
        (lambda m: NonNegative(m), lambda p: bool((p >= 0).all())),
        (lambda m: SignConstraint(m, "-"), lambda p: bool((p <= 0).all())),
    ],
    ids=["clamp", "non_negative", "non_positive"],
)
def test_value_constraints_hold_after_every_step(make, holds) -> None:
    m = _model()
    c = make(m)
    c.apply()
    violated, step = False, _stepper(m)
    for _ in range(STEPS):
        step()
        violated |= not all(holds(p.detach()) for p in m.parameters())
        c.apply()
        assert all(holds(p.detach()) for p in m.parameters())
    assert violated


def test_sign_constraint_keeps_the_initial_sign_pattern() -> None:
    m = _model()
    signs = [p.detach() >= 0 for p in m.parameters()]
    c = SignConstraint(m, "initial")
    violated, step = False, _stepper(m, lr=2.0)
    for _ in range(STEPS):
        step()
        violated |= any(
            bool(((p.detach() >= 0) != s)[p.detach() != 0].any())
            for p, s in zip(m.parameters(), signs, strict=True)
        )
        c.apply()
        for p, s in zip(m.parameters(), signs, strict=True):
            v = p.detach()
            assert bool((v[s] >= 0).all()) and bool((v[~s] <= 0).all())
    assert violated


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_distance_bound_holds_after_every_step(norm: str) -> None:
    m = _model()
    w0 = [p.detach().clone() for p in m.parameters()]
    radius = 0.05
    c = DistanceBound(m.parameters(), radius, norm)  # type: ignore[arg-type]
    order = 2 if norm == "l2" else float("inf")
    violated, step = False, _stepper(m)
    for _ in range(STEPS):
        step()
        dists = [
            float((p.detach() - r).norm(order)) for p, r in zip(m.parameters(), w0, strict=True)
        ]
        violated |= max(dists) > radius * 1.001
        c.apply()
        dists = [
            float((p.detach() - r).norm(order)) for p, r in zip(m.parameters(), w0, strict=True)
        ]
        assert max(dists) <= radius * (1 + 1e-5)
        assert c.distances() == pytest.approx(dists, rel=1e-5, abs=1e-7)
    assert violated


def test_distance_bound_projection_is_exact() -> None:
    ref = torch.zeros(2)
    far = nn.Parameter(torch.tensor([3.0, 4.0]))  # distance 5 → projected onto radius 1
    near = nn.Parameter(torch.tensor([0.1, -0.2]))  # inside: must stay bit-identical
    c = DistanceBound([("far", far), ("near", near)], 1.0, reference={"far": ref, "near": ref})
    near_before = near.detach().clone()
    c.apply()
    torch.testing.assert_close(far.detach(), torch.tensor([0.6, 0.8]))
    assert torch.equal(near.detach(), near_before)
    # relative radius: 10% of ‖w⁰‖∞ per tensor
    w = nn.Parameter(torch.tensor([10.0, -1.0]))
    box = DistanceBound([w], 0.1, "linf", relative=True)
    with torch.no_grad():
        w.add_(torch.tensor([5.0, -5.0]))
    box.apply()
    torch.testing.assert_close(w.detach(), torch.tensor([11.0, -2.0]))


def test_clip_gradients_by_norm_and_value() -> None:
    m = _model()
    x, y = _data()
    (nn.functional.cross_entropy(m(x), y) * 100).backward()
    grads = [_grad(p).clone() for p in m.parameters()]
    total = torch.cat([g.flatten() for g in grads]).norm()
    returned = clip_gradients(m.parameters(), max_norm=0.5)
    assert returned is not None
    torch.testing.assert_close(returned, total)
    clipped = torch.cat([_grad(p).flatten() for p in m.parameters()]).norm()
    assert float(clipped) == pytest.approx(0.5, rel=1e-4)
    for p, g in zip(m.parameters(), grads, strict=True):  # direction kept
        torch.testing.assert_close(_grad(p), g * (0.5 / total), rtol=1e-4, atol=1e-7)
    m.zero_grad()
    (nn.functional.cross_entropy(m(x), y) * 100).backward()
    assert max(float(_grad(p).abs().max()) for p in m.parameters()) > 0.01
    assert clip_gradients(m.parameters(), max_value=0.01) is None
    assert max(float(_grad(p).abs().max()) for p in m.parameters()) <= 0.01
