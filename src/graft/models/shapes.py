"""The shapes of a structurally pruned model, recorded as JSON and applied to a rebuilt one.

A saved model is rebuilt from its backbone spec, which describes the *unpruned* architecture; a
pruned model has smaller layers. :func:`pruned_shapes` records, per module name, the shape
attributes that differ from a reference (the model before pruning); the record goes into
``graft_model.json`` under ``"shapes"``. :func:`apply_shapes` resizes the freshly rebuilt modules
(their attributes, and their parameters and buffers as empty tensors of the new shapes), so that
``load_state_dict(strict=True)`` then fills them. The parameters are resized in place (the same
``nn.Parameter`` objects), so a backbone's layer groups still hold them.

JSON only, never a pickle (torch-pruning's own ``tp.state_dict`` pickles whole attribute
dictionaries).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The shape attributes of each resizable module kind, in the order they are applied.
CONV_FIELDS = ("in_channels", "out_channels", "groups")
LINEAR_FIELDS = ("in_features", "out_features")
NORM_FIELDS = ("num_features",)
LAYER_NORM_FIELDS = ("normalized_shape",)
# A Hugging Face self-attention module (BERT-like): its Linear layers carry their own shapes;
# these are the attributes other code reads (all_head_size = heads x head size).
ATTENTION_FIELDS = ("num_attention_heads", "all_head_size")

Shapes = dict[str, dict[str, Any]]


def _is_attention(module: nn.Module) -> bool:
    return all(
        isinstance(getattr(module, f, None), int)
        for f in (*ATTENTION_FIELDS, "attention_head_size")
    )


def shape_fields(module: nn.Module) -> tuple[str, ...]:
    """The shape attributes graft records for ``module`` (empty: a kind it does not resize)."""
    if isinstance(module, nn.Conv2d):
        return CONV_FIELDS
    if isinstance(module, nn.Linear):
        return LINEAR_FIELDS
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return NORM_FIELDS
    if isinstance(module, nn.LayerNorm):
        return LAYER_NORM_FIELDS
    if _is_attention(module):
        return ATTENTION_FIELDS
    return ()


def module_shapes(model: nn.Module) -> Shapes:
    """Every resizable module's shape attributes, by module name (JSON-serialisable)."""
    out: Shapes = {}
    for name, module in model.named_modules():
        fields = shape_fields(module)
        if fields:
            out[name] = {f: _jsonable(getattr(module, f)) for f in fields}
    return out


def pruned_shapes(model: nn.Module, reference: Shapes) -> Shapes:
    """The shape attributes of ``model`` that differ from ``reference`` (the
    :func:`module_shapes` of the model before it was pruned), by module name."""
    out: Shapes = {}
    for name, now in module_shapes(model).items():
        before = reference.get(name, {})
        changed = {f: v for f, v in now.items() if before.get(f) != v}
        if changed:
            out[name] = changed
    return out


def apply_shapes(model: nn.Module, shapes: Any) -> None:
    """Resize the modules of a freshly rebuilt ``model`` to ``shapes`` (from
    :func:`pruned_shapes`): set their shape attributes and replace their parameters and buffers
    by empty tensors of the new shapes (the weights are loaded next). A malformed record raises
    ``ValueError`` or ``TypeError`` saying what is wrong."""
    if not isinstance(shapes, dict):
        raise TypeError(f"shapes must be a mapping of module names, not {type(shapes).__name__}")
    modules = dict(model.named_modules())
    for name, attrs in shapes.items():
        if name not in modules:
            raise ValueError(f"shapes: the model has no module {name!r}")
        module = modules[name]
        fields = shape_fields(module)
        if not isinstance(attrs, dict) or not attrs:
            raise TypeError(f"shapes: {name!r}: expected a non-empty mapping of attributes")
        unknown = [k for k in attrs if k not in fields]
        if unknown:
            raise ValueError(
                f"shapes: {name!r} ({type(module).__name__}) has no resizable attribute "
                f"{unknown[0]!r}"
            )
        for field in fields:
            if field in attrs:
                setattr(module, field, _checked(name, field, attrs[field]))
        _resize(name, module)


def _checked(name: str, field: str, value: Any) -> Any:
    """A positive int (or, for ``normalized_shape``, a tuple of them)."""
    if field == "normalized_shape":
        if not isinstance(value, list) or not value:
            raise TypeError(f"shapes: {name!r}: normalized_shape must be a list of sizes")
        return tuple(_checked(name, "size", v) for v in value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"shapes: {name!r}: {field} must be a positive integer, not {value!r}")
    return value


def _resize(name: str, module: nn.Module) -> None:
    """Parameters and buffers of ``module`` resized to its (new) shape attributes."""
    if isinstance(module, nn.Conv2d):
        if module.in_channels % module.groups or module.out_channels % module.groups:
            raise ValueError(
                f"shapes: {name!r}: {module.in_channels} in and {module.out_channels} out "
                f"channels do not divide into {module.groups} groups"
            )
        per_group = module.in_channels // module.groups
        _set(module, "weight", (module.out_channels, per_group, *module.kernel_size))
        _set(module, "bias", (module.out_channels,))
    elif isinstance(module, nn.Linear):
        _set(module, "weight", (module.out_features, module.in_features))
        _set(module, "bias", (module.out_features,))
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _set(module, attr, (module.num_features,))
    elif isinstance(module, nn.LayerNorm):
        for attr in ("weight", "bias"):
            _set(module, attr, tuple(module.normalized_shape))
    elif _is_attention(module):
        att: Any = module
        heads, size, head_size = att.num_attention_heads, att.all_head_size, att.attention_head_size
        if size != heads * head_size:
            raise ValueError(
                f"shapes: {name!r}: all_head_size {size} is not {heads} heads x {head_size}"
            )


def _set(module: nn.Module, attr: str, shape: tuple[int, ...]) -> None:
    """Replace ``module.attr`` (a parameter or buffer, if present) by an empty tensor of
    ``shape``; a parameter keeps its identity (``.data`` is swapped)."""
    current = getattr(module, attr, None)
    if not isinstance(current, torch.Tensor):
        return
    fresh = torch.empty(shape, dtype=current.dtype, device=current.device)
    if isinstance(current, nn.Parameter):
        current.data = fresh
    else:
        setattr(module, attr, fresh)  # a registered buffer stays registered


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list | torch.Size):
        return [int(v) for v in value]
    return int(value)
