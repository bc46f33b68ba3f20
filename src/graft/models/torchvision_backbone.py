"""torchvision classification models (ResNet, MobileNet, EfficientNet, ...): hub weights online,
random initialisation offline.

Groups: the leading single layers (conv1, bn1) form the stem; each later child with parameters is
a group, with ``features``-style ``Sequential`` containers split into their children.
"""

from __future__ import annotations

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _replace_classifier(net: nn.Module) -> int:
    """Swap the last ``nn.Linear`` of the network for an identity; return its input width."""
    last: tuple[nn.Module, str, nn.Linear] | None = None
    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, child_name, child)
    if last is None:
        raise DataError(f"{type(net).__name__} has no linear classifier to replace")
    parent, child_name, linear = last
    setattr(parent, child_name, nn.Identity())
    return linear.in_features


def torchvision_groups(net: nn.Module, prefix: str) -> list[LayerGroup]:
    units: list[tuple[str, nn.Module]] = []
    for name, child in net.named_children():
        if isinstance(child, nn.Sequential) and name in {"features", "layers"}:
            units += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            units.append((name, child))
    groups: list[LayerGroup] = []
    stem: list[tuple[str, nn.Parameter]] = []
    for name, module in units:
        params = [(f"{prefix}{name}.{n}", p) for n, p in module.named_parameters()]
        if not params:
            continue
        single_layer = not any(True for _ in module.children())
        if single_layer and not groups:
            stem += params  # conv1, bn1 before the first stage
            continue
        if stem and not groups:
            groups.append(LayerGroup("stem", stem))
        groups.append(LayerGroup(name, params))
    if stem and not groups:
        groups.append(LayerGroup("stem", stem))
    return groups


def _torchvision_models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


@register_family(
    "torchvision",
    modality="image",
    claims=((20, lambda name: name in _torchvision_models()),),
    known=_torchvision_models,
)
def build_torchvision(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = True,
    head_dropout: float = 0.0,
    image_size: int | None = None,
) -> Backbone:
    """A torchvision classifier with a new head; ``pretrained`` takes the default weights from
    the hub (needs the network)."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UsageError(
            f"backbone.name: unknown torchvision classification model {name!r}",
            hint="see torchvision.models.list_models(module=torchvision.models)",
        )
    try:
        net = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except Exception as e:
        raise DataError(
            f"could not load torchvision weights for {name!r}: {e}",
            hint="check the network, or set backbone.pretrained=false",
        ) from None
    in_features = _replace_classifier(net)
    model = GraftModel(ImageBody(net), Head(in_features, num_classes, head_dropout), "image")
    groups = torchvision_groups(net, "body.net.")
    groups.append(LayerGroup("head", list(model.head.named_parameters(prefix="head"))))
    spec = {
        "source": "torchvision",
        "name": name,
        "num_classes": num_classes,
        "head_dropout": head_dropout,
    }
    preprocess = ImagePreprocess(image_size or 224, IMAGENET_MEAN, IMAGENET_STD)
    return Backbone(model, groups, preprocess, spec, is_cnn=True)
