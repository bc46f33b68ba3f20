"""Training batches that mix source and unlabeled target examples in a stated ratio."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from graft.pipeline import EpochBatches


class MixedBatches(EpochBatches):
    """Batches over a joined set (the ``n_source`` source examples first, then ``n_target``
    target ones) with ``round(batch_size × fraction)`` target examples in each full batch and
    source examples for the rest. An epoch is one pass over the source (its last batch smaller,
    with target examples in the same proportion); the target examples cycle through their own
    permutations. Like every graft sampler, a pure function of (seed, epoch)."""

    def __init__(
        self,
        n_source: int,
        n_target: int,
        batch_size: int,
        fraction: float,
        seed: int = 0,
        lengths: np.ndarray | None = None,
    ) -> None:
        # ``lengths`` only for the caches' one pass over every example (sorted: little padding).
        super().__init__(n_source + n_target, batch_size, True, seed, lengths)
        self.n_source, self.n_target = n_source, n_target
        self.per_target = min(max(1, round(batch_size * fraction)), batch_size - 1)
        self.per_source = batch_size - self.per_target

    def __len__(self) -> int:
        return -(-self.n_source // self.per_source)

    def _batches(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        source = torch.randperm(self.n_source, generator=g).tolist()
        needed = len(self) * self.per_target
        target: list[int] = []
        while len(target) < needed:
            target += (torch.randperm(self.n_target, generator=g) + self.n_source).tolist()
        for b in range(len(self)):
            s = source[b * self.per_source : (b + 1) * self.per_source]
            # The last, smaller batch keeps the ratio.
            t_count = max(1, round(len(s) * self.per_target / self.per_source))
            yield s + target[b * self.per_target : b * self.per_target + t_count]
