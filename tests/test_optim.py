"""Optimizer and schedule builders: every name steps, decay kinds differ as documented, and every
schedule gives its hand-computed factor (also per group, with layer-wise multipliers)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from graft.errors import UsageError
from graft.optim import (
    OPTIMIZERS,
    build_optimizer,
    build_scheduler,
    check_lbfgs_applicable,
    is_closure_optimizer,
    schedule_factor,
)


def _problem(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Linear(5, 3)
    x = torch.randn(64, 5)
    y = (x @ torch.randn(5, 3)).argmax(1)
    return model, x, y


def _groups(model: nn.Module, lr: float, wd: float) -> list[dict]:
    return [
        {"params": [model.weight], "lr": lr, "weight_decay": wd, "group": "head"},
        {"params": [model.bias], "lr": lr, "weight_decay": 0.0, "group": "head"},
    ]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name: str) -> None:
    model, x, y = _problem()
    lr = 1.0 if name in ("lbfgs", "adadelta") else 0.05
    wd = 0.0 if name == "lbfgs" else 0.01
    opt = build_optimizer(name, _groups(model, lr, wd), lr=lr, weight_decay=wd, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    start = float(closure().detach())
    for _ in range(3):
        if is_closure_optimizer(opt):
            opt.step(closure)  # type: ignore[arg-type]  # LBFGS takes a Tensor loss
        else:
            closure()
            opt.step()
    assert is_closure_optimizer(opt) == (name == "lbfgs")
    for b, p in zip(before, model.parameters(), strict=True):
        assert not torch.equal(b, p)
    with torch.no_grad():
        assert float(nn.functional.cross_entropy(model(x), y)) < start


# Zero gradients isolate the decay: decoupled decay alone gives w·(1 − lr·wd); coupled L2 feeds
# wd·w into the optimizer's own update rule, which (for the adaptive ones) is a different step.
@pytest.mark.parametrize(
    "name", ["sgd", "adam", "adamw", "amsgrad", "rmsprop", "adagrad", "adadelta"]
)
def test_decoupled_weight_decay_is_lr_times_wd_shrinkage(name: str) -> None:
    lr, wd = 0.1, 0.5
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 4))
    b = nn.Parameter(torch.randn(4))
    groups = [
        {"params": [w], "lr": lr, "weight_decay": wd},
        {"params": [b], "lr": lr, "weight_decay": 0.0},
    ]
    opt = build_optimizer(name, groups, lr=lr, weight_decay=wd, momentum=0.9)
    w0, b0 = w.detach().clone(), b.detach().clone()
    for k in range(1, 4):
        w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
        opt.step()
        torch.testing.assert_close(w.detach(), w0 * (1 - lr * wd) ** k)
        assert torch.equal(b.detach(), b0)  # the no-decay group is untouched


@pytest.mark.parametrize("name", ["sgd", "adam", "amsgrad", "rmsprop", "adagrad", "adadelta"])
def test_l2_weight_decay_goes_through_the_gradient(name: str) -> None:
    lr, wd = 0.1, 0.5
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 4))
    opt = build_optimizer(
        name, [{"params": [w]}], lr=lr, weight_decay=wd, momentum=0.9, decoupled_weight_decay=False
    )
    w0 = w.detach().clone()
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert w.detach().abs().sum() < w0.abs().sum()  # it does decay ...
    # ... but not by the decoupled rule (SGD's first step coincides; momentum separates later)
    assert not torch.allclose(w.detach(), w0 * (1 - lr * wd) ** 3)
    if name in ("adam", "amsgrad"):
        assert type(opt) is torch.optim.Adam and opt.param_groups[0]["weight_decay"] == wd


def test_sgd_l2_equals_torch_sgd_weight_decay() -> None:
    model, x, y = _problem()
    twin = nn.Linear(5, 3)
    twin.load_state_dict(model.state_dict())
    ours = build_optimizer(
        "sgd", [{"params": list(model.parameters())}], lr=0.1, weight_decay=0.3,
        momentum=0.9, nesterov=True, decoupled_weight_decay=False,
    )  # fmt: skip
    ref = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.3)
    for _ in range(4):
        for m, o in ((model, ours), (twin, ref)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_optimizer_options_reach_torch() -> None:
    model, _, _ = _problem()
    opt = build_optimizer(
        "amsgrad", _groups(model, 0.1, 0.0), lr=0.1, momentum=0.0, betas=(0.8, 0.9), eps=1e-6
    )
    g = opt.param_groups[0]
    assert g["amsgrad"] and g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6
    assert g["group"] == "head"  # caller's extra keys survive
    sgd = build_optimizer("sgd", _groups(model, 0.1, 0.0), lr=0.1, momentum=0.8, nesterov=True)
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.8


def test_caller_groups_are_not_mutated() -> None:
    model, _, _ = _problem()
    groups = _groups(model, 0.1, 0.2)
    build_optimizer("sgd", groups, lr=0.1)
    assert groups[0]["weight_decay"] == 0.2 and "decoupled_wd" not in groups[0]


def test_optimizer_usage_errors() -> None:
    model, _, _ = _problem()
    with pytest.raises(UsageError, match="unknown optimizer"):
        build_optimizer("nadam", _groups(model, 0.1, 0.0), lr=0.1)
    with pytest.raises(UsageError, match="adamw always decouples"):
        build_optimizer("adamw", _groups(model, 0.1, 0.0), lr=0.1, decoupled_weight_decay=False)
    with pytest.raises(UsageError, match="nesterov"):
        build_optimizer("sgd", _groups(model, 0.1, 0.0), lr=0.1, momentum=0.0, nesterov=True)
    mixed = [{"params": [model.weight], "lr": 1.0}, {"params": [model.bias], "lr": 0.5}]
    with pytest.raises(UsageError, match="one learning rate"):
        build_optimizer("lbfgs", mixed, lr=1.0)
    with pytest.raises(UsageError, match="no weight decay"):
        build_optimizer("lbfgs", _groups(model, 1.0, 0.1), lr=1.0)


def test_check_lbfgs_applicable() -> None:
    assert check_lbfgs_applicable(10_000, has_dropout=False) is None
    reason = check_lbfgs_applicable(10_000, has_dropout=True)
    assert reason is not None and "dropout" in reason
    reason = check_lbfgs_applicable(50_000_000, has_dropout=False)
    assert reason is not None and "too many" in reason
    assert check_lbfgs_applicable(0, has_dropout=False) is not None


def test_lbfgs_fits_a_logistic_head() -> None:
    model, x, y = _problem()
    opt = build_optimizer("lbfgs", _groups(model, 1.0, 0.0), lr=1.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    start = float(closure().detach())
    for _ in range(5):
        opt.step(closure)  # type: ignore[arg-type]
    assert float(closure().detach()) < 0.25 * start


# ----------------------------------------------------------------------------------------------
# Schedules


def _lr_after(scheduler: torch.optim.lr_scheduler.LRScheduler, opt: torch.optim.Optimizer, k: int):
    for _ in range(k):
        opt.step()
        scheduler.step()
    return [g["lr"] for g in opt.param_groups]


def _single(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def _factors(name: str, total: int, steps: list[int], **kw) -> list[float]:
    opt = _single()
    sched = build_scheduler(name, opt, total_steps=total, **kw)
    out, done = [], 0
    for k in steps:
        _lr_after(sched, opt, k - done)
        done = k
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_with_layer_decay_multipliers_per_group() -> None:
    # Three layer groups at base 0.1 with layer-wise decay 0.5: head ×1, layer1 ×0.5, stem ×0.25.
    # Cosine over 14 steps, 4 of linear warmup. By hand:
    #   k=1: warmup (1+1)/4 = 0.5                      → 0.05, 0.025, 0.0125
    #   k=4: warmup over, progress 0 → 1               → 0.1, 0.05, 0.025
    #   k=6: progress (6-4)/10 = 0.2 → ½(1+cos 0.2π) = 0.9045085 → 0.09045085, …
    #   k=14: progress 1 → 0
    params = [nn.Parameter(torch.zeros(1)) for _ in range(3)]
    groups = [{"params": [p], "lr": 0.1 * 0.5**d} for p, d in zip(params, (2, 1, 0), strict=True)]
    opt = build_optimizer("adamw", groups, lr=0.1, weight_decay=0.0)
    sched = build_scheduler("cosine", opt, total_steps=14, warmup_steps=4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.025 / 4, 0.05 / 4, 0.1 / 4])
    assert _lr_after(sched, opt, 1) == pytest.approx([0.0125, 0.025, 0.05])
    assert _lr_after(sched, opt, 3) == pytest.approx([0.025, 0.05, 0.1])
    cos = 0.5 * (1 + math.cos(0.2 * math.pi))
    assert cos == pytest.approx(0.9045085)
    assert _lr_after(sched, opt, 2) == pytest.approx([0.025 * cos, 0.05 * cos, 0.1 * cos])
    assert _lr_after(sched, opt, 8) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_warmup_ratio_matches_old_signature() -> None:
    # The pre-existing call (name, optimizer, total_steps=, warmup_ratio=) still works: 10% of 50.
    assert _factors("linear", 50, [0, 4, 5, 30], warmup_ratio=0.1) == pytest.approx(
        [1 / 5, 5 / 5, 1.0, 1 - 25 / 45]
    )
    assert schedule_factor("cosine", 5, 10, 0) == pytest.approx(0.5)


def test_constant_step_and_linear_factors() -> None:
    assert _factors("constant", 10, [0, 9]) == [1.0, 1.0]
    # StepLR shape: ×0.1 every 30 steps.
    assert _factors("step", 100, [29, 30, 59, 60], step_size=30, gamma=0.1) == pytest.approx(
        [1.0, 0.1, 0.1, 0.01]
    )
    # step_size as a fraction: 0.25 × 100 = 25 steps; after 5 warmup steps, decays count from 5.
    assert _factors(
        "step", 100, [4, 29, 30], step_size=0.25, gamma=0.5, warmup_steps=5
    ) == pytest.approx([1.0, 1.0, 0.5])
    # linear to a floor of 0.1: at half way 0.1 + 0.9 × 0.5 = 0.55
    assert _factors("linear", 10, [5, 10], min_factor=0.1) == pytest.approx([0.55, 0.1])
    assert _factors("cosine", 10, [5], min_factor=0.2) == pytest.approx([0.2 + 0.8 * 0.5])


def test_one_cycle_matches_torch_shape_and_peaks_at_pct_start() -> None:
    total, pct, div, final = 40, 0.25, 25.0, 1e4
    got = _factors("one_cycle", total, list(range(total)), pct_start=pct, div_factor=div,
                   final_div_factor=final)  # fmt: skip
    ref_opt = _single(lr=2.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt, max_lr=2.0, total_steps=total, pct_start=pct, div_factor=div,
        final_div_factor=final, cycle_momentum=False,
    )  # fmt: skip
    expected = []
    for _ in range(total):
        expected.append(ref_opt.param_groups[0]["lr"] / 2.0)
        ref_opt.step()
        ref.step()
    assert got == pytest.approx(expected)  # got[k], expected[k]: the LR after k steps
    peak = max(range(total), key=got.__getitem__)
    assert peak == round(pct * total) - 1  # 0.25 × 40 − 1 = step 9
    assert got[peak] == pytest.approx(1.0)
    opt = _single()
    build_scheduler("one_cycle", opt, total_steps=total, pct_start=pct)
    assert opt.param_groups[0]["lr"] == pytest.approx(1 / div)  # starts at max_lr / div_factor


def test_slanted_triangular_peaks_at_cut_frac() -> None:
    # ULMFiT: T=200, cut_frac=0.1 → cut=20; ratio 32. factor = (1 + p·31)/32.
    #   k=0: p=0 → 1/32;  k=10: p=0.5 → 16.5/32;  k=20: p=1 → 1
    #   k=110: p = 1 − 90/(20·9) = 0.5 → 16.5/32;  k=200: p=0 → 1/32
    got = _factors("slanted_triangular", 200, [0, 10, 20, 110, 200])
    assert got == pytest.approx([1 / 32, 16.5 / 32, 1.0, 16.5 / 32, 1 / 32])
    series = _factors("slanted_triangular", 200, list(range(201)), cut_frac=0.2, ratio=10)
    assert max(range(201), key=series.__getitem__) == 40


def test_scheduler_state_survives_weights_only_checkpoint() -> None:
    opt = _single()
    sched = build_scheduler("step", opt, total_steps=100, step_size=7, gamma=0.5, warmup_steps=3)
    _lr_after(sched, opt, 12)
    buf = io.BytesIO()
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    opt2 = _single()
    sched2 = build_scheduler("step", opt2, total_steps=100, step_size=7, gamma=0.5, warmup_steps=3)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    assert _lr_after(sched2, opt2, 5) == _lr_after(sched, opt, 5)


def test_schedule_usage_errors() -> None:
    opt = _single()
    with pytest.raises(UsageError, match="unknown schedule"):
        build_scheduler("poly", opt, total_steps=10)
    with pytest.raises(UsageError, match="does not apply"):
        build_scheduler("cosine", opt, total_steps=10, gamma=0.1)
    with pytest.raises(UsageError, match="warms up by itself"):
        build_scheduler("one_cycle", opt, total_steps=10, warmup_ratio=0.1)
    with pytest.raises(UsageError, match="step_size"):
        build_scheduler("step", opt, total_steps=10, step_size=1.5)
    # None means "not given": a config can pass every option flat
    build_scheduler("cosine", opt, total_steps=10, gamma=None, step_size=None, min_factor=None)
