"""The frozen-body feature cache.

While a phase trains only the head, the whole body is frozen and in eval mode, and (without
random augmentation) its output for an example never changes: compute it once, then train the
head on the stored features. An epoch of a linear probe becomes a pass over a feature matrix
instead of a forward pass through the network.

The cached loaders reuse the original loader's batch sampler, so every epoch sees exactly the
batches the uncached path would see, and the losses agree within float rounding. A cache lives
for one phase: a phase that thaws any body group goes through the full model again, and the next
head-only phase recomputes the features from the weights as they are then. With a shared
:class:`~graft.features.store.FeatureStore`, features computed once (by any run, with the same
weights and data) are read instead of computed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from graft.distributed import active, all_ranks, gather_batches, my_positions
from graft.features.keys import body_key
from graft.features.store import FeatureStore, origin
from graft.pipeline import Batch, batches_once, empty_targets, same_batches
from graft.runtime import Precision, autocast, no_grad_eval
from graft.strategies.plan import Phase

# Above this many bytes, features go to a memory-mapped file instead of RAM.
IN_MEMORY_LIMIT = 1 << 30


def head_only(phase: Phase) -> bool:
    """Whether a phase trains nothing but the head (so the whole body is a frozen prefix)."""
    return set(phase.train) == {"head"} and phase.params == "all"


class FeatureBatches(torch.utils.data.Dataset[Batch]):
    """Stored body features and targets, served a batch at a time like the original data;
    ``from_store``: read from the shared feature store rather than computed."""

    def __init__(
        self, features: torch.Tensor, targets: torch.Tensor, from_store: bool = False
    ) -> None:
        self.features, self.targets, self.from_store = features, targets, from_store

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, index: list[int]) -> Batch:
        idx = torch.as_tensor(index)
        return {"inputs": {"features": self.features[idx]}, "targets": self.targets[idx]}

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])


def _storage(n: int, dim: int) -> torch.Tensor:
    if n * dim * 4 <= IN_MEMORY_LIMIT:
        return torch.empty((n, dim), dtype=torch.float32)
    handle = tempfile.NamedTemporaryFile(prefix="graft-features-", suffix=".f32")  # noqa: SIM115
    array = np.memmap(handle.name, dtype=np.float32, mode="w+", shape=(n, dim))
    tensor = torch.from_numpy(array)
    tensor._graft_file = handle  # type: ignore[attr-defined]  # keep the file alive with the data
    return tensor


@torch.no_grad()
def compute_features(
    model: torch.nn.Module,
    loader: DataLoader[Batch],
    device: torch.device,
    precision: Precision = "fp32",
    store: FeatureStore | None = None,
) -> FeatureBatches:
    """The body's output for every example of ``loader``'s dataset, in dataset order: read from
    ``store`` when it holds them, else computed (and stored there)."""
    data: Any = loader.dataset
    key = None
    if store is not None and not getattr(data, "random", False):
        key = body_key(model, loader, device, precision)
    found = store.load(key) if store is not None and key else None
    # Distributed: the ranks read the store or compute together (a node may lack the entry).
    if all_ranks(found is not None):
        assert found is not None
        return FeatureBatches(found["features"], found["targets"], from_store=True)
    n = len(data)
    features: torch.Tensor | None = None
    targets = empty_targets(data, n)  # class indexes, or a regression's or multi-label's

    def fill(index: list[int], out: torch.Tensor, y: torch.Tensor) -> None:
        nonlocal features
        if features is None:
            features = _storage(n, out.shape[1])
        idx = torch.as_tensor(index)
        features[idx] = out
        targets[idx] = y

    # Distributed, each rank computes whole batches of the one-process pass (so the features
    # are bit-identical to one process's) and every rank gets all of them: pooled features
    # are small to send. In one process each batch goes straight into the matrix.
    parts: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
    keep = parts.append if active() is not None else lambda part: fill(*part)
    n_batches = len(loader.batch_sampler)  # type: ignore[arg-type]
    with no_grad_eval(model), autocast(device, precision):
        for index, batch in batches_once(loader, device, my_positions(n_batches)):
            out = model.features(**batch["inputs"]).float().cpu()  # type: ignore[operator]
            keep((index, out, batch["targets"].cpu()))
    for part in gather_batches(parts):
        fill(*part)
    assert features is not None
    ranks = active()
    saves = ranks is None or ranks.main  # one writer per job
    if store is not None and key and saves and features.numel() * 4 <= IN_MEMORY_LIMIT:
        store.save(key, {"features": features, "targets": targets})
    return FeatureBatches(features, targets)


@dataclass
class CachedLoaders:
    """The train and validation loaders of one phase, over stored features."""

    train: DataLoader[Batch]
    val: DataLoader[Batch]

    @property
    def origin(self) -> str:
        """Where the features came from, for the run log."""
        return origin(
            [getattr(d, "from_store", False) for d in (self.train.dataset, self.val.dataset)]
        )


def cached_loaders(
    model: torch.nn.Module,
    train_loader: DataLoader[Batch],
    val_loader: DataLoader[Batch],
    device: torch.device,
    precision: Precision = "fp32",
    store: FeatureStore | None = None,
) -> CachedLoaders:
    """The phase's loaders over the body's features (see :func:`compute_features`)."""

    def over_features(loader: DataLoader[Batch]) -> DataLoader[Batch]:
        return same_batches(compute_features(model, loader, device, precision, store), loader)

    return CachedLoaders(over_features(train_loader), over_features(val_loader))
