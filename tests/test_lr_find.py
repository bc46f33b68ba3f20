"""The LR range test sweeps exponentially, keeps group multipliers, stops on divergence, suggests
the steepest descent, and leaves model, optimizer and RNG exactly as it found them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graft.errors import UsageError
from graft.losses import build_loss
from graft.lr_find import _suggestions, lr_find, plot_lr_find


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(16, 3)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixel_values))


def _loader(n_batches: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(16, 8, generator=g)
        batches.append({"inputs": {"pixel_values": x}, "targets": x[:, :3].argmax(1)})
    return batches


def _adam(model: Net, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        [
            {"params": model.body.parameters(), "lr": lr * 0.1},  # a ×0.1 layer multiplier
            {"params": model.head.parameters(), "lr": lr},
        ],
        lr=lr,
    )


def test_restores_model_optimizer_and_rng_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = Net()
    opt = _adam(model)
    loss_fn = build_loss()
    batch = _loader(1)[0]
    loss_fn(model(**batch["inputs"]), batch["targets"]).backward()
    opt.step()  # the optimizer has state (exp_avg …) worth preserving
    model.eval()
    model_before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = opt.state_dict()
    opt_before = {
        "state": {k: {n: t.clone() for n, t in s.items()} for k, s in opt_before["state"].items()},
        "lrs": [g["lr"] for g in opt.param_groups],
    }
    rng_before = torch.get_rng_state()

    result = lr_find(model, _loader(), loss_fn, opt, num_steps=20)

    assert len(result.lrs) > 5
    for k, v in model.state_dict().items():  # parameters and BatchNorm buffers
        assert torch.equal(v, model_before[k]), k
    assert not model.training  # mode restored
    state = opt.state_dict()["state"]
    for k, s in opt_before["state"].items():
        for n, t in s.items():
            assert torch.equal(state[k][n], t), (k, n)
    assert [g["lr"] for g in opt.param_groups] == opt_before["lrs"]
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_sweep_is_exponential_and_keeps_group_multipliers() -> None:
    torch.manual_seed(0)
    model = Net()
    opt = _adam(model, lr=1e-3)
    seen: list[tuple[float, float]] = []
    loss_fn = build_loss()

    def batch_loss(m: nn.Module, batch: dict) -> torch.Tensor:
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        return loss_fn(m(**batch["inputs"]), batch["targets"])

    result = lr_find(
        model, _loader(), loss_fn, opt, start_lr=1e-5, end_lr=1e-1, num_steps=9,
        diverge_factor=1e9, batch_loss=batch_loss,
    )  # fmt: skip
    # 1e-5 → 1e-1 in 9 points: one half-decade per step, cycling through 5 batches
    assert result.lrs == pytest.approx([10 ** (-5 + i / 2) for i in range(9)])
    for lr, (body, head) in zip(result.lrs, seen, strict=True):
        assert head == pytest.approx(lr) and body == pytest.approx(0.1 * lr)
    assert len(result.losses) == len(result.smoothed) == 9
    # debiased EMA: the first smoothed value is the first loss
    assert result.smoothed[0] == pytest.approx(result.losses[0])


def test_stops_when_the_loss_diverges() -> None:
    torch.manual_seed(0)
    model = Net()
    result = lr_find(
        model, _loader(), build_loss(), lambda: torch.optim.SGD(model.parameters(), lr=0.1),
        start_lr=1e-4, end_lr=1e4, num_steps=100,
    )  # fmt: skip
    assert result.diverged and len(result.lrs) < 100
    assert result.suggestion is not None and result.lrs[0] < result.suggestion < result.lrs[-1]


def test_suggestions_find_steepest_descent_and_minimum() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    x = np.log10(lrs)
    # falls fastest at lr = 1e-3, bottoms out at lr = 1e-1.5, rises after
    smoothed = list(2 - np.tanh(2 * (x + 3)) + 0.5 * np.maximum(x + 1.5, 0) ** 2)
    steepest, minimum_div10 = _suggestions(lrs, smoothed, diverged=False)
    assert steepest == pytest.approx(1e-3, rel=0.05)
    # noise at the very start (a lucky second batch) and the climb after the minimum are ignored
    noisy = [smoothed[0], smoothed[0] - 0.3, *smoothed[2:]]
    assert _suggestions(lrs, noisy, diverged=False)[0] == pytest.approx(1e-3, rel=0.05)
    # a sweep that never descends has no steepest descent; it falls back to minimum / 10
    rising = list(np.linspace(1.0, 2.0, 20))
    assert _suggestions(lrs[:20], rising, diverged=False) == (None, pytest.approx(lrs[0] / 10))
    best = lrs[int(np.argmin(smoothed))]
    assert minimum_div10 == pytest.approx(best / 10)
    assert _suggestions(lrs[:2], smoothed[:2], diverged=False) == (None, None)


def test_plot_writes_a_png(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net()
    result = lr_find(model, _loader(), build_loss(), _adam(model), num_steps=10, method="minimum")
    assert result.suggestion == result.minimum_div10
    path = plot_lr_find(result, tmp_path / "plots" / "lr_find.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_lbfgs() -> None:
    model = Net()
    with pytest.raises(UsageError, match="line search"):
        lr_find(model, _loader(), build_loss(), torch.optim.LBFGS(model.parameters()))
