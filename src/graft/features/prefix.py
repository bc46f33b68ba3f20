"""The frozen-prefix cache at any cut: for phases that train some body groups but not the lowest.

``partial(k)``, ``surgical``, the later phases of gradual unfreezing and chain-thaw freeze every
group below the lowest one they train. That frozen prefix maps an example to the same activation
every epoch, so it is computed once (:func:`cached_prefix_loaders`), and training runs the rest
of the network from it. How, without per-architecture code:

* **units**: the largest modules whose parameters all lie in the prefix (``conv_stem``,
  ``blocks.0`` … for EfficientNet; ``embeddings``, ``layer.0`` … for BERT);
* **entry**: the first module, in the order a forward pass calls them, whose parameters all lie
  above the cut (``blocks.5``, ``encoder.layer.2``). Its first input is the prefix's output;
* computing the cache: a pre-hook on the entry records that input and stops the forward pass;
* training: each unit is swapped for a stub that returns the cached activation (nothing of the
  prefix is computed) and the entry's pre-hook hands it the cached activation; the model's own
  forward does the rest (masks, pooling, head).

This holds for networks whose prefix hands one tensor to the entry (chains of stages: CNNs,
transformer encoders). :meth:`PrefixCut.verify` checks it on real batches before a phase
relies on it; where it fails (a skip connection over the cut), the phase runs uncached.

Texts are stored unpadded (their real tokens only) and padded per batch: a padded position
never affects a real token (attention masks it out), so the result is the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from graft.features.keys import feature_key
from graft.features.store import FeatureStore, origin
from graft.pipeline import Batch, batches_once, empty_targets, same_batches, to_device
from graft.runtime import Precision, autocast, no_grad_eval


class _Stop(Exception):
    """Raised by the entry's pre-hook to end a prefix-only forward pass."""


class _Stub(nn.Module):
    """Stands in for a prefix unit: returns the cached activation of the current batch."""

    def __init__(self, cut: PrefixCut) -> None:
        super().__init__()
        self.cut = [cut]  # in a list: not a submodule

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.cut[0].pending


class PrefixCut:
    """The split of ``model.body`` below the groups that train (``frozen`` parameter ids)."""

    def __init__(self, body: nn.Module, frozen: set[int], units: list[str], entry: str) -> None:
        self.body, self.frozen, self.units, self.entry = body, frozen, units, entry
        self.pending = torch.empty(0)

    @classmethod
    def find(
        cls, body: nn.Module, frozen: set[int], sample: dict[str, torch.Tensor]
    ) -> PrefixCut | None:
        """The cut for ``frozen`` (the prefix's parameter ids), or None if there is no clean one.
        ``sample`` is one batch of model inputs, used to see the order modules are called in."""
        owned = {name: [id(p) for p in m.parameters()] for name, m in body.named_modules() if name}
        units: list[str] = []
        taken: tuple[str, ...] = ()
        for name, ids in owned.items():  # pre-order: parents before children
            if ids and all(i in frozen for i in ids) and not name.startswith(taken):
                units.append(name)
                taken = (*taken, name + ".")
        candidates = {n for n, ids in owned.items() if ids and not any(i in frozen for i in ids)}
        order: list[str] = []
        modules = dict(body.named_modules())
        handles = [
            modules[n].register_forward_pre_hook(lambda _m, _a, n=n: order.append(n))
            for n in candidates
        ]
        try:
            with torch.no_grad():
                body(**sample)
        finally:
            for h in handles:
                h.remove()
        if not units or not order:
            return None
        return cls(body, frozen, units, order[0])

    def _entry(self) -> nn.Module:
        return dict(self.body.named_modules())[self.entry]

    def prefix_output(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the body only up to the entry; return the entry's input."""
        captured: list[torch.Tensor] = []

        def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0])
            raise _Stop

        handle = self._entry().register_forward_pre_hook(grab)
        try:
            self.body(**inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Swap the prefix units for stubs and feed the entry from ``self.pending``."""
        modules = dict(self.body.named_modules())
        originals = {name: modules[name] for name in self.units}
        for name in self.units:
            _set_submodule(self.body, name, _Stub(self))
        handle = self._entry().register_forward_pre_hook(lambda _m, args: (self.pending, *args[1:]))
        try:
            yield
        finally:
            handle.remove()
            for name, module in originals.items():
                _set_submodule(self.body, name, module)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class CutModel(nn.Module):
    """The model run from cached prefix activations: ``forward(prefix=..., **inputs)``."""

    def __init__(self, model: nn.Module, cut: PrefixCut) -> None:
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, prefix: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        self.cut.pending = prefix
        return self.model(**inputs)


class PrefixBatches(torch.utils.data.Dataset[Batch]):
    """The original batches plus each example's cached prefix activation (``prefix``)."""

    def __init__(
        self, base: Any, activations: list[torch.Tensor], targets: torch.Tensor, text: bool
    ) -> None:
        self.base, self.activations, self.targets, self.text = base, activations, targets, text

    def __len__(self) -> int:
        return len(self.activations)

    def __getitems__(self, index: list[int]) -> Batch:
        if not self.text:  # images: the cached activation replaces the pixels
            stacked = torch.stack([self.activations[i] for i in index])
            targets = self.targets[torch.as_tensor(index)]
            return {"inputs": {"prefix": stacked, "pixel_values": stacked}, "targets": targets}
        batch = self.base.__getitems__(index)
        width = batch["inputs"]["input_ids"].shape[1]
        first = self.activations[index[0]]
        padded = first.new_zeros((len(index), width, *first.shape[1:]))
        for row, i in enumerate(index):
            padded[row, : len(self.activations[i])] = self.activations[i]
        batch["inputs"] = {**batch["inputs"], "prefix": padded}
        return batch


@dataclass
class PrefixLoaders:
    """The train and validation loaders of one phase over cached prefix activations, and the
    model that consumes them (inside ``cut.installed()``)."""

    cut: PrefixCut
    model: CutModel
    train: DataLoader[Batch]
    val: DataLoader[Batch]
    from_store: list[bool]  # train, validation: read from the feature store

    @property
    def origin(self) -> str:
        """Where the activations came from, for the run log."""
        return origin(self.from_store)


def prefix_key(
    cut: PrefixCut, loader: DataLoader[Batch], device: torch.device, precision: Precision
) -> str | None:
    """The feature-store key of the prefix's outputs over ``loader``'s examples: the frozen
    parameters, the stubbed units' buffers (BatchNorm statistics), the units and the entry."""
    modules = dict(cut.body.named_modules())
    tensors = [(n, p) for n, p in cut.body.named_parameters() if id(p) in cut.frozen]
    for unit in cut.units:
        tensors += [(f"{unit}.{n}", b) for n, b in modules[unit].named_buffers()]
    kind = f"prefix entry={cut.entry} units={','.join(cut.units)}"
    return feature_key(kind, cut.body, tensors, loader, device, precision)


@torch.no_grad()
def _activations(
    cut: PrefixCut,
    loader: DataLoader[Batch],
    device: torch.device,
    precision: Precision,
    store: FeatureStore | None,
) -> tuple[list[torch.Tensor], torch.Tensor, bool]:
    """Each example's prefix output, in dataset order, its target, and whether they were read
    from ``store`` (else computed, and stored there)."""
    data: Any = loader.dataset
    key = prefix_key(cut, loader, device, precision) if store is not None else None
    found = store.load(key) if store is not None and key else None
    if found is not None:
        rows = list(found["activations"].split(found["lengths"].tolist()))
        return (rows if found["text"].item() else [r[0] for r in rows]), found["targets"], True
    n = len(data)
    out: list[torch.Tensor | None] = [None] * n
    targets = empty_targets(data, n)  # class indexes, or a regression's or multi-label's
    text = False
    for index, batch in batches_once(loader, device):
        with autocast(device, precision):
            batch_out = cut.prefix_output(batch["inputs"]).float().cpu()
        mask = batch["inputs"].get("attention_mask")
        text = mask is not None
        targets[torch.as_tensor(index)] = batch["targets"].cpu()
        for row, i in enumerate(index):
            # Text: keep the real tokens only (padding differs from batch to batch).
            out[i] = batch_out[row, : int(mask[row].sum())].clone() if text else batch_out[row]
    done: list[torch.Tensor] = out  # type: ignore[assignment]
    if store is not None and key:
        # One tensor of every example's rows (tokens, or one image), and each one's row count.
        stacked = torch.cat(done) if text else torch.stack(done)
        lengths = torch.tensor([len(a) if text else 1 for a in done])
        entry = {"activations": stacked, "lengths": lengths, "targets": targets}
        store.save(key, {**entry, "text": torch.tensor(text)})
    return done, targets, False


def cached_prefix_loaders(
    model: Any,
    frozen: set[int],
    train_loader: DataLoader[Batch],
    val_loader: DataLoader[Batch],
    device: torch.device,
    precision: Precision = "fp32",
    store: FeatureStore | None = None,
) -> PrefixLoaders | str:
    """Loaders over the frozen prefix's cached outputs (read from ``store`` where it has them),
    or the reason there are none."""
    val_data: Any = val_loader.dataset
    sample_index = list(range(min(4, len(val_data))))
    sample = to_device(val_data.__getitems__(sample_index), device)["inputs"]
    with no_grad_eval(model):
        cut = PrefixCut.find(model.body, frozen, sample)
        if cut is None:
            return "no clean cut below the trained groups"
        cut_model = CutModel(model, cut)
        if not _verify(model, cut, cut_model, sample):
            return f"the network is not a chain at {cut.entry} (a connection skips over the cut)"
        loaders, read = [], []
        for loader in (train_loader, val_loader):
            acts, targets, from_store = _activations(cut, loader, device, precision, store)
            data = PrefixBatches(loader.dataset, acts, targets, "attention_mask" in sample)
            loaders.append(same_batches(data, loader))
            read.append(from_store)
    return PrefixLoaders(cut, cut_model, loaders[0], loaders[1], read)


def _verify(model: nn.Module, cut: PrefixCut, cut_model: CutModel, inputs: dict[str, Any]) -> bool:
    """The cached path gives the full forward's logits on a real batch."""
    with torch.no_grad():
        full = model(**inputs)
        prefix = cut.prefix_output(inputs)
        try:
            with cut.installed():
                stitched = cut_model(prefix=prefix, **inputs)
        except Exception:  # the model's forward needs more than the prefix's output (a ViT's
            return False  # position embedding reads the patch grid of the stem's output)
    return stitched.shape == full.shape and bool(
        torch.allclose(full, stitched, rtol=1e-4, atol=1e-5)
    )
