"""Backbone adapters: resolve a name to a family, build the model with a new head.

Families register themselves by decorator (:func:`graft.models.base.register_family`); importing
this package imports all of them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from graft.errors import UsageError
from graft.models import hf_backbone, timm_backbone, torchvision_backbone
from graft.models.base import (
    Backbone,
    GraftModel,
    Head,
    ImagePreprocess,
    LayerGroup,
    TextPreprocess,
    check_group_coverage,
    families,
    family,
    set_dropout,
)

__all__ = [
    "Backbone",
    "GraftModel",
    "Head",
    "ImagePreprocess",
    "LayerGroup",
    "TextPreprocess",
    "build_backbone",
    "families",
    "rebuild",
    "resolve_source",
]

_PREFIXES = ("timm:", "hf:", "torchvision:")


def resolve_source(name: str, source: str = "auto") -> tuple[str, str]:
    """(family, model name) for a backbone name such as ``tf_efficientnet_lite0``, ``minilm``,
    ``timm:resnet18``, ``torchvision:resnet18``, ``hf:bert-base-uncased`` or a local HF folder."""
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return prefix[:-1], name[len(prefix) :]
    if source != "auto":
        return source, name
    import timm
    import torchvision

    if name.lower() in hf_backbone.OFFLINE_ALIASES or (Path(name) / "config.json").is_file():
        return "hf", name
    if timm.is_model(name):
        return "timm", name
    if name in torchvision.models.list_models(module=torchvision.models):
        return "torchvision", name
    if "/" in name and not Path(name).exists():
        return "hf", name  # a hub id such as bert-base-uncased's org/name form
    known = [*timm.list_models(), *torchvision.models.list_models(), "minilm"]
    close = difflib.get_close_matches(name, known, n=3)
    raise UsageError(
        f"backbone.name: unknown backbone {name!r}",
        hint=(f"did you mean {', '.join(close)}? " if close else "")
        + "use a timm or torchvision model name, minilm, or hf:<hub id or folder>",
    )


def build_backbone(
    name: str,
    *,
    num_classes: int,
    source: str = "auto",
    pretrained: bool = True,
    head_dropout: float = 0.0,
    pooling: str = "mean",
    image_size: int | None = None,
    max_length: int = 128,
    dropout: float | None = None,
    trust_remote_code: bool = False,
) -> Backbone:
    """Build a backbone with a new ``num_classes`` head, and check its layer groups.
    ``dropout`` sets the rate of every dropout layer inside the body (None: the model's own);
    ``trust_remote_code`` lets a Hugging Face model run the Python code it ships (off unless the
    config says so)."""
    fam, model_name = resolve_source(name, source)
    backbone = family(fam)(
        model_name,
        num_classes=num_classes,
        pretrained=pretrained,
        head_dropout=head_dropout,
        pooling=pooling,
        image_size=image_size,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
    )
    check_group_coverage(backbone.model, backbone.groups)
    if dropout is not None:
        set_dropout(backbone.model.body, dropout)
    return backbone


def rebuild(
    spec: dict[str, Any], preprocess: dict[str, Any], tokenizer_dir: Path | None
) -> Backbone:
    """The architecture of a saved model, without pretrained weights (they are loaded after)."""
    kwargs = {k: v for k, v in spec.items() if k not in {"source", "name"}}
    extra: dict[str, Any] = {}
    if preprocess.get("kind") == "image":
        extra["image_size"] = preprocess["image_size"]
    else:
        extra["max_length"] = preprocess["max_length"]
        extra["tokenizer_dir"] = str(tokenizer_dir) if tokenizer_dir else None
    backbone = family(spec["source"])(spec["name"], pretrained=False, **kwargs, **extra)
    if isinstance(backbone.preprocess, ImagePreprocess):
        # The saved normalisation wins over the architecture's default.
        backbone.preprocess = ImagePreprocess(
            preprocess["image_size"], tuple(preprocess["mean"]), tuple(preprocess["std"])
        )
    check_group_coverage(backbone.model, backbone.groups)
    return backbone


# Keep the family modules referenced: importing them is what registers them.
_REGISTERED = (hf_backbone, timm_backbone, torchvision_backbone)
