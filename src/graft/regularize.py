"""Regularizers (penalties added to the loss), constraints (projections after each optimizer
step) and gradient clipping.

* Penalties expose ``penalty() -> Tensor``: add it to the loss before ``backward()``. Each sums
  over the parameters that currently require a gradient, so a frozen group costs nothing and
  the same object serves every phase of a plan.
* Constraints expose ``apply()``: call it after every ``optimizer.step()``; it projects the
  weights back onto the allowed set in place, under ``torch.no_grad()``.

Sums over many tensors use ``torch._foreach_*`` kernels (one launch for a whole list of tensors
instead of one per tensor), which is what makes a per-step penalty cheap on GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

ParamsLike = Iterable[Tensor] | nn.Module | Iterable[nn.Module]


def _params(items: ParamsLike) -> list[Tensor]:
    """A de-duplicated list of tensors from tensors, a module, or modules (all their params)."""
    if isinstance(items, nn.Module):
        items = [items]
    out: list[Tensor] = []
    seen: set[int] = set()
    for item in items:
        tensors = item.parameters() if isinstance(item, nn.Module) else [item]
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def _sum_of_squares(tensors: list[Tensor]) -> Tensor:
    """``Σ ‖t‖²`` over a list of tensors, differentiable (norm backward at 0 gives 0)."""
    return torch.stack(torch._foreach_norm(tensors, 2)).pow(2).sum()


def _zero_like_loss(tensors: Sequence[Tensor]) -> Tensor:
    device = tensors[0].device if tensors else None
    return torch.zeros((), device=device)


# --------------------------------------------------------------------------------------------
# Penalties


class _WeightPenalty:
    """A penalty on the trainable ones of some parameters, scaled by ``strength``; it only sums
    parameters that currently require a gradient, so one object serves every phase."""

    def __init__(self, params: ParamsLike, strength: float) -> None:
        if strength < 0:
            raise ValueError(f"{type(self).__name__}: strength must be ≥ 0, got {strength}")
        self.params = _params(params)
        self.strength = float(strength)

    def penalty(self) -> Tensor:
        active = [p for p in self.params if p.requires_grad]
        if not active or self.strength == 0:
            return _zero_like_loss(self.params)
        return self._value(active)

    def _value(self, active: list[Tensor]) -> Tensor:
        raise NotImplementedError


class L1Penalty(_WeightPenalty):
    """``strength · Σ|w|``: the lasso penalty (Tibshirani 1996); drives weights to exactly zero
    under proximal methods and towards zero under (sub)gradient descent."""

    def _value(self, active: list[Tensor]) -> Tensor:
        return self.strength * torch.stack(torch._foreach_norm(active, 1)).sum()


class L2Penalty(_WeightPenalty):
    """``strength/2 · Σ‖w‖²``: coupled L2 decay (Krogh & Hertz 1992) written as a loss term.

    Its gradient is ``strength · w``, exactly what torch's (coupled) ``weight_decay=strength``
    adds to the gradient — so under SGD the two are the same update; under Adam-type optimizers
    it is *not* decoupled decay (see :mod:`graft.optim`). Useful with optimizers that have no
    weight decay of their own (L-BFGS) or to penalize only chosen parameters.
    """

    def _value(self, active: list[Tensor]) -> Tensor:
        return 0.5 * self.strength * _sum_of_squares(active)


class L2SP:
    """L2-SP (Li, Grandvalet & Davoine 2018, "Explicit Inductive Bias for Transfer Learning with
    Convolutional Networks", ICML): ``α/2 · ‖w_S − w⁰_S‖² + β/2 · ‖w_S̄‖²``.

    ``w_S`` are the parameters shared with the pretrained model (the backbone), pulled towards
    their pretrained values ``w⁰`` instead of towards zero; ``w_S̄`` are the new head's
    parameters, which have no pretrained value and get plain L2. The paper's values are around
    α = 0.1, β = 0.01 (their eq. 4); use no other weight decay on the backbone with it.

    ``w⁰`` is snapshotted at construction (one extra copy of the backbone's weights on their
    device), so construct it **once, right after loading the pretrained weights** — before any
    phase trains, and before a resumed run loads its checkpoint (or pass ``reference``).

    Args:
        named_params: ``(name, parameter)`` pairs, e.g. ``model.named_parameters()``.
        strength_backbone: α.
        strength_head: β.
        head_prefixes: names that start with one of these are head parameters (graft's models
            name their head ``head``).
        reference: the pretrained values by name, instead of a snapshot of the current ones.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, Tensor]],
        strength_backbone: float,
        strength_head: float = 0.0,
        *,
        head_prefixes: Sequence[str] = ("head.",),
        reference: Mapping[str, Tensor] | None = None,
    ) -> None:
        if strength_backbone < 0 or strength_head < 0:
            raise ValueError("L2SP: strengths must be ≥ 0")
        self.alpha = float(strength_backbone)
        self.beta = float(strength_head)
        self.backbone: list[tuple[str, Tensor]] = []
        self.head: list[tuple[str, Tensor]] = []
        for name, p in named_params:
            is_head = any(name == pre.rstrip(".") or name.startswith(pre) for pre in head_prefixes)
            (self.head if is_head else self.backbone).append((name, p))
        with torch.no_grad():
            if reference is None:
                self.reference = [p.detach().clone() for _, p in self.backbone]
            else:
                missing = [n for n, _ in self.backbone if n not in reference]
                if missing:
                    raise ValueError(f"L2SP: reference has no value for {missing[:5]}")
                self.reference = [
                    reference[n].detach().to(p.device, p.dtype, copy=True) for n, p in self.backbone
                ]

    def penalty(self) -> Tensor:
        terms: list[Tensor] = []
        if self.alpha:
            pairs = [(p, r) for (_, p), r in zip(self.backbone, self.reference, strict=True)]
            active = [(p, r) for p, r in pairs if p.requires_grad]
            if active:
                diffs = torch._foreach_sub([p for p, _ in active], [r for _, r in active])
                terms.append(0.5 * self.alpha * _sum_of_squares(list(diffs)))
        if self.beta:
            head = [p for _, p in self.head if p.requires_grad]
            if head:
                terms.append(0.5 * self.beta * _sum_of_squares(head))
        if not terms:
            return _zero_like_loss([p for _, p in self.backbone + self.head])
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    def distance(self) -> float:
        """``‖w_S − w⁰_S‖`` over the backbone: how far fine-tuning has moved from pretrained."""
        if not self.backbone:
            return 0.0
        with torch.no_grad():
            diffs = torch._foreach_sub([p for _, p in self.backbone], self.reference)
            return float(_sum_of_squares(list(diffs)).sqrt())


# --------------------------------------------------------------------------------------------
# Constraints (projections after each optimizer step)


class MaxNorm:
    """Max-norm: each unit's incoming weight vector has L2 norm at most ``max_norm`` (Srebro &
    Shraibman 2005; Srivastava, Hinton et al. 2014, "Dropout", §5.1, which pairs it with dropout
    and large learning rates, c ≈ 3–4). A vector that is too long is rescaled onto the ball.

    ``dim`` is the dimension that indexes the units, as in ``torch.renorm``: 0 for
    ``nn.Linear.weight`` (out, in) and conv weights (out, in, kh, kw). Given modules, the
    constraint applies to the ``weight`` of every Linear and Conv layer in them (not biases);
    given tensors, to those tensors (each at least 2-D).
    """

    def __init__(self, modules_or_params: ParamsLike, max_norm: float, dim: int = 0) -> None:
        if max_norm <= 0:
            raise ValueError(f"MaxNorm: max_norm must be > 0, got {max_norm}")
        items = (
            [modules_or_params] if isinstance(modules_or_params, nn.Module) else modules_or_params
        )
        weights: list[Tensor] = []
        for item in items:
            if isinstance(item, nn.Module):
                for m in item.modules():
                    if isinstance(m, nn.Linear | nn.modules.conv._ConvNd):
                        weights.append(m.weight)
            else:
                weights.append(item)
        bad = [tuple(w.shape) for w in weights if w.ndim < 2]
        if bad:
            raise ValueError(f"MaxNorm: needs weights of ≥ 2 dims (units × inputs), got {bad}")
        self.weights = _params(weights)
        self.max_norm = float(max_norm)
        self.dim = dim

    @torch.no_grad()
    def apply(self) -> None:
        for w in self.weights:
            # renorm leaves rows under the bound untouched and scales the others by
            # max_norm / (norm + 1e-7), i.e. onto (just inside) the ball.
            w.renorm_(2, self.dim, self.max_norm)


class Clamp:
    """Every value in ``[min, max]`` (either bound may be ``None``): a box projection."""

    def __init__(self, params: ParamsLike, min: float | None = None, max: float | None = None):
        if min is None and max is None:
            raise ValueError("Clamp: give min, max or both")
        if min is not None and max is not None and min > max:
            raise ValueError(f"Clamp: min {min} > max {max}")
        self.params = _params(params)
        self.min = min
        self.max = max

    @torch.no_grad()
    def apply(self) -> None:
        if not self.params:
            return
        if self.min is not None:
            torch._foreach_clamp_min_(self.params, self.min)
        if self.max is not None:
            torch._foreach_clamp_max_(self.params, self.max)


class SignConstraint:
    """A sign constraint: ``sign="+"`` keeps every value ≥ 0, ``"-"`` keeps it ≤ 0, and
    ``"initial"`` keeps each value on the side of zero it had at construction (the pretrained
    sign pattern); a value that crosses zero is projected to 0."""

    def __init__(self, params: ParamsLike, sign: Literal["+", "-", "initial"] = "+") -> None:
        if sign not in ("+", "-", "initial"):
            raise ValueError(f"SignConstraint: sign must be '+', '-' or 'initial', got {sign!r}")
        self.params = _params(params)
        self.sign = sign
        self._signs: list[Tensor] = []
        if sign == "initial":
            with torch.no_grad():
                # ±1 per value (0 counts as +); int8 keeps the snapshot at a quarter of fp32.
                self._signs = [
                    torch.where(p >= 0, 1, -1).to(torch.int8).to(p.device) for p in self.params
                ]

    @torch.no_grad()
    def apply(self) -> None:
        if not self.params:
            return
        if self.sign == "+":
            torch._foreach_clamp_min_(self.params, 0.0)
        elif self.sign == "-":
            torch._foreach_clamp_max_(self.params, 0.0)
        else:
            for p, s in zip(self.params, self._signs, strict=True):
                # s·p ≥ 0 must hold; where it does not, the value is set to 0.
                p.masked_fill_(p * s < 0, 0.0)


class NonNegative(SignConstraint):
    """Every value ≥ 0 (e.g. non-negative mixing weights or a positive scale)."""

    def __init__(self, params: ParamsLike) -> None:
        super().__init__(params, sign="+")


class DistanceBound:
    """Each tensor stays within ``radius`` of its reference (pretrained) value — the projection
    form of distance-based fine-tuning regularization (Gouk, Hospedales & Pontil 2021,
    "Distance-Based Regularisation of Deep Networks for Fine-Tuning", ICLR), one ball per tensor.

    ``norm="l2"``: if ``‖w − w⁰‖₂ > r`` then ``w ← w⁰ + r · (w − w⁰)/‖w − w⁰‖₂``.
    ``norm="linf"``: ``w ← clamp(w, w⁰ − r, w⁰ + r)`` elementwise.
    With ``relative=True`` the radius of each tensor is ``radius · ‖w⁰‖`` (same norm), which
    puts layers of very different scale on an equal footing.

    The reference is snapshotted at construction (or given by name with ``named_params`` +
    ``reference``); construct it right after loading pretrained weights, as for :class:`L2SP`.
    """

    def __init__(
        self,
        params: ParamsLike | Iterable[tuple[str, Tensor]],
        radius: float,
        norm: Literal["l2", "linf"] = "l2",
        *,
        relative: bool = False,
        reference: Mapping[str, Tensor] | None = None,
    ) -> None:
        if radius < 0:
            raise ValueError(f"DistanceBound: radius must be ≥ 0, got {radius}")
        if norm not in ("l2", "linf"):
            raise ValueError(f"DistanceBound: norm must be 'l2' or 'linf', got {norm!r}")
        items = list(params) if not isinstance(params, nn.Module) else [params]
        named = [it for it in items if isinstance(it, tuple)]
        with torch.no_grad():
            if named:
                self.params = [p for _, p in named]
                if reference is not None:
                    self.reference = [
                        reference[n].detach().to(p.device, p.dtype, copy=True) for n, p in named
                    ]
                else:
                    self.reference = [p.detach().clone() for p in self.params]
            else:
                if reference is not None:
                    raise ValueError("DistanceBound: a reference by name needs (name, param) pairs")
                self.params = _params(items)  # type: ignore[arg-type]
                self.reference = [p.detach().clone() for p in self.params]
            order = 2.0 if norm == "l2" else float("inf")
            if relative and self.reference:
                ref_norms = torch._foreach_norm(self.reference, order)
                self.radii = [float(radius) * float(n) for n in ref_norms]
            else:
                self.radii = [float(radius)] * len(self.params)
        self.norm = norm

    @torch.no_grad()
    def apply(self) -> None:
        if not self.params:
            return
        if self.norm == "linf":
            for p, ref, r in zip(self.params, self.reference, self.radii, strict=True):
                p.copy_(torch.minimum(torch.maximum(p, ref - r), ref + r))
            return
        diffs = torch._foreach_sub(self.params, self.reference)
        dists = torch.stack(torch._foreach_norm(diffs, 2))
        radii = torch.tensor(self.radii, device=dists.device, dtype=dists.dtype)
        # Fraction of the way back to w⁰: 0 inside the ball (lerp by 0 leaves w bit-identical),
        # 1 − r/d outside, which lands exactly on the sphere.
        back = (1.0 - radii / dists.clamp_min(1e-12)).clamp_min(0.0)
        for p, ref, t in zip(self.params, self.reference, back.unbind(), strict=True):
            p.lerp_(ref, t.to(p.dtype))

    def distances(self) -> list[float]:
        """The current distance of each tensor from its reference, in this bound's norm."""
        order = 2.0 if self.norm == "l2" else float("inf")
        with torch.no_grad():
            diffs = torch._foreach_sub(self.params, self.reference)
            return [float(d) for d in torch._foreach_norm(diffs, order)]


# --------------------------------------------------------------------------------------------
# Gradient clipping


def clip_gradients(
    params: ParamsLike,
    max_norm: float | None = None,
    max_value: float | None = None,
    *,
    norm_type: float = 2.0,
) -> Tensor | None:
    """Clip gradients in place, by value (each entry into ``[-max_value, max_value]``) and then
    by global norm (all gradients scaled so that their joint ``norm_type`` norm is at most
    ``max_norm``; Pascanu, Mikolov & Bengio 2013). Call after ``backward()`` (and after
    ``GradScaler.unscale_``) and before ``optimizer.step()``.

    Returns the total gradient norm before norm clipping (after value clipping), or ``None``
    when ``max_norm`` is not set.
    """
    grads_owners = [p for p in _params(params) if p.grad is not None]
    if max_value is not None:
        if max_value <= 0:
            raise ValueError(f"clip_gradients: max_value must be > 0, got {max_value}")
        nn.utils.clip_grad_value_(grads_owners, max_value)
    if max_norm is not None:
        if max_norm <= 0:
            raise ValueError(f"clip_gradients: max_norm must be > 0, got {max_norm}")
        return nn.utils.clip_grad_norm_(grads_owners, max_norm, norm_type=norm_type)
    return None
