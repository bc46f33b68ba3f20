"""Optimizer and learning-rate schedule builders, from flat arguments.

Per-group learning-rate multipliers are set as each parameter group's own ``lr``; schedules are
``LambdaLR`` factors applied to every group's initial ``lr``, so multipliers compose with every
schedule by construction.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from graft.errors import UsageError


def build_optimizer(
    name: str,
    param_groups: list[dict[str, Any]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """An optimizer over ``param_groups`` (each with its own ``lr`` and ``weight_decay``)."""
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UsageError(f"optim.name: unknown optimizer {name!r}")


def schedule_factor(name: str, step: int, total: int, warmup: int) -> float:
    """The multiplier of the initial LR at optimizer step ``step`` of ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "linear":
        return 1.0 - progress
    raise UsageError(f"schedule.name: unknown schedule {name!r}")


def build_scheduler(
    name: str, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule over ``total_steps`` optimizer steps, with optional linear warmup."""
    warmup = round(warmup_ratio * total_steps)
    schedule_factor(name, 0, total_steps, warmup)  # fail now on an unknown name
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(name, step, total_steps, warmup)
    )
