"""Structured pruning rules: what ``graft prune --method structured`` removes, per model kind.

* a CNN: whole channels, through torch-pruning's dependency graph (every layer connected to a
  pruned channel, residual additions, depthwise convolutions and squeeze-excite blocks
  included, shrinks with it); the L2 norm of each channel group ranks them
  (``GroupMagnitudeImportance(p=2)``); the classifier's output (``head.fc``) is never pruned;
* a Hugging Face BERT-like encoder: whole attention heads (query, key and value rows of a head,
  and the matching columns of the attention output) and FFN neurons (intermediate rows and
  output columns) of every layer, ranked by the same group L2 norm. The hidden size (the
  embeddings, every residual stream) is kept.

Anything else (a ViT, another transformer) has no rule: a :class:`UsageError` names its layer
type and points to ``--method magnitude``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from graft.errors import UsageError
from graft.models import Backbone
from graft.models.base import ImagePreprocess

ATTENTION_HINT = "use --method magnitude (it zeroes weights of any model)"


def bert_layers(model: nn.Module) -> list[nn.Module]:
    """The encoder layers of a BERT-like Hugging Face model inside ``model`` (each with
    ``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``
    and ``output.dense``); empty when it is not one."""
    layers = []
    for module in model.modules():
        att = getattr(module, "attention", None)
        self_att = getattr(att, "self", None)
        if (
            self_att is not None
            and all(isinstance(getattr(self_att, n, None), nn.Linear) for n in ("query", "key"))
            and isinstance(getattr(self_att, "value", None), nn.Linear)
            and isinstance(getattr(getattr(att, "output", None), "dense", None), nn.Linear)
            and isinstance(getattr(getattr(module, "intermediate", None), "dense", None), nn.Linear)
            and isinstance(getattr(getattr(module, "output", None), "dense", None), nn.Linear)
            and isinstance(getattr(self_att, "num_attention_heads", None), int)
        ):
            layers.append(module)
    return layers


def _non_cnn_layer(model: nn.Module) -> str:
    """The layer type that makes ``model`` something other than a CNN, for the message: its
    first attention-like module, else its largest non-convolution layer kind."""
    for module in model.modules():
        if "attention" in type(module).__name__.lower() or isinstance(
            module, nn.MultiheadAttention
        ):
            return type(module).__name__
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return type(module).__name__
    return type(model).__name__


def check_structured(backbone: Backbone) -> str:
    """Which structured rule applies to ``backbone``: ``"cnn"`` or ``"bert"``; a model with
    none is refused (a :class:`UsageError` naming its layer type)."""
    model = backbone.model
    if isinstance(backbone.preprocess, ImagePreprocess):
        has_attention = any(
            "attention" in type(m).__name__.lower() or isinstance(m, nn.MultiheadAttention)
            for m in model.modules()
        )
        if backbone.is_cnn and not has_attention:
            return "cnn"
    elif bert_layers(model):
        return "bert"
    net = type(getattr(model.body, "net", getattr(model.body, "encoder", model.body))).__name__
    raise UsageError(
        f"--method structured: no structured pruning rule for {net} ({_non_cnn_layer(model)} "
        "layers): graft prunes channels of CNNs and heads / FFN neurons of BERT-like encoders",
        hint=ATTENTION_HINT,
    )


def example_inputs(backbone: Backbone) -> dict[str, torch.Tensor]:
    """A small batch to trace the model with (the values do not matter, the shapes do)."""
    prep = backbone.preprocess
    if isinstance(prep, ImagePreprocess):
        return {"pixel_values": torch.randn(2, prep.channels, prep.image_size, prep.image_size)}
    encoder: Any = getattr(backbone.model.body, "encoder", None)
    vocab = int(encoder.config.vocab_size)
    ids = torch.arange(1, 9).remainder(vocab).unsqueeze(0).repeat(2, 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def prune_cnn(backbone: Backbone, amount: float) -> dict[str, Any]:
    """Remove ``amount`` of the channels of every prunable group of a CNN (torch-pruning's
    ``MetaPruner``, L2 group magnitude); the classifier's outputs stay."""
    import torch_pruning as tp

    model = backbone.model
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs(backbone),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=amount,
        ignored_layers=[model.head.fc],
    )
    pruner.step()
    return {"rule": "cnn channels"}


def _remove(dg: Any, layer: nn.Linear, count: int, block: int) -> list[int]:
    """Remove the ``count`` output blocks (of ``block`` channels) of ``layer`` whose group
    (every layer coupled to them) has the smallest L2 norm; returns the removed blocks."""
    import torch_pruning as tp

    if count == 0:
        return []
    channels = list(range(layer.out_features))
    group = dg.get_pruning_group(layer, tp.prune_linear_out_channels, idxs=channels)
    scores = tp.importance.GroupMagnitudeImportance(p=2)(group)
    per_block = scores.view(-1, block).sum(1)
    blocks = sorted(int(i) for i in torch.argsort(per_block)[:count])
    idxs = [b * block + j for b in blocks for j in range(block)]
    dg.get_pruning_group(layer, tp.prune_linear_out_channels, idxs=idxs).prune()
    return blocks


def prune_bert(backbone: Backbone, amount: float) -> dict[str, Any]:
    """Remove ``round(amount × heads)`` attention heads and ``round(amount × FFN width)``
    neurons of every layer of a BERT-like encoder (at least one of each is kept).

    torch-pruning's dependency graph couples a head's query, key and value rows with the
    attention output's columns (it traces through the attention function), so removing a
    head-sized block of the query removes the whole head everywhere. transformers reshapes
    with ``view(..., -1, head_size)``, so fewer heads only need the smaller layers and the
    module's ``num_attention_heads`` / ``all_head_size``, updated here."""
    import torch_pruning as tp

    model = backbone.model
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs(backbone))
    heads_removed, neurons_removed = [], []
    for layer in bert_layers(model):
        att: Any = layer.attention.self  # type: ignore[union-attr]
        heads, size = int(att.num_attention_heads), int(att.attention_head_size)
        drop = min(round(amount * heads), heads - 1)
        removed = _remove(dg, att.query, drop, size)
        att.num_attention_heads = heads - len(removed)
        att.all_head_size = att.num_attention_heads * size
        heads_removed.append(len(removed))
        ffn: nn.Linear = layer.intermediate.dense  # type: ignore[union-attr, assignment]
        width = ffn.out_features
        neurons_removed.append(len(_remove(dg, ffn, min(round(amount * width), width - 1), 1)))
    return {
        "rule": "bert heads and FFN neurons",
        "heads_removed_per_layer": heads_removed,
        "ffn_neurons_removed_per_layer": neurons_removed,
    }


def prune_structured(backbone: Backbone, amount: float) -> dict[str, Any]:
    """Structured pruning of ``backbone`` in place (see the module docstring); returns what was
    removed. Refuses a model kind without a rule before changing anything."""
    rule = check_structured(backbone)
    model = backbone.model
    was_training = model.training
    model.eval()  # traced in eval mode: BatchNorm statistics and dropout untouched
    # torch-pruning traces the autograd graph of one forward: every parameter must require
    # a gradient for its layer to appear in it (a frozen layer would be invisible).
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        return prune_cnn(backbone, amount) if rule == "cnn" else prune_bert(backbone, amount)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
