"""The model class of a graft text model exported for Hugging Face transformers.

This file is copied, as ``modeling_graft.py``, into every folder that ``graft export --format
hf`` writes, and named by the ``auto_map`` of its ``config.json``: it is the "custom code" that
``trust_remote_code=True`` lets transformers run. It therefore imports nothing of graft (only
torch and transformers), so the folder works where graft is not installed.

Why custom code: graft's text model is an encoder, a pooling of its last hidden states (the mean
over the attention mask, or the [CLS] vector), and one linear layer. No standard
``*ForSequenceClassification`` class computes that: BERT's puts a trained dense + tanh "pooler"
on [CLS] (graft drops that pooler), and none of the BERT family mean-pools. Loading the weights
into such a class would silently give other predictions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls")


class GraftTextConfig(PretrainedConfig):
    """An encoder's own config (``encoder``, a dict with its ``model_type``), the pooling and
    the head's dropout; labels in the standard ``id2label`` / ``label2id``."""

    model_type = "graft-text-classifier"

    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        pooling: str = "mean",
        head_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        self.head_dropout = head_dropout
        super().__init__(**kwargs)


class GraftForSequenceClassification(PreTrainedModel):
    """``encoder`` (an ``AutoModel`` built from ``config.encoder``, without a pooler), then
    ``pooling``, dropout and ``classifier`` (one linear layer): graft's text model."""

    config_class = GraftTextConfig
    base_model_prefix = "encoder"

    def __init__(self, config: GraftTextConfig) -> None:
        super().__init__(config)
        encoder_config = AutoConfig.for_model(**config.encoder)
        self.encoder = AutoModel.from_config(encoder_config)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # graft pools itself; the pooler was never trained
        self.pooling = config.pooling
        self.dropout = nn.Dropout(config.head_dropout)
        num_labels = config.num_labels
        if not num_labels:
            raise ValueError("the config names no labels (id2label)")
        self.classifier = nn.Linear(int(encoder_config.hidden_size), int(num_labels))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Every weight comes from model.safetensors; this only runs for a fresh, untrained model.
        if isinstance(module, nn.Linear) and module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Logits of a batch. ``token_type_ids`` is accepted and not used: graft's model never
        receives it (single texts: all zeros, the encoder's default)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.config.num_labels), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
