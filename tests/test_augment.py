"""Augmentation presets, MixUp/CutMix, and their effect on the pipeline and the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graft.augment import PRESETS, build_augment, build_batch_mix
from graft.data.types import Examples
from graft.errors import UsageError
from graft.models.base import ImagePreprocess
from graft.pipeline import Loaders


def _images(n: int = 8) -> Examples:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 20, 20), dtype=np.uint8)
    return Examples("image", pixels, [str(i % 2) for i in range(n)], "synthetic")


PREP = ImagePreprocess(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
def test_presets_are_random_per_image_and_keep_the_shape(preset: str) -> None:
    torch.manual_seed(0)
    transform = build_augment(preset, 16)
    assert transform is not None
    loaders = Loaders(PREP, None, False, 0, 0, augment=transform)
    data = loaders.dataset(_images(), np.zeros(8, dtype=np.int64), train=True)
    first = data.__getitems__(list(range(8)))["inputs"]["pixel_values"]
    second = data.__getitems__(list(range(8)))["inputs"]["pixel_values"]
    assert first.shape == (8, 3, 16, 16)
    assert not torch.equal(first, second)  # a new draw each time
    plain = Loaders(PREP, None, False, 0, 0).dataset(_images(), None)
    assert not torch.equal(first, plain.__getitems__(list(range(8)))["inputs"]["pixel_values"])


def test_evaluation_batches_are_never_augmented() -> None:
    loaders = Loaders(PREP, None, False, 0, 0, augment=build_augment("strong", 16))
    data = loaders.dataset(_images(), None, train=False)
    a = data.__getitems__([0, 1])["inputs"]["pixel_values"]
    b = data.__getitems__([0, 1])["inputs"]["pixel_values"]
    assert torch.equal(a, b)


def test_mixup_gives_class_probabilities() -> None:
    torch.manual_seed(0)
    mix = build_batch_mix(0.4, 0.0, num_classes=2)
    loaders = Loaders(PREP, None, False, 0, 0, mix=mix)
    assert loaders.random
    targets = np.array([0, 1] * 4, dtype=np.int64)
    batch = loaders.dataset(_images(), targets, train=True).__getitems__(list(range(8)))
    y = batch["targets"]
    assert y.shape == (8, 2) and y.dtype == torch.float32
    assert torch.allclose(y.sum(1), torch.ones(8))
    assert ((y > 0) & (y < 1)).any()  # actually mixed


def test_no_mix_when_alphas_are_zero() -> None:
    assert build_batch_mix(0.0, 0.0, 3) is None
    assert build_augment("none", 16) is None


def test_unknown_preset_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"data.augment"):
        build_augment("wild", 16)
