"""What a feature-store key is a hash of: everything a frozen forward pass's output depends on.

* the frozen weights, as they are when the cache is computed (every parameter and buffer the
  pass reads, by name, dtype, shape and bytes): a re-initialised layer, a trained one or other
  pretrained weights give another key;
* the architecture (the module tree's ``repr``, which names every layer and its settings, and
  a Hugging Face model's config: attention implementation, position embeddings, ...);
* where the pass stops (the prefix's entry module and the stubbed units), or ``body`` for the
  pooled body output;
* the examples as the model receives them (:meth:`fingerprint` of the dataset: token ids, or
  pixels with the image preprocessing, the augmentation and the targets);
* the precision, the device type, the torch version and the batch size the cache is computed in
  (the loader's: a kernel may round differently for another batch shape, so a run computes its
  caches in its own batches, as it always did, and finds only entries made in the same ones).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from graft.features.store import FORMAT


def architecture(module: nn.Module) -> str:
    """The module tree's repr and the config of any Hugging Face model inside it."""
    configs = [
        f"{name}: {sub.config.to_json_string(use_diff=False)}"
        for name, sub in module.named_modules()
        if hasattr(getattr(sub, "config", None), "to_json_string")
    ]
    return "\n".join([repr(module), *configs])


def feature_key(
    kind: str,
    module: nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    loader: DataLoader[Any],
    device: torch.device,
    precision: str,
) -> str | None:
    """The key of one cache over ``loader``'s examples: ``kind`` says where the pass stops,
    ``tensors`` are the weights it reads; None when the dataset cannot say what it serves (it has
    no ``fingerprint()``)."""
    fingerprint = getattr(loader.dataset, "fingerprint", None)
    if fingerprint is None:
        return None
    batch = getattr(loader.batch_sampler, "batch_size", None)
    h = hashlib.sha256()
    h.update(repr((FORMAT, kind, torch.__version__, device.type, precision, batch)).encode())
    h.update(architecture(module).encode())
    for name, tensor in tensors:
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"\0{name}\0{t.dtype}\0{tuple(tensor.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().data)
    h.update(fingerprint().encode())
    return h.hexdigest()


def body_key(
    model: nn.Module, loader: DataLoader[Any], device: torch.device, precision: str
) -> str | None:
    """The key of the pooled body output (``model.features``) over ``loader``'s examples."""
    body: nn.Module = model.body  # type: ignore[assignment]
    state = [*body.named_parameters(), *body.named_buffers()]
    return feature_key("body", body, state, loader, device, precision)
