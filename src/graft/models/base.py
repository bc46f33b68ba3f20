"""What every backbone adapter produces: a model, its ordered layer groups, its preprocessing.

The one idea of graft (docs/architecture.md) is that a strategy is a plan over layer groups; this
module holds the group type, the classifier wrapper every adapter returns, and the registry of
backbone families.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from graft.errors import UsageError

Modality = Literal["image", "text"]


class Head(nn.Module):
    """The new classification head: dropout, then one linear layer."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class ImageBody(nn.Module):
    """An image network without its classifier (pooled features out), taking ``pixel_values``
    by name like every graft body."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


class GraftModel(nn.Module):
    """A backbone body that maps inputs to pooled features, and a head on top.

    ``forward(**inputs)`` takes the batch's model inputs by name (``pixel_values`` for images;
    ``input_ids`` and ``attention_mask`` for text) and returns logits.
    """

    def __init__(self, body: nn.Module, head: Head, modality: Modality) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.modality = modality

    def features(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.body(**inputs)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(**inputs))


@dataclass
class LayerGroup:
    """A named, ordered slice of the model's parameters (bottom to top; the head is last)."""

    name: str
    params: list[tuple[str, nn.Parameter]]

    @property
    def size(self) -> int:
        return sum(p.numel() for _, p in self.params)


@dataclass
class ImagePreprocess:
    """How raw images become model inputs; saved with the model and reused at predict time."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "channels": self.channels,
        }


@dataclass
class TextPreprocess:
    """How raw text becomes model inputs: the backbone's tokenizer and a maximum length."""

    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", "max_length": self.max_length}


@dataclass
class Backbone:
    """An adapter's product: the model with its new head, its groups, and how to feed it.

    ``spec`` is what :func:`graft.models.rebuild` needs to recreate the architecture without
    pretrained weights (to load a saved model); ``tokenizer`` is set for text backbones;
    ``is_cnn`` decides whether channels_last pays off.
    """

    model: GraftModel
    groups: list[LayerGroup]
    preprocess: ImagePreprocess | TextPreprocess
    spec: dict[str, Any]
    tokenizer: Any = None
    is_cnn: bool = False
    notes: list[str] = field(default_factory=list)
    # The shape attributes of the layers a structured pruning made smaller than ``spec``
    # builds (graft.models.shapes): saved with the model and applied when it is loaded.
    shapes: dict[str, dict[str, Any]] | None = None

    @property
    def modality(self) -> Modality:
        return self.model.modality

    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]


def check_group_coverage(model: nn.Module, groups: list[LayerGroup]) -> None:
    """Every parameter of ``model`` is in exactly one group, and the head group is last."""
    seen: dict[int, str] = {}
    for g in groups:
        for name, p in g.params:
            if id(p) in seen:
                raise AssertionError(f"parameter {name} is in groups {seen[id(p)]} and {g.name}")
            seen[id(p)] = g.name
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise AssertionError(f"parameters in no group: {missing[:5]}")
    if not groups or groups[-1].name != "head":
        raise AssertionError("the last layer group must be the head")
    if len({g.name for g in groups}) != len(groups):
        raise AssertionError(f"duplicate group names: {[g.name for g in groups]}")


def set_dropout(module: nn.Module, p: float) -> int:
    """Set the rate of every ``nn.Dropout`` inside ``module``; returns how many were set.
    (Dropout costs 25-35% of a BERT training step on a 2-core CPU: 0 is a real speed option.)"""
    layers = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    for m in layers:
        m.p = p
    return len(layers)


BackboneBuilder = Callable[..., Backbone]
NameTest = Callable[[str], bool]

# Builder options beyond (name, num_classes, pretrained, head_dropout) by modality, and the config
# field each comes from: an option of the other modality is refused, naming that field.
MODALITY_OPTIONS: dict[Modality, tuple[str, ...]] = {
    "image": ("image_size",),
    "text": ("pooling", "max_length", "trust_remote_code", "keep_layers"),
}
OPTION_FIELDS = {
    "image_size": "data.image_size",
    "pooling": "backbone.pooling",
    "max_length": "data.max_length",
    "trust_remote_code": "backbone.trust_remote_code",
    "keep_layers": "backbone.keep_layers",
}


@dataclass(frozen=True)
class Family:
    """A backbone family, as registered: its builder, the input it takes, how it recognises a
    bare model name, and the names it knows (for "did you mean")."""

    name: str  # also its prefix in backbone names: ``timm:resnet18``
    modality: Modality
    build: BackboneBuilder
    claims: tuple[tuple[int, NameTest], ...]  # (priority, test): the lowest matching wins
    known: Callable[[], list[str]]

    @property
    def prefix(self) -> str:
        return f"{self.name}:"


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    modality: Modality,
    claims: tuple[tuple[int, NameTest], ...] = (),
    known: Callable[[], list[str]] = list,
) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a backbone family's builder, in one place: its name (and ``name:`` prefix), its
    modality, the tests that claim a bare model name (``(priority, test)``; tests run lowest
    priority first, lazily, so a family's library is imported only when its turn comes) and the
    names it knows. A second registration of a name is a bug."""

    def decorate(fn: BackboneBuilder) -> BackboneBuilder:
        if name in _FAMILIES:
            raise ValueError(f"backbone family {name!r} is already registered")
        _FAMILIES[name] = Family(name, modality, fn, claims, known)
        return fn

    return decorate


def family(name: str) -> Family:
    """The registered family ``name`` (a :class:`UsageError` naming the known ones if none)."""
    if name not in _FAMILIES:
        raise UsageError(
            f"backbone.source: unknown backbone source {name!r}",
            hint=f"known: auto, {', '.join(sorted(_FAMILIES))}",
        )
    return _FAMILIES[name]


def families() -> list[str]:
    return sorted(_FAMILIES)


def all_families() -> list[Family]:
    return [_FAMILIES[n] for n in families()]
