"""Initialization policies, orthogonal to the plan: which groups keep their pretrained weights,
and how the new head starts.

Flat functions on a :class:`~graft.models.base.Backbone`. Each is deterministic given torch's
global seed (``torch.manual_seed``); none reads a config.

``method="default"`` re-initializes with the architecture's own initialization: the weights that a
fresh, untrained instance of the same architecture gets (for a Hugging Face encoder its
``_init_weights``, e.g. BERT's normal(0, 0.02) with LayerNorm 1/0; for timm or torchvision the
model's constructor init, e.g. EfficientNet's fan-out normal). They are taken from a fresh instance
rather than by calling ``_init_weights`` on the loaded model because transformers 5.x marks
loaded weights ``_is_hf_initialized`` and its init functions then silently skip them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from graft.models.base import Backbone, Head, LayerGroup

ReinitMethod = Literal["default", "normal", "uniform"]
HeadInit = Literal[
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal", "zeros"
]
HEAD_INITS: tuple[str, ...] = HeadInit.__args__  # type: ignore[attr-defined]


def _body_groups(backbone: Backbone) -> list[LayerGroup]:
    """The groups below the head, bottom to top."""
    return [g for g in backbone.groups if g.name != "head"]


def _is_norm(module: nn.Module) -> bool:
    """BatchNorm/LayerNorm/GroupNorm/RMSNorm and look-alikes (HF's and timm's own norm classes)."""
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
    if isinstance(module, norms):
        return True
    own = list(module.parameters(recurse=False))
    return "Norm" in type(module).__name__ and bool(own) and all(p.ndim == 1 for p in own)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _fresh_state(backbone: Backbone) -> dict[str, torch.Tensor] | None:
    """Parameters and buffers of a fresh, randomly initialized instance of the architecture, under
    the model's own names; None when the adapter is unknown (then layers reset themselves)."""
    source = backbone.spec.get("source")
    if source == "hf":
        encoder: Any = backbone.model.body.encoder
        # The class's constructor runs the architecture's own init (post_init → _init_weights).
        fresh_encoder: nn.Module = type(encoder)(encoder.config)
        return {f"body.encoder.{k}": v for k, v in fresh_encoder.state_dict().items()}
    from graft.models import families, rebuild

    if source in families():
        fresh = rebuild(backbone.spec, backbone.preprocess.to_dict(), None)
        return dict(fresh.model.state_dict())
    return None


def reinit_groups(
    backbone: Backbone,
    names: Sequence[str],
    method: ReinitMethod = "default",
    scale: float = 0.02,
) -> None:
    """Re-initialize every parameter of the named body groups, in place.

    ``default``: the architecture's own init (see the module docstring). ``normal`` /
    ``uniform``: weights from N(0, scale²) / U(-scale, scale); biases 0; norm layers weight 1,
    bias 0. Either way the running statistics of BatchNorm layers in those groups are reset.
    Parameters outside the named groups stay bit-identical.
    """
    by_name = {g.name: g for g in backbone.groups}
    unknown = [n for n in names if n not in by_name or n == "head"]
    if unknown:
        body = [g.name for g in _body_groups(backbone)]
        raise ValueError(f"not body groups: {unknown}; body groups: {body}")
    if method not in ("default", "normal", "uniform"):
        raise ValueError(f"method must be default, normal or uniform, got {method!r}")
    if method != "default" and not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    ids = {id(p) for n in names for _, p in by_name[n].params}
    if not ids:
        return
    # The modules that own the parameters, with the full names of their tensors.
    owners = [
        (prefix, m)
        for prefix, m in backbone.model.named_modules()
        if any(id(p) in ids for p in m.parameters(recurse=False))
    ]
    fresh = _fresh_state(backbone) if method == "default" else None
    with torch.no_grad():
        if method == "default" and fresh is None:
            _reset_modules(owners, ids)
            return
        for prefix, m in owners:
            own = list(m.named_parameters(recurse=False))
            for pname, p in own:
                if id(p) not in ids:
                    continue
                if fresh is not None:
                    p.copy_(fresh[_join(prefix, pname)])
                elif _is_norm(m):
                    p.fill_(1.0 if "weight" in pname else 0.0)
                elif pname.endswith("bias"):
                    p.zero_()
                elif method == "normal":
                    p.normal_(0.0, scale)
                else:
                    p.uniform_(-scale, scale)
            if not all(id(p) in ids for _, p in own):
                continue  # a module shared with another group: its buffers are not ours alone
            if fresh is not None:
                for bname, b in m.named_buffers(recurse=False):
                    if _join(prefix, bname) in fresh:
                        b.copy_(fresh[_join(prefix, bname)])
            elif isinstance(m, nn.modules.batchnorm._NormBase):
                m.reset_running_stats()


def _reset_modules(owners: list[tuple[str, nn.Module]], ids: set[int]) -> None:
    """Fallback for unknown adapters: each layer's own ``reset_parameters()``; tensors of those
    layers outside the target groups are put back."""
    missed = []
    for prefix, m in owners:
        keep = {n: p.detach().clone() for n, p in m.named_parameters(recurse=False)}
        reset = getattr(m, "reset_parameters", None)
        if not callable(reset):
            missed += [_join(prefix, n) for n, _ in m.named_parameters(recurse=False)]
            continue
        reset()
        for n, p in m.named_parameters(recurse=False):
            if id(p) not in ids:
                p.copy_(keep[n])
    if missed:
        raise ValueError(f"no way to re-initialize {missed[:5]}: their modules have no init")


def reinit_top(
    backbone: Backbone, k: int, method: ReinitMethod = "default", scale: float = 0.02
) -> list[str]:
    """Keep the bottom body groups pretrained and re-initialize the top ``k`` (0 = none).

    Zhang, Wu, Katiyar, Weinberger and Artzi (2021), "Revisiting Few-sample BERT Fine-tuning"
    (ICLR 2021): re-initializing the top layers of a pretrained BERT with its original init makes
    few-sample fine-tuning faster and more stable. Returns the re-initialized groups' names.
    """
    body = [g.name for g in _body_groups(backbone)]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(body):
        raise ValueError(f"k must be an integer between 0 and {len(body)} (body groups), got {k!r}")
    names = body[len(body) - k :] if k else []
    reinit_groups(backbone, names, method, scale)
    return names


def random_init(backbone: Backbone, method: ReinitMethod = "default", scale: float = 0.02) -> None:
    """The whole body from scratch: no pretrained weight survives (the head is left as is).

    The no-transfer baseline; He, Girshick and Dollár (2019), "Rethinking ImageNet Pre-training"
    (ICCV 2019) show when it catches up with fine-tuning. ``default`` is the architecture's own
    init; ``normal`` / ``uniform`` use ``scale`` (norms: weight 1, bias 0; biases 0).
    """
    reinit_groups(backbone, [g.name for g in _body_groups(backbone)], method, scale)


def _head_linear(head: Backbone | Head | nn.Linear) -> nn.Linear:
    if isinstance(head, Backbone):
        head = head.model.head
    fc = head.fc if isinstance(head, Head) else head
    if not isinstance(fc, nn.Linear):
        raise TypeError(f"expected a Backbone, Head or nn.Linear, got {type(head).__name__}")
    return fc


def init_head(
    head: Backbone | Head | nn.Linear, method: HeadInit = "xavier_uniform", std: float = 0.01
) -> None:
    """Initialize the new head's linear layer in place; its bias is set to zero.

    ``xavier_uniform``: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); ``xavier_normal``: std
    sqrt(2 / (fan_in + fan_out)) (Glorot and Bengio (2010), "Understanding the difficulty of
    training deep feedforward neural networks", AISTATS). ``kaiming_uniform``: U(-a, a),
    a = sqrt(6 / fan_in); ``kaiming_normal``: std sqrt(2 / fan_in) (He, Zhang, Ren and Sun (2015),
    "Delving Deep into Rectifiers", ICCV; ReLU gain, fan-in mode). ``normal``: N(0, std²).
    ``zeros``: all zeros, so every class starts with the same logit.
    """
    fc = _head_linear(head)
    w = fc.weight
    with torch.no_grad():
        if method == "xavier_uniform":
            nn.init.xavier_uniform_(w)
        elif method == "xavier_normal":
            nn.init.xavier_normal_(w)
        elif method == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu")
        elif method == "kaiming_normal":
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
        elif method == "normal":
            if not std > 0:
                raise ValueError(f"std must be positive, got {std}")
            nn.init.normal_(w, 0.0, std)
        elif method == "zeros":
            nn.init.zeros_(w)
        else:
            raise ValueError(f"head init must be one of {', '.join(HEAD_INITS)}, got {method!r}")
        if fc.bias is not None:
            fc.bias.zero_()


def fit_head_linear_probe(
    head: Backbone | Head | nn.Linear,
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> dict[str, float]:
    """Initialize the head from a logistic regression fitted on frozen features.

    ``features`` (N, D) are the body's outputs (``model.features(**inputs)``) for the training set,
    computed once; ``targets`` (N,) their class indices. The fit is full-batch L-BFGS on the mean
    cross-entropy plus ``l2 / 2 · ||W||²``, on standardized features, folded back so that the head
    takes the raw features. This is the "LP" of LP-FT done in one shot: Kumar, Raghunathan, Jones,
    Ma and Liang (2022), "Fine-Tuning can Distort Pretrained Features and Underperform
    Out-of-Distribution" (ICLR 2022). Deterministic (it starts from zeros). Returns the fitted
    head's training ``loss`` (cross-entropy) and ``accuracy``.
    """
    fc = _head_linear(head)
    x = features.detach().float()
    y = targets.detach().long().to(x.device)
    classes, width = fc.out_features, fc.in_features
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"features must be (N, {width}), got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"targets must be ({x.shape[0]},), got {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"targets must be class indices in [0, {classes})")
    if fc.bias is None:
        raise ValueError("the head's linear layer needs a bias for a linear-probe fit")
    if not l2 >= 0 or max_iter < 1:
        raise ValueError(f"need l2 >= 0 and max_iter >= 1, got l2={l2}, max_iter={max_iter}")
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)  # a constant feature gets weight 0 (by L2)
    z = (x - mean) / std
    weight = torch.zeros(classes, width, device=x.device, requires_grad=True)
    bias = torch.zeros(classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        # logits = ((x - mean) / std) Wᵀ + b = x (W / std)ᵀ + (b - (W / std) · mean)
        w_raw = weight / std
        b_raw = bias - w_raw @ mean
        fc.weight.copy_(w_raw.to(fc.weight))
        fc.bias.copy_(b_raw.to(fc.bias))
        logits = x @ w_raw.T + b_raw
        return {
            "loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(1) == y).float().mean()),
        }


__all__ = [
    "HEAD_INITS",
    "fit_head_linear_probe",
    "init_head",
    "random_init",
    "reinit_groups",
    "reinit_top",
]
