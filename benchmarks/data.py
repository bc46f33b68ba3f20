"""The benchmarks' data: the same real examples for graft and every baseline.

Fashion-MNIST subsets are drawn with a fixed seed and resized once (antialiased bilinear, as
graft does) to the benchmark's image size; VADER movie snippets are split with graft's own
seeded stratified splitter, so graft and the baselines train and test on identical examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ImageSet:
    """uint8 images (N, S, S) already at the benchmark size, integer labels, class names."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]

    def examples(self):  # graft Examples (label names), for graft's own pipeline
        from graft.data.types import Examples

        return Examples(
            "image", self.images, [self.names[i] for i in self.labels], "fashion_mnist:bench"
        )

    def normalized(self, mean: tuple, std: tuple) -> torch.Tensor:
        """Float (N, 3, S, S), scaled and normalised: what a hand-written loop would precompute."""
        x = torch.from_numpy(self.images).unsqueeze(1).float().div_(255.0).expand(-1, 3, -1, -1)
        m = torch.tensor(mean).view(1, -1, 1, 1)
        s = torch.tensor(std).view(1, -1, 1, 1)
        return ((x - m) / s).contiguous()


def fashion_mnist(split: str, n: int, size: int, seed: int = 0) -> ImageSet:
    """A seeded random subset of ``n`` Fashion-MNIST images, resized to ``size``×``size``."""
    from graft.data import load_examples

    ex = load_examples(dataset="fashion_mnist", split=split)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ex), size=min(n, len(ex)), replace=False))
    raw = np.asarray(ex.inputs)[idx]
    from graft.data import get_dataset

    names = list(get_dataset("fashion_mnist").label_order)  # the dataset's canonical order
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index[ex.labels[i]] for i in idx], dtype=np.int64)
    x = torch.from_numpy(raw).unsqueeze(1).float()
    if size != raw.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    images = x.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    return ImageSet(images, labels, names)


@dataclass
class TextSplits:
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    names: list[str]

    def examples(self, which: str):
        from graft.data.types import Examples

        texts = self.train_texts if which == "train" else self.test_texts
        labels = self.train_labels if which == "train" else self.test_labels
        return Examples("text", list(texts), [self.names[i] for i in labels], f"vader:{which}")

    def graft_loaders(self, backbone, batch: int, eval_batch: int):
        """graft's own train and test loaders: dynamic padding, length-grouped batches."""
        from graft.pipeline import Loaders

        loaders = Loaders(backbone.preprocess, backbone.tokenizer, False, 0, 0)
        train = loaders.loader(
            self.examples("train"), self.train_labels, batch, True, by_length=True, train=True
        )
        test = loaders.loader(
            self.examples("test"), np.asarray(self.test_labels), eval_batch, False, by_length=True
        )
        return train, test


def vader_movies(train_size: int, test_size: int, seed: int = 0) -> TextSplits:
    """VADER movie snippets: a seeded stratified train subset and a disjoint test split."""
    from graft.data import load_examples, make_splits

    ex = load_examples(dataset="vader_movies")
    splits = make_splits(ex, train_size=train_size, test_size=test_size, val_size=64, seed=seed)
    names = list(splits.label_map.names)
    assert splits.test is not None
    return TextSplits(
        list(splits.train.inputs),
        splits.label_map.encode(splits.train.labels, "train").astype(np.int64),
        list(splits.test.inputs),
        splits.label_map.encode(splits.test.labels, "test").astype(np.int64),
        names,
    )
