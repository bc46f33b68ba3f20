"""Image augmentation presets (torchvision transforms v2), and MixUp / CutMix.

Per-image transforms run on float images in [0, 1] already at the model's input size, before
normalisation; MixUp/CutMix mix whole training batches and turn the targets into class
probabilities. Any of them makes the input pipeline random, which switches the feature cache off.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from graft.errors import UsageError

PRESETS = ("none", "light", "strong", "randaugment", "trivialaugment")

ImageTransform = Callable[[torch.Tensor], torch.Tensor]
BatchMix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def build_augment(preset: str, image_size: int) -> ImageTransform | None:
    """The per-image transform of a preset (None for ``none``).

    light: random resized crop (scale 0.8–1) and horizontal flip.
    strong: random resized crop (0.5–1), flip, colour jitter, TrivialAugment (Müller & Hutter 2021).
    randaugment: flip + RandAugment (Cubuk et al. 2020). trivialaugment: flip + TrivialAugmentWide.
    """
    from torchvision.transforms import v2

    crop = {"light": 0.8, "strong": 0.5}
    if preset == "none":
        return None
    flip = v2.RandomHorizontalFlip()
    if preset == "light":
        steps = [v2.RandomResizedCrop(image_size, scale=(crop["light"], 1.0), antialias=True), flip]
    elif preset == "strong":
        steps = [
            v2.RandomResizedCrop(image_size, scale=(crop["strong"], 1.0), antialias=True),
            flip,
            v2.ColorJitter(0.3, 0.3, 0.3),
            v2.TrivialAugmentWide(),
        ]
    elif preset == "randaugment":
        steps = [flip, v2.RandAugment()]
    elif preset == "trivialaugment":
        steps = [flip, v2.TrivialAugmentWide()]
    else:
        raise UsageError(f"data.augment: unknown preset {preset!r}", hint=f"one of {PRESETS}")
    return v2.Compose(steps)


def build_batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> BatchMix | None:
    """MixUp (Zhang et al. 2018) and/or CutMix (Yun et al. 2019) on a training batch; with both,
    one of the two is chosen at random for each batch."""
    from torchvision.transforms import v2

    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def apply_per_image(images: torch.Tensor, transform: ImageTransform) -> torch.Tensor:
    """Each image of a (B, C, H, W) batch through its own random draw (a v2 transform applied to
    the batch at once would draw one set of parameters for all)."""
    return torch.stack([transform(img) for img in images])
