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
    MODALITY_OPTIONS,
    OPTION_FIELDS,
    Backbone,
    GraftModel,
    Head,
    ImagePreprocess,
    LayerGroup,
    TextPreprocess,
    all_families,
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
    "check_backbone_name",
    "families",
    "rebuild",
    "resolve_source",
]


def resolve_source(name: str, source: str = "auto") -> tuple[str, str]:
    """(family, model name) for a backbone name such as ``tf_efficientnet_lite0``, ``minilm``,
    ``timm:resnet18``, ``torchvision:resnet18``, ``hf:bert-base-uncased`` or a local HF folder:
    a family's prefix first, then ``source``, then the families' own claims in priority order."""
    for fam in all_families():
        if name.startswith(fam.prefix):
            return fam.name, name[len(fam.prefix) :]
    if source != "auto":
        return family(source).name, name
    claims = sorted((prio, fam.name, test) for fam in all_families() for prio, test in fam.claims)
    for _, fam_name, test in claims:
        if test(name):
            return fam_name, name
    known = [n for fam in all_families() for n in fam.known()]
    close = difflib.get_close_matches(name, known, n=3)
    prefixes = ", ".join(f"{f.prefix}<name>" for f in all_families())
    raise UsageError(
        f"backbone.name: unknown backbone {name!r}",
        hint=(f"did you mean {', '.join(close)}? " if close else "")
        + f"use a known model name or a family prefix ({prefixes})",
    )


def check_backbone_name(name: str, source: str = "auto") -> None:
    """What can be said of a backbone name before anything is loaded (so before the data is
    read): its family is known, and a Hugging Face name written as a path is a folder."""
    fam, model_name = resolve_source(name, source)
    looks_like_path = Path(model_name).is_absolute() or model_name.startswith(("./", "../", "~"))
    if fam == "hf" and looks_like_path and not Path(model_name).expanduser().is_dir():
        raise UsageError(
            f"backbone.name: {name}: no such folder",
            hint="a local Hugging Face model is a folder with config.json in it",
        )


def build_backbone(
    name: str,
    *,
    num_classes: int,
    source: str = "auto",
    pretrained: bool = True,
    head_dropout: float = 0.0,
    pooling: str | None = None,
    image_size: int | None = None,
    max_length: int | None = None,
    dropout: float | None = None,
    trust_remote_code: bool = False,
    keep_layers: list[int] | None = None,
) -> Backbone:
    """Build a backbone with a new ``num_classes`` head, and check its layer groups.

    Options of the other modality are refused with the config field named: ``pooling``,
    ``max_length``, ``trust_remote_code`` and ``keep_layers`` apply to text backbones,
    ``image_size`` to image ones (None/False: not given). ``dropout`` sets the rate of every
    dropout layer inside the body (None: the model's own); ``trust_remote_code`` lets a Hugging
    Face model run the Python code it ships (off unless the config says so); ``keep_layers``
    keeps those transformer layers of the encoder, in order, and drops the others (a smaller
    student initialised from them)."""
    fam_name, model_name = resolve_source(name, source)
    fam = family(fam_name)
    given = {
        "image_size": image_size,
        "pooling": pooling,
        "max_length": max_length,
        "trust_remote_code": trust_remote_code or None,
        "keep_layers": keep_layers,
    }
    options = {k: v for k, v in given.items() if v is not None}
    wrong = [k for k in options if k not in MODALITY_OPTIONS[fam.modality]]
    if wrong:
        fields = ", ".join(OPTION_FIELDS[k] for k in wrong)
        raise UsageError(
            f"{fields}: does not apply to {fam.modality} backbones ({name} is one)",
            hint="remove it from the config",
        )
    backbone = fam.build(
        model_name,
        num_classes=num_classes,
        pretrained=pretrained,
        head_dropout=head_dropout,
        **options,
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
    backbone = family(spec["source"]).build(spec["name"], pretrained=False, **kwargs, **extra)
    if isinstance(backbone.preprocess, ImagePreprocess):
        # The saved normalisation wins over the architecture's default.
        backbone.preprocess = ImagePreprocess(
            preprocess["image_size"], tuple(preprocess["mean"]), tuple(preprocess["std"])
        )
    check_group_coverage(backbone.model, backbone.groups)
    return backbone


# Keep the family modules referenced: importing them is what registers them.
_REGISTERED = (hf_backbone, timm_backbone, torchvision_backbone)
