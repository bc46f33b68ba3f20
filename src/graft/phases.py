"""A plan's phase applied to the model: which parameters train, which modules run in eval mode,
and the table of groups the run log prints (:func:`apply_phase`, :func:`set_train_mode`,
:func:`group_table`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from graft.models.base import LayerGroup
from graft.strategies.plan import Phase


def apply_phase(groups: list[LayerGroup], phase: Phase) -> None:
    """Set ``requires_grad``: the phase's groups train (only biases with ``params: bias``, except
    the new ``head``, which always trains whole: BitFit trains the classifier fully)."""
    training = set(phase.train)
    for g in groups:
        whole = phase.params == "all" or g.name == "head"
        for name, p in g.params:
            p.requires_grad_(g.name in training and (whole or name.endswith("bias")))


def set_train_mode(
    model: nn.Module, frozen_bn_updates: bool = False, bn_eval: bool = False
) -> None:
    """Train mode, except that every module whose parameters are all frozen is in eval mode:
    its BatchNorm statistics stay fixed and its dropout is off (and it runs faster on CPU).
    ``frozen_bn_updates`` lets BatchNorm layers of frozen groups keep updating their statistics;
    ``bn_eval`` fixes the statistics of every BatchNorm layer, trained ones included."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
    if frozen_bn_updates or bn_eval:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(not bn_eval)


def group_table(groups: list[LayerGroup], phase: Phase, lr: float) -> list[dict[str, Any]]:
    """Each group's size, state and learning rate in this phase, for the run log."""
    rows = []
    for g in groups:
        trainable = sum(p.numel() for _, p in g.params if p.requires_grad)
        state = "train" if trainable == g.size else ("frozen" if trainable == 0 else "partial")
        rows.append(
            {
                "group": g.name,
                "params": g.size,
                "trainable": trainable,
                "state": state,
                "lr": lr * phase.multiplier(g.name) if trainable else 0.0,
            }
        )
    return rows
