"""Hugging Face encoders (BERT family) through ``AutoModel``: any hub name online, a local folder,
or, offline, the packaged all-MiniLM-L6-v2.

Groups: the embeddings, then each transformer layer, then the head. The layer list is found as
the ``nn.ModuleList`` whose length is ``config.num_hidden_layers``, so BERT, RoBERTa, ELECTRA,
DistilBERT and their kin need no table of their own.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.errors import DataError, UsageError
from graft.models.base import (
    Backbone,
    GraftModel,
    Head,
    LayerGroup,
    TextPreprocess,
    register_family,
)

DEFAULT_MAX_LENGTH = 128  # tokens, when data.max_length is not given
# Names that resolve to the offline package (graft.assets) instead of the hub.
OFFLINE_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_location(name: str) -> str:
    """A local folder for offline names, else the name itself (a hub id or a folder)."""
    if name.lower() in OFFLINE_ALIASES:
        from graft.assets import minilm_dir

        return str(minilm_dir())
    return name


class TextEncoder(nn.Module):
    """An ``AutoModel`` encoder pooled to one vector per text (mean over tokens, or [CLS])."""

    def __init__(self, encoder: nn.Module, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    def extra_repr(self) -> str:
        return f"pooling={self.pooling}"  # in repr(): the feature store's keys read it

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def layer_list(encoder: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The encoder's transformer layers: the first ``nn.ModuleList`` of ``num_layers`` modules,
    with its name inside the encoder (``encoder.layer`` for BERT, ``transformer.layer`` for
    DistilBERT)."""
    layers = next(
        (
            (name, m)
            for name, m in encoder.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) == num_layers
        ),
        None,
    )
    if layers is None:
        raise DataError(
            f"cannot find the {num_layers} transformer layers of {type(encoder).__name__}"
        )
    return layers


def _keep_layers_problem(keep: list[int], total: int, name: str) -> str | None:
    """What is wrong with ``backbone.keep_layers`` for an encoder of ``total`` layers, if any."""
    if not keep:
        return "is empty"
    if any(not 0 <= i < total for i in keep):
        return f"has an index out of range: {name} has {total} layers, 0 to {total - 1}"
    if len(set(keep)) != len(keep):
        return "repeats a layer"
    if keep != sorted(keep):
        return "must be in increasing order (layers stay in the order of the network)"
    return None


def keep_encoder_layers(encoder: nn.Module, keep: list[int], name: str) -> None:
    """Keep the transformer layers ``keep`` of ``encoder`` (in place, in that order) and drop
    the others: DistilBERT's initialisation of a smaller student from its teacher's layers (Sanh
    et al. 2019 kept one layer in two). ``config.num_hidden_layers`` follows, so the saved spec
    (``hf_config``) rebuilds the smaller model."""
    total = int(encoder.config.num_hidden_layers)  # type: ignore[union-attr, arg-type]
    problem = _keep_layers_problem(keep, total, name)
    if problem is not None:
        raise UsageError(
            f"backbone.keep_layers: {keep} {problem}",
            hint=f"distinct layer indexes from 0 to {total - 1}, in increasing order",
        )
    list_name, layers = layer_list(encoder, total)
    parent, _, attribute = list_name.rpartition(".")
    kept = nn.ModuleList([layers[i] for i in keep])
    for position, layer in enumerate(kept):
        # Attention modules number themselves for a key/value cache: keep that numbering dense.
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                setattr(module, "layer_idx", position)  # noqa: B010  (mypy: Tensor | Module)
    setattr(encoder.get_submodule(parent) if parent else encoder, attribute, kept)
    config: Any = encoder.config
    # Per-layer settings in the config (e.g. `layer_types` of newer models) must shrink too.
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and len(types) == total:
        config.layer_types = [types[i] for i in keep]
    config.num_hidden_layers = len(keep)


def encoder_groups(encoder: nn.Module, num_layers: int, prefix: str) -> list[LayerGroup]:
    """Embeddings (everything before the layer list), each layer, then anything after it (a final
    norm) joined to the last layer's group."""
    list_name, _ = layer_list(encoder, num_layers)
    groups: list[LayerGroup] = [LayerGroup("embeddings", [])]
    groups += [LayerGroup(f"layer.{i}", []) for i in range(num_layers)]
    after_layers = False
    for pname, p in encoder.named_parameters():
        if pname.startswith(list_name + "."):
            index = int(pname[len(list_name) + 1 :].split(".")[0])
            groups[index + 1].params.append((prefix + pname, p))
            after_layers = True
        elif after_layers:
            groups[-1].params.append((prefix + pname, p))
        else:
            groups[0].params.append((prefix + pname, p))
    return [g for g in groups if g.params]


def _offline_or_local(name: str) -> bool:
    return name.lower() in OFFLINE_ALIASES or (Path(name) / "config.json").is_file()


def _hub_id(name: str) -> bool:
    return "/" in name and not Path(name).exists()  # an org/name id such as a hub model's


@register_family(
    "hf",
    modality="text",
    # An offline alias or a local folder wins over every other family; an org/name id is tried
    # after timm and torchvision had their say.
    claims=((0, _offline_or_local), (30, _hub_id)),
    known=lambda: ["minilm"],
)
def build_hf(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = True,
    head_dropout: float = 0.0,
    pooling: str = "mean",
    max_length: int | None = None,
    hf_config: dict[str, Any] | None = None,
    tokenizer_dir: str | None = None,
    trust_remote_code: bool = False,
    keep_layers: list[int] | None = None,
) -> Backbone:
    """A Hugging Face encoder with a new head. With ``hf_config`` (a saved model's), the
    architecture is rebuilt from it without downloading or loading pretrained weights.

    ``trust_remote_code`` is passed explicitly to every loader: off, a model or tokenizer that
    ships its own Python code (``auto_map`` in its config) is refused, never run. A saved model's
    description cannot turn it on: a rebuild (``hf_config`` given) that asks for it is refused.
    ``keep_layers``: see :func:`keep_encoder_layers` (a saved model's ``hf_config`` already
    holds the smaller layer count, so a rebuild never needs it).
    """
    if trust_remote_code and hf_config is not None:
        # A saved model is rebuilt from its graft_model.json, a file that may come from anyone;
        # every key of its backbone spec reaches this function, so refuse rather than obey.
        raise ValueError("a saved model's description cannot enable trust_remote_code")
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # graft prints its own progress

    # A saved model carries its config and tokenizer: rebuilding it needs neither hub nor package.
    location = name if hf_config is not None and tokenizer_dir else resolve_location(name)
    remote = {"trust_remote_code": trust_remote_code}
    try:
        if hf_config is not None:
            config = AutoConfig.for_model(**hf_config)
            encoder = AutoModel.from_config(config, **remote)
        elif pretrained:
            encoder = AutoModel.from_pretrained(location, **remote)
        else:
            config = AutoConfig.from_pretrained(location, **remote)
            encoder = AutoModel.from_config(config, **remote)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or location, **remote)
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        # OSError: no such model or file; ValueError: custom code without trust_remote_code, an
        # unknown model type, malformed files; UnpicklingError: a .bin refused by weights_only.
        if hf_config is not None and isinstance(e, ValueError):
            raise  # a saved model's description: load_model reports it, naming the file
        if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
            # torch's message goes on to explain how to load it unsafely: not passed on.
            raise DataError(
                f"could not load Hugging Face model {name!r}: refused its weights file, which "
                "holds Python objects other than tensors (it was not loaded, none of its code ran)",
                hint="use a model saved as safetensors, from a source you trust",
            ) from None
        raise DataError(
            f"could not load Hugging Face model {name!r}: {_first_line(e)}",
            hint="offline, use backbone.name=minilm or a local folder with config.json"
            + (
                "; a model with its own code needs backbone.trust_remote_code=true (only for "
                "code you trust)"
                if "trust_remote_code" in str(e)
                else ""
            ),
        ) from None
    if getattr(encoder, "pooler", None) is not None:
        # Pooling happens in TextEncoder; an unused pooler would only hold dead parameters
        # (and break DistributedDataParallel's "every parameter gets a gradient").
        encoder.pooler = None
    if keep_layers is not None:
        keep_encoder_layers(encoder, list(keep_layers), name)
    body = TextEncoder(encoder, pooling)
    limit = max_positions(encoder.config, tokenizer)
    if max_length is None:  # the default: 128 tokens, or fewer if the model reads fewer
        max_length = min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH)
    elif limit is not None and max_length > limit:  # it would train, then fail on a long text
        raise UsageError(
            f"data.max_length: {max_length} tokens, but {name} reads at most {limit}",
            hint=f"set data.max_length to {limit} or less (longer texts are cut)",
        )
    hidden = int(encoder.config.hidden_size)
    model = GraftModel(body, Head(hidden, num_classes, head_dropout), "text")
    groups = encoder_groups(encoder, int(encoder.config.num_hidden_layers), "body.encoder.")
    groups.append(LayerGroup("head", list(model.head.named_parameters(prefix="head"))))
    spec = {
        "source": "hf",
        "name": name,
        "num_classes": num_classes,
        "head_dropout": head_dropout,
        "pooling": pooling,
        "hf_config": encoder.config.to_dict(),
    }
    return Backbone(model, groups, TextPreprocess(max_length), spec, tokenizer=tokenizer)


def max_positions(config: Any, tokenizer: Any) -> int | None:
    """The longest input the model reads, in tokens: its position embeddings, or the
    tokenizer's limit when that is smaller (RoBERTa's 514 positions hold 512 tokens)."""
    limits = [getattr(config, "max_position_embeddings", None)]
    limits.append(getattr(tokenizer, "model_max_length", None))
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else None


def _first_line(e: BaseException, limit: int = 300) -> str:
    """The gist of a library's error: its first line, cut (some are pages of advice)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Save the tokenizer beside a model so the model folder is self-contained."""
    os.makedirs(folder, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
