"""Arithmetic on the weights of models of one architecture: checks that two saved models can be
mixed at all, linear interpolation of two state dicts, and their uniform average.

Floating-point tensors are mixed, BatchNorm running statistics included (they are averages of
activations, and an interpolated network's activations lie between its ends'). Integer tensors
(BatchNorm's ``num_batches_tracked``, position ids) are counts or indexes with no meaningful
mean: they are taken from one model, the fine-tuned end or the soup's best ingredient.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from graft.artifact import LoadedModel
from graft.errors import UsageError

State = Mapping[str, torch.Tensor]
# BatchNorm running statistics of a mixed model: mixed like the weights, or measured again.
BnStats = Literal["mix", "recompute"]


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two JSON-like values differ (the first few matter for a message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(value)"]


def _plain(value: Any) -> Any:
    """A JSON round trip: tuples become lists, so that equal specs compare equal."""
    return json.loads(json.dumps(value, default=str))


def check_same_model(models: Sequence[tuple[str, LoadedModel]]) -> None:
    """Refuse to mix models that are not the same network with the same outputs: another label
    map, preprocessing, architecture (the backbone spec, Hugging Face config included), or a
    weight of another name or shape. ``models`` are (how the user named it, the model)."""
    (first_name, first), rest = models[0], models[1:]
    reference = first.backbone.model.state_dict()
    for name, other in rest:
        what = f"{first_name} and {name}"
        if list(other.label_map.names) != list(first.label_map.names):
            raise UsageError(
                f"{what} have different label maps: {list(first.label_map.names)} and "
                f"{list(other.label_map.names)}",
                hint="mix only models trained for the same classes",
            )
        for part, a, b in (
            (
                "preprocessing",
                first.backbone.preprocess.to_dict(),
                other.backbone.preprocess.to_dict(),
            ),
            ("architecture", first.backbone.spec, other.backbone.spec),
        ):
            keys = _differing_keys(_plain(a), _plain(b))
            # The head's dropout rate is a training setting; it does not change the weights.
            keys = [k for k in keys if k != "head_dropout"]
            if keys:
                raise UsageError(
                    f"{what} differ in {part} ({', '.join(keys[:4])}"
                    + (" ..." if len(keys) > 4 else "")
                    + ")",
                    hint="mix only models of the same backbone, fine-tuned from the same start",
                )
        state = other.backbone.model.state_dict()
        for key, tensor in reference.items():
            if key not in state or state[key].shape != tensor.shape:
                raise UsageError(f"{what} differ in weight {key}: not the same architecture")


def interpolate_states(base: State, tuned: State, alpha: float) -> dict[str, torch.Tensor]:
    """θ(α) = (1 − α)·θ_base + α·θ_tuned for every floating-point tensor; integer tensors are
    ``tuned``'s. Written as that sum (not ``torch.lerp``) so that α = 0 and α = 1 give the two
    ends' tensors exactly."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out: dict[str, torch.Tensor] = {}
    for key, value in tuned.items():
        if value.is_floating_point():
            out[key] = (1.0 - alpha) * base[key].to(value.dtype) + alpha * value
        else:
            out[key] = value.clone()
    return out


def average_states(states: Sequence[State]) -> dict[str, torch.Tensor]:
    """The uniform average of ``states`` (float tensors summed in float64, then cast back);
    integer tensors are the first state's."""
    if not states:
        raise ValueError("no state to average")
    out: dict[str, torch.Tensor] = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            total = torch.zeros(value.shape, dtype=torch.float64)
            for state in states:
                total += state[key].to(torch.float64)
            out[key] = (total / len(states)).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s state dict (safe to keep while the model changes)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
