"""Optimizer and learning-rate schedule builders, from flat arguments.

Per-group learning-rate multipliers are set as each parameter group's own ``lr``; schedules are
``LambdaLR`` factors applied to every group's initial ``lr``, so multipliers compose with every
schedule by construction: at step ``k`` a group's LR is ``base_lr × multiplier × factor(k)``.

Weight decay comes in two kinds, chosen with ``decoupled_weight_decay``:

* **decoupled** (the default; Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"):
  before each update ``w ← w · (1 − lr · wd)``, independent of the gradient. ``adamw`` is Adam
  with this decay; for ``sgd``, ``rmsprop``, ``adagrad`` and ``adadelta`` graft applies the same
  shrinkage in an optimizer step pre-hook (SGDW etc.). The shrinkage follows the group's
  *scheduled* LR, exactly as in ``torch.optim.AdamW``.
* **L2 / coupled** (``decoupled_weight_decay=False``): ``wd · w`` is added to the gradient, which
  is the gradient of the penalty ``wd/2 · ‖w‖²`` (this is what ``torch.optim.Adam``'s and
  ``SGD``'s ``weight_decay`` do). Under adaptive optimizers the decay is then rescaled by the
  per-coordinate step size, which is why it regularizes differently from decoupled decay.

For plain SGD without momentum the two coincide; with momentum or any adaptive method they do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from graft.errors import UsageError
from graft.models.base import LayerGroup
from graft.strategies.plan import Phase

OPTIMIZERS = ("sgd", "adam", "adamw", "amsgrad", "rmsprop", "adagrad", "adadelta", "lbfgs")
SCHEDULES = ("constant", "step", "cosine", "linear", "one_cycle", "slanted_triangular")

# The group key that holds the decoupled decay rate for optimizers without native support.
DECOUPLED_WD_KEY = "decoupled_wd"

# L-BFGS keeps ``history_size`` pairs of parameter-sized vectors: 2 × 10 × 4 bytes = 80 bytes per
# float32 parameter, so 5M parameters already hold 400 MB of history.
LBFGS_HISTORY_SIZE = 10
LBFGS_MAX_PARAMS = 5_000_000


def build_optimizer(
    name: str,
    param_groups: list[dict[str, Any]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    decoupled_weight_decay: bool = True,
) -> torch.optim.Optimizer:
    """An optimizer over ``param_groups`` (each with its own ``lr`` and ``weight_decay``).

    ``lr`` and ``weight_decay`` are the defaults for groups that do not set their own. Names:

    * ``sgd``: momentum ``momentum`` (0 for none), Nesterov momentum with ``nesterov``
      (Sutskever et al. 2013).
    * ``adam`` / ``adamw``: Kingma & Ba 2015 with ``betas``/``eps``; ``adam`` follows
      ``decoupled_weight_decay``, ``adamw`` is always decoupled (asking it for L2 is an error).
    * ``amsgrad``: Adam with the AMSGrad max of second moments (Reddi et al. 2018); decay kind as
      ``decoupled_weight_decay`` says.
    * ``rmsprop``: Tieleman & Hinton 2012 (torch's ``alpha=0.99``) with ``momentum`` and ``eps``.
    * ``adagrad``: Duchi et al. 2011, with ``eps``.
    * ``adadelta``: Zeiler 2012; keeps its own ``eps=1e-6`` because Adadelta's eps sets the size
      of its first steps (Adam's 1e-8 would make them 10× smaller). Its ``lr`` is a multiplier
      of the Adadelta step, conventionally 1.0.
    * ``lbfgs``: Liu & Nocedal 1989, strong-Wolfe line search, history of
      ``LBFGS_HISTORY_SIZE``. Closure-based (``optimizer.step(closure)``, see
      :func:`is_closure_optimizer`) and full-batch in spirit: it fits a small deterministic model
      such as a head on frozen (cached) features, see :func:`check_lbfgs_applicable`. It takes a
      single LR (so all groups must share one; ~1.0 with line search) and no weight decay (an L2
      penalty in the loss does the same: ``regularize.l2``, :class:`graft.regularize.L2Penalty`).
      A closure-based optimizer takes one step per epoch over the whole training set (see
      :func:`graft.train.train`).
    """
    if name not in OPTIMIZERS:
        raise UsageError(
            f"optim.name: unknown optimizer {name!r}", hint=f"one of {', '.join(OPTIMIZERS)}"
        )
    if name == "adamw" and not decoupled_weight_decay:
        raise UsageError(
            "optim: adamw always decouples weight decay",
            hint="for L2 decay added to the gradient use adam with decoupled_weight_decay=false",
        )
    if nesterov and (name != "sgd" or momentum <= 0):
        raise UsageError("optim.nesterov: needs the sgd optimizer with momentum > 0")
    groups = [dict(g) for g in param_groups]  # never mutate the caller's dicts
    for g in groups:
        g.setdefault("lr", lr)
        g.setdefault("weight_decay", weight_decay)
    if name == "lbfgs":
        return _build_lbfgs(groups, lr)

    native_decoupled = name in ("adam", "adamw", "amsgrad")
    hooked = decoupled_weight_decay and not native_decoupled
    if hooked:
        # torch's SGD/RMSprop/Adagrad/Adadelta only know L2 decay: move the rate to our own key
        # and shrink the weights in a step pre-hook instead.
        for g in groups:
            g[DECOUPLED_WD_KEY] = g["weight_decay"]
            g["weight_decay"] = 0.0
    opt: torch.optim.Optimizer
    if name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    elif name in ("adam", "adamw", "amsgrad"):
        amsgrad = name == "amsgrad"
        cls = torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam
        # The fused kernel does a whole Adam step in one pass over the parameters: MiniLM's
        # training step ran 1.31x faster than with torch's default foreach implementation
        # (benchmarks/b6_step.py, AVX2 CPU). It needs every parameter on one CPU or CUDA device.
        fused = _fusable(groups)
        opt = cls(groups, lr=lr, betas=betas, eps=eps, amsgrad=amsgrad, fused=fused or None)
    elif name == "rmsprop":
        opt = torch.optim.RMSprop(groups, lr=lr, momentum=momentum, eps=eps)
    elif name == "adagrad":
        opt = torch.optim.Adagrad(groups, lr=lr, eps=eps)
    else:  # adadelta
        opt = torch.optim.Adadelta(groups, lr=lr)
    if hooked:
        opt.register_step_pre_hook(_decoupled_decay_hook)
    return opt


def _fusable(groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused Adam kernel takes these parameters: floating, on one CPU or GPU."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.is_floating_point() for p in params)
    )


@torch.no_grad()
def _decoupled_decay_hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """``w ← w · (1 − lr · wd)`` for every parameter with a gradient, before the update (the
    order ``torch.optim.AdamW`` uses). Skipped steps (e.g. GradScaler on inf) skip it too."""
    for group in optimizer.param_groups:
        wd = group.get(DECOUPLED_WD_KEY, 0.0)
        if wd:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_mul_(params, 1.0 - float(group["lr"]) * wd)


def _build_lbfgs(groups: list[dict[str, Any]], lr: float) -> torch.optim.LBFGS:
    lrs = {float(g["lr"]) for g in groups}
    if len(lrs) > 1:
        raise UsageError(
            "optim: lbfgs takes one learning rate for all parameters, got per-group LRs "
            f"{sorted(lrs)}",
            hint="use no per-group LR multipliers with lbfgs",
        )
    if any(g["weight_decay"] for g in groups):
        raise UsageError(
            "optim.weight_decay: lbfgs has no weight decay",
            hint="set optim.weight_decay=0 and regularize.l2 (the same penalty, in the loss)",
        )
    params = [p for g in groups for p in g["params"]]
    return torch.optim.LBFGS(
        params,
        lr=lrs.pop() if lrs else lr,
        history_size=LBFGS_HISTORY_SIZE,
        line_search_fn="strong_wolfe",
    )


def is_closure_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` needs a closure that re-evaluates the loss (L-BFGS).

    The loop must then call ``optimizer.step(closure)`` with a closure that zeroes the gradients,
    computes the loss on the *same* batch, calls ``backward()`` and returns the loss; it may be
    called several times per step (line search), so it must be deterministic: no dropout, no
    random augmentation, and frozen BatchNorm statistics.
    """
    return isinstance(optimizer, torch.optim.LBFGS)


def check_lbfgs_applicable(
    trainable_params: int, has_dropout: bool, *, max_params: int = LBFGS_MAX_PARAMS
) -> str | None:
    """Why L-BFGS does not fit this model, or ``None`` when it does.

    L-BFGS (Liu & Nocedal 1989) builds a curvature model from successive gradients and searches
    along lines; both assume the loss is a deterministic function of the weights, and its
    history costs ``2 × history × params`` floats. It fits a small model (a linear head on frozen
    features is the textbook case: convex, full-batch friendly) and fails on a stochastic one.
    """
    if trainable_params <= 0:
        return "there are no trainable parameters"
    if has_dropout:
        return (
            "the trained part of the model has active dropout, so the loss changes between the "
            "line-search evaluations of one L-BFGS step; set dropout to 0 or use another optimizer"
        )
    if trainable_params > max_params:
        return (
            f"{trainable_params:,} trainable parameters is too many for L-BFGS (its history would "
            f"hold {2 * LBFGS_HISTORY_SIZE * trainable_params * 4 / 1e9:.1f} GB); it fits up to "
            f"{max_params:,}, e.g. a head on frozen features"
        )
    return None


def param_groups(
    groups: list[LayerGroup],
    phase: Phase,
    lr: float,
    weight_decay: float,
    body_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """One optimizer group per (layer group, decay or not); biases and norm weights (1-D) get no
    weight decay. Each carries its own ``lr`` = base LR × the phase's multiplier.
    ``body_weight_decay`` overrides the decay of every group but the head (0 under L2-SP, whose
    penalty replaces weight decay on the backbone)."""
    out = []
    for g in groups:
        trainable = [(n, p) for n, p in g.params if p.requires_grad]
        wd = weight_decay if g.name == "head" or body_weight_decay is None else body_weight_decay
        for decay in (True, False):
            ps = [p for _, p in trainable if (p.ndim > 1) == decay]
            if ps:
                out.append(
                    {
                        "params": ps,
                        "lr": lr * phase.multiplier(g.name),
                        "weight_decay": wd if decay else 0.0,
                        "group": g.name,
                    }
                )
    return out


@dataclass(frozen=True)
class OptimizerFactory:
    """The run's optimizer, fixed once: each phase calls it with the layer groups and gets a
    fresh optimizer over the groups it trains, each at base LR × the phase's multiplier.

    The arguments are :func:`build_optimizer`'s, checked when the factory is made (so a bad
    combination is refused before a run starts, not at its first phase)."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    body_weight_decay: float | None = None  # None: weight_decay (0 under L2-SP)
    decoupled_weight_decay: bool = True  # AdamW-style; False: L2 added to the gradient
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        probe = torch.nn.Parameter(torch.zeros(1))
        self.build([{"params": [probe]}])  # raises UsageError for what build_optimizer refuses

    def __call__(self, groups: list[LayerGroup], phase: Phase) -> torch.optim.Optimizer:
        """The optimizer of one phase, over the groups it trains, each at its own LR."""
        return self.build(
            param_groups(groups, phase, self.lr, self.weight_decay, self.body_weight_decay)
        )

    def build(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """The optimizer over ready-made parameter groups."""
        # Every field but these two is a keyword argument of build_optimizer, by the same name.
        options = {f.name: getattr(self, f.name) for f in fields(self)}
        del options["name"], options["body_weight_decay"]
        return build_optimizer(self.name, groups, **options)

    @property
    def closure_based(self) -> bool:
        """Whether its optimizers step with a closure (L-BFGS): see :func:`is_closure_optimizer`."""
        return self.name == "lbfgs"


# --------------------------------------------------------------------------------------------
# Schedules


@dataclass
class ScheduleFactor:
    """The factor of each group's initial LR at scheduler step ``k`` (a ``LambdaLR`` lambda).

    A plain object of primitive fields (not a closure) so that ``LambdaLR.state_dict`` saves it
    and ``torch.load(weights_only=True)`` reads it back.

    Linear warmup ``(k + 1) / warmup`` runs first for ``warmup`` steps; the named schedule then
    runs over the remaining ``total - warmup`` steps with progress ``p = (k - warmup) / (total -
    warmup)`` clamped to [0, 1]:

    * ``constant``: 1
    * ``step``: ``gamma ** ((k - warmup) // step_size)`` (torch's StepLR, counted after warmup)
    * ``cosine``: ``min + (1 - min) · ½(1 + cos πp)`` (Loshchilov & Hutter 2017, no restarts)
    * ``linear``: ``min + (1 - min) · (1 - p)``
    * ``one_cycle``: Smith & Topin 2018, the shape of ``torch.optim.lr_scheduler.OneCycleLR``
      (two phases, cosine annealing) divided by ``max_lr``: starts at ``1/div_factor``, peaks at 1
      at step ``pct_start · total - 1``, ends at ``1/(div_factor · final_div_factor)``. Momentum is
      not cycled.
    * ``slanted_triangular``: Howard & Ruder 2018 (ULMFiT), eq. 3: ``cut = ⌊T · cut_frac⌋``,
      ``p = k/cut`` before the cut and ``1 − (k − cut)/(cut · (1/cut_frac − 1))`` after; factor
      ``(1 + p(ratio − 1))/ratio``: from ``1/ratio`` up to 1 at ``cut`` and back down.
    """

    name: str
    total: int
    warmup: int = 0
    step_size: int = 1
    gamma: float = 0.1
    min_factor: float = 0.0
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    cut_frac: float = 0.1
    ratio: float = 32.0

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "constant":
            return 1.0
        if self.name == "one_cycle":
            return self._one_cycle(step)
        if self.name == "slanted_triangular":
            return self._slanted_triangular(step)
        if self.name == "step":
            return self.gamma ** ((step - self.warmup) // self.step_size)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        progress = min(max(progress, 0.0), 1.0)
        if self.name == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.name == "linear":
            shape = 1.0 - progress
        else:
            raise UsageError(f"schedule.name: unknown schedule {self.name!r}")
        return self.min_factor + (1.0 - self.min_factor) * shape

    def _one_cycle(self, step: int) -> float:
        # torch's OneCycleLR (three_phase=False, anneal_strategy="cos"), in units of max_lr.
        start = 1.0 / self.div_factor
        end = start / self.final_div_factor
        peak_step = float(self.pct_start * self.total) - 1
        last_step = float(self.total - 1)
        if step <= peak_step:
            pct = step / peak_step if peak_step > 0 else 1.0
            return _cos_anneal(start, 1.0, pct)
        pct = (step - peak_step) / (last_step - peak_step) if last_step > peak_step else 1.0
        return _cos_anneal(1.0, end, min(pct, 1.0))

    def _slanted_triangular(self, step: int) -> float:
        cut = max(1, math.floor(self.total * self.cut_frac))
        # rising p = k/cut, then falling over the remaining T − cut = cut·(1/cut_frac − 1) steps
        p = step / cut if step < cut else 1.0 - (step - cut) / (cut * (1.0 / self.cut_frac - 1.0))
        return (1.0 + max(p, 0.0) * (self.ratio - 1.0)) / self.ratio


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


# Which keyword arguments each schedule takes (None values are "not given" and always accepted).
_SCHEDULE_KWARGS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "step": ("step_size", "gamma"),
    "cosine": ("min_factor",),
    "linear": ("min_factor",),
    "one_cycle": ("pct_start", "div_factor", "final_div_factor"),
    "slanted_triangular": ("cut_frac", "ratio"),
}


def make_schedule_factor(
    name: str,
    *,
    total_steps: int,
    warmup_ratio: float = 0.0,
    warmup_steps: int | None = None,
    **kwargs: Any,
) -> ScheduleFactor:
    """Validate flat schedule arguments and resolve them into a :class:`ScheduleFactor`.

    ``warmup_steps`` (an exact count) wins over ``warmup_ratio`` (a fraction of ``total_steps``).
    ``step_size`` is a step count (int ≥ 1) or a fraction of ``total_steps`` (float in (0, 1)).
    ``one_cycle`` and ``slanted_triangular`` have a warm-up of their own (``pct_start``,
    ``cut_frac``), so a linear warmup in front of them is refused.
    """
    if name not in SCHEDULES:
        raise UsageError(
            f"schedule.name: unknown schedule {name!r}", hint=f"one of {', '.join(SCHEDULES)}"
        )
    if total_steps < 1:
        raise UsageError(f"schedule: total_steps must be ≥ 1, got {total_steps}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    wrong = sorted(set(given) - set(_SCHEDULE_KWARGS[name]))
    if wrong:
        raise UsageError(
            f"schedule: {', '.join(wrong)} does not apply to the {name} schedule",
            hint=f"{name} takes: {', '.join(_SCHEDULE_KWARGS[name]) or 'no options'}",
        )
    if warmup_steps is not None:
        warmup = int(warmup_steps)
    else:
        if not 0.0 <= warmup_ratio < 1.0:
            raise UsageError(f"schedule.warmup_ratio: must be in [0, 1), got {warmup_ratio}")
        warmup = round(warmup_ratio * total_steps)
    if not 0 <= warmup <= total_steps:
        raise UsageError(f"schedule.warmup_steps: must be in [0, {total_steps}], got {warmup}")
    if warmup and name in ("one_cycle", "slanted_triangular"):
        raise UsageError(
            f"schedule: {name} warms up by itself; a linear warmup in front is not supported",
            hint="set warmup to 0 and use pct_start (one_cycle) or cut_frac (slanted_triangular)",
        )
    if "step_size" in given:
        size = given["step_size"]
        if isinstance(size, float) and 0.0 < size < 1.0:
            given["step_size"] = max(1, round(size * total_steps))
        elif float(size) >= 1 and float(size) == int(size):
            given["step_size"] = int(size)
        else:
            raise UsageError(
                f"schedule.step_size: a step count ≥ 1 or a fraction in (0, 1), got {size}"
            )
    for key in ("pct_start", "cut_frac"):
        if key in given and not 0.0 < given[key] < 1.0:
            raise UsageError(f"schedule.{key}: must be in (0, 1), got {given[key]}")
    if "min_factor" in given and not 0.0 <= given["min_factor"] <= 1.0:
        raise UsageError(f"schedule.min_factor: must be in [0, 1], got {given['min_factor']}")
    for key in ("div_factor", "final_div_factor", "ratio"):
        if key in given and given[key] <= 0:
            raise UsageError(f"schedule.{key}: must be > 0, got {given[key]}")
    if "gamma" in given and given["gamma"] <= 0:
        raise UsageError(f"schedule.gamma: must be > 0, got {given['gamma']}")
    return ScheduleFactor(name=name, total=total_steps, warmup=warmup, **given)


def schedule_factor(name: str, step: int, total: int, warmup: int) -> float:
    """The multiplier of the initial LR at optimizer step ``step`` of ``total`` (default options
    of the named schedule, ``warmup`` linear warmup steps)."""
    return make_schedule_factor(name, total_steps=total, warmup_steps=warmup)(step)


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_ratio: float = 0.0,
    warmup_steps: int | None = None,
    **kwargs: Any,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule over ``total_steps`` optimizer steps (call ``scheduler.step()`` after
    every ``optimizer.step()``), with optional linear warmup.

    Every schedule is a ``LambdaLR`` factor of each group's initial ``lr``, so per-group LR
    multipliers (discriminative / layer-wise decay) always apply. Options per schedule (``None``
    means the default): ``step``: ``step_size``, ``gamma``; ``cosine``/``linear``:
    ``min_factor``; ``one_cycle``: ``pct_start=0.3``, ``div_factor=25``,
    ``final_div_factor=1e4``; ``slanted_triangular``: ``cut_frac=0.1``, ``ratio=32``. See
    :class:`ScheduleFactor` for the formulas.
    """
    factor: Callable[[int], float] = make_schedule_factor(
        name,
        total_steps=total_steps,
        warmup_ratio=warmup_ratio,
        warmup_steps=warmup_steps,
        **kwargs,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class ScheduleFactory:
    """The run's LR schedule, fixed once: each phase calls it with its optimizer and its number
    of optimizer steps. The options are checked by :meth:`check` (done once, before a run)."""

    name: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # step_size, gamma, ...

    def check(self, total_steps: int) -> None:
        """Raise :class:`~graft.errors.UsageError` if the schedule cannot run ``total_steps``."""
        make_schedule_factor(
            self.name,
            total_steps=total_steps,
            warmup_ratio=self.warmup_ratio,
            warmup_steps=self.warmup_steps,
            **self.options,
        )

    def __call__(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LambdaLR:
        return build_scheduler(
            self.name,
            optimizer,
            total_steps=total_steps,
            warmup_ratio=self.warmup_ratio,
            warmup_steps=self.warmup_steps,
            **self.options,
        )
