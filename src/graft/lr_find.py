"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", §3.3; popularized as fastai's ``lr_find``).

Train for a few steps while the LR grows exponentially from ``start_lr`` to ``end_lr``, record the
(smoothed) loss, stop once it diverges, and suggest the LR where the loss falls fastest. The model
and the optimizer are restored bit for bit afterwards, so the finder can run before a real fit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from graft.atomic import atomic_write, check_writable_dir, writable_target
from graft.errors import UsageError
from graft.optim import is_closure_optimizer

if TYPE_CHECKING:
    from graft.config import RunConfig

BatchLoss = Callable[[nn.Module, Any], Tensor]
SKIP_START = 0.1  # fraction of the sweep's first points left out of the steepest-descent search


@dataclass
class LRFindResult:
    """What the sweep saw. ``lrs[i]`` is the base LR of step ``i`` (each group ran at ``lrs[i] ×
    its multiplier``), ``losses[i]`` its raw loss, ``smoothed[i]`` the debiased moving average.
    ``suggestion`` is the base LR to use (``None`` if the sweep was too short to tell)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    method: str = "steepest"
    steepest: float | None = None
    minimum_div10: float | None = None
    diverged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_batch_loss(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> BatchLoss:
    """A ``(model, batch) -> loss`` for graft batches (``{"inputs": {...}, "targets": y}``) and
    ``(x, y)`` pairs, moved to the model's device."""

    def batch_loss(model: nn.Module, batch: Any) -> Tensor:
        device = next(model.parameters()).device
        if isinstance(batch, Mapping):
            inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
            return loss_fn(model(**inputs), batch["targets"].to(device))
        x, y = batch
        return loss_fn(model(x.to(device)), y.to(device))

    return batch_loss


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UsageError("lr_find: the data loader is empty")


def lr_find(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer | Callable[[], torch.optim.Optimizer],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.05,
    diverge_factor: float = 4.0,
    method: Literal["steepest", "minimum"] = "steepest",
    batch_loss: BatchLoss | None = None,
    train_mode: Callable[[nn.Module], Any] | None = None,
) -> LRFindResult:
    """Sweep the LR exponentially, ``lr_i = start_lr · (end_lr/start_lr)^(i/(num_steps−1))``.

    Args:
        model: trained in place during the sweep, then restored (parameters and buffers,
            bit-identical; train/eval mode and the torch RNG state too).
        loader: batches, cycled if shorter than ``num_steps``.
        loss_fn: ``(logits, targets) -> loss``, used by the default ``batch_loss``.
        optimizer: an optimizer (its state is restored afterwards) or a factory that builds one.
            Its ``defaults["lr"]`` is the base LR: a group whose ``lr`` is ``m ×`` that runs at
            ``m × lr_i``, so per-group multipliers are kept and the suggestion is a base LR.
        smooth: weight of the newest loss in the moving average (fastai: 0.02–0.05).
        diverge_factor: stop once the smoothed loss exceeds this × its best (or is not finite).
        method: ``"steepest"``: the LR where ``d smoothed / d log lr`` is most negative before
            the loss bottoms out (falling back to the next rule when the sweep never descends);
            ``"minimum"``: the LR of the lowest smoothed loss divided by 10 (both are reported).
        batch_loss: ``(model, batch) -> loss`` when batches are not graft dicts or ``(x, y)``
            (e.g. to add autocast or a regularizer's penalty).
        train_mode: puts the model in training mode (default ``model.train()``; graft's loop
            passes :func:`graft.phases.set_train_mode` so frozen modules stay in eval mode).
    """
    if not 0 < start_lr < end_lr:
        raise UsageError(f"lr_find: need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if num_steps < 2:
        raise UsageError(f"lr_find: num_steps must be ≥ 2, got {num_steps}")
    if not 0 < smooth <= 1:
        raise UsageError(f"lr_find: smooth must be in (0, 1], got {smooth}")
    if method not in ("steepest", "minimum"):
        raise UsageError(f"lr_find: method must be steepest or minimum, got {method!r}")
    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer()
    if is_closure_optimizer(opt):
        raise UsageError("lr_find: L-BFGS chooses its step by line search; there is no LR to find")
    compute_loss = batch_loss or default_batch_loss(loss_fn)

    # Snapshots on the CPU: no second copy of the model in accelerator memory.
    model_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(opt.state_dict())
    was_training = {m: m.training for m in model.modules()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    base = float(opt.defaults.get("lr") or max(float(g["lr"]) for g in opt.param_groups))
    multipliers = [float(g["lr"]) / base for g in opt.param_groups]
    ratio = end_lr / start_lr
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    try:
        (train_mode or nn.Module.train)(model)
        batches = _cycle(loader)
        for i in range(num_steps):
            lr = start_lr * ratio ** (i / (num_steps - 1))
            for g, m in zip(opt.param_groups, multipliers, strict=True):
                g["lr"] = lr * m
            opt.zero_grad(set_to_none=True)
            loss = compute_loss(model, next(batches))
            loss.backward()
            opt.step()
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value)
            avg = (1.0 - smooth) * avg + smooth * value
            debiased = avg / (1.0 - (1.0 - smooth) ** (i + 1))
            smoothed.append(debiased)
            if not math.isfinite(debiased) or debiased > diverge_factor * best:
                diverged = True
                break
            best = min(best, debiased)
    finally:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
        opt.zero_grad(set_to_none=True)
        for module, mode in was_training.items():
            module.training = mode
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

    steepest, minimum_div10 = _suggestions(lrs, smoothed, diverged)
    return LRFindResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggestion=steepest if method == "steepest" and steepest is not None else minimum_div10,
        method=method,
        steepest=steepest,
        minimum_div10=minimum_div10,
        diverged=diverged,
    )


def _suggestions(
    lrs: list[float], smoothed: list[float], diverged: bool
) -> tuple[float | None, float | None]:
    """(LR at the steepest descent of the smoothed loss, LR at its minimum / 10).

    The steepest descent is searched only between the first ``SKIP_START`` of the sweep (where
    the moving average still mostly reflects batch-to-batch noise) and the minimum of the
    smoothed loss (a descent after the minimum is the start of divergence, not progress); the
    divergent last point is ignored. ``None`` where fewer than 3 points remain.
    """
    n = len(lrs) - 1 if diverged else len(lrs)  # the divergent point says nothing about descent
    xs, ys = np.log10(np.asarray(lrs[:n])), np.asarray(smoothed[:n])
    finite = np.isfinite(ys)
    xs, ys = xs[finite], ys[finite]
    if len(ys) < 3:
        return None, None
    lowest = int(np.argmin(ys))
    minimum_div10 = float(10 ** xs[lowest]) / 10.0
    start = min(round(SKIP_START * len(ys)), lowest)
    window_x, window_y = xs[start : lowest + 1], ys[start : lowest + 1]
    if len(window_y) < 3:
        return None, minimum_div10
    slope = np.gradient(window_y, window_x)
    return float(10 ** window_x[int(np.argmin(slope))]), minimum_div10


def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """Write the loss-vs-LR curve (log x axis, raw and smoothed, suggestion marked) as a PNG.

    Uses matplotlib's object API with the Agg canvas: no pyplot, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed")
    if result.suggestion is not None:
        label = f"suggested {result.suggestion:.2e}"
        ax.axvline(result.suggestion, color="C3", linestyle="--", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    if finite and min(finite) > 0:  # keep the divergent tail from flattening the curve
        low, high = min(finite), min(max(finite), 4 * min(finite))
        pad = 0.05 * (high - low) if high > low else 0.05 * low
        ax.set_ylim(low - pad, high + pad)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def find_lr(
    config: RunConfig, *, steps: int = 100, plot: Path | None = None, quiet: bool = False
) -> dict[str, Any]:
    """``graft lr-find``: an exponential LR sweep over the first phase of the plan (Smith 2017),
    on a copy of nothing: the model and optimizer are restored afterwards. Writes no run."""
    from graft.console import RunLog
    from graft.features.body import cached_loaders, head_only
    from graft.phases import apply_phase, set_train_mode
    from graft.pipeline import to_device
    from graft.prepare import prepare
    from graft.safe_load import weights_only_loading

    if plot is not None:  # refused before the data is read and the model built
        writable_target(plot)
        check_writable_dir(plot.parent, "--plot")
    log = RunLog(quiet=quiet)
    with weights_only_loading():
        prep = prepare(config, log)
    phase = prep.plan.phases[0]
    apply_phase(prep.backbone.groups, phase)
    model: torch.nn.Module = prep.backbone.model
    loader = prep.train_loader
    if prep.settings.feature_cache and head_only(phase):  # a linear probe sweeps in seconds
        precision = prep.settings.precision
        store = prep.settings.feature_store
        loader = cached_loaders(model, loader, prep.val_loader, prep.device, precision, store).train
        model = prep.backbone.model.head
    frozen_bn = prep.settings.frozen_bn_updates
    objective = prep.objective

    def batch_loss(m: nn.Module, batch: Any) -> Tensor:
        # The run's own batch loss: with distillation, batches carry their teacher logits.
        batch = to_device(batch, prep.device)
        return objective.batch_loss(m(**batch["inputs"]), batch)

    result = lr_find(
        model,
        loader,
        objective.loss,
        lambda: prep.settings.optimizer(prep.backbone.groups, phase),
        num_steps=steps,
        batch_loss=batch_loss,
        train_mode=lambda m: set_train_mode(m, frozen_bn),
    )
    out = result.to_dict()
    if plot is not None:
        out["plot"] = str(plot_lr_find(result, plot))
    suggestion = f"{result.suggestion:.2e}" if result.suggestion else "none (sweep too short)"
    log(
        f"lr-find over phase {phase.name!r} ({len(result.lrs)} steps): "
        f"suggested optim.lr {suggestion}"
    )
    return out
