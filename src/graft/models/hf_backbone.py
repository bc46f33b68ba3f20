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


def encoder_groups(encoder: nn.Module, num_layers: int, prefix: str) -> list[LayerGroup]:
    """Embeddings (everything before the layer list), each layer, then anything after it (a final
    norm) joined to the last layer's group."""
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
    list_name = layers[0]
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
) -> Backbone:
    """A Hugging Face encoder with a new head. With ``hf_config`` (a saved model's), the
    architecture is rebuilt from it without downloading or loading pretrained weights.

    ``trust_remote_code`` is passed explicitly to every loader: off, a model or tokenizer that
    ships its own Python code (``auto_map`` in its config) is refused, never run. A saved model's
    description cannot turn it on: a rebuild (``hf_config`` given) that asks for it is refused.
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
