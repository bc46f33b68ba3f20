"""The adaptation of a run, from its config: checks before any data is read, the target set
(labels blanked the moment it is read), and the objective's adaptation term."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from graft.adapt.term import Adaptation, domain_classifier
from graft.config import RunConfig
from graft.data.types import Examples
from graft.errors import DataError, UsageError
from graft.strategies.plan import Plan


def check_adapt_config(config: RunConfig) -> None:
    """What can be refused in ``adapt:`` before the data is read."""
    a, data = config.adapt, config.data
    if a.method == "none":
        return
    field = f"adapt.method: {a.method}"
    if data.target_unlabeled is None:
        raise UsageError(f"{field} needs data.target_unlabeled (the target domain's examples)")
    if config.distill.teacher is not None:
        raise UsageError(
            f"{field} and distill.teacher both add unlabeled examples to the batches",
            hint="use one of them per run",
        )
    if data.mixup_alpha > 0 or data.cutmix_alpha > 0:
        raise UsageError(
            f"{field}: MixUp and CutMix blend the labels of two examples, and a target example "
            "has none",
            hint="set data.mixup_alpha and data.cutmix_alpha to 0",
        )
    if config.optim.name == "lbfgs":
        raise UsageError(
            f"{field}: L-BFGS takes one full-batch step an epoch; the adaptation terms are "
            "defined on mixed mini-batches",
            hint="choose another optimizer (adamw, sgd, ...)",
        )


def check_adapt_plan(config: RunConfig, plan: Plan) -> None:
    """DANN aligns the body's features: a plan whose every phase trains the head alone gives it
    nothing to align."""
    if config.adapt.method != "dann":
        return
    if all(set(p.train) == {"head"} for p in plan.phases):
        raise UsageError(
            f"adapt.method: dann with strategy {plan.strategy}: no phase trains the body, so "
            "there are no features to align",
            hint="use a strategy that trains the body (full, lp_ft, gradual, ...), or "
            "entropy / mcc / self_training",
        )


def unlabeled_target(examples: Examples, size: int | None, seed: int) -> Examples:
    """The target set as adaptation sees it: labels blanked at once (never read, whatever the
    file holds), subsampled to ``size`` (a plain seeded subset: no labels to stratify by)."""
    if len(examples) == 0:
        raise DataError(f"data.target_unlabeled: {examples.origin} holds no examples")
    if size is not None and size < len(examples):
        rng = np.random.default_rng(seed)
        examples = examples.subset(np.sort(rng.choice(len(examples), size, False)))
    return Examples(examples.modality, examples.inputs, [""] * len(examples), examples.origin)


def build_adaptation(
    config: RunConfig, head: torch.nn.Module, device: torch.device, total_steps: int
) -> Adaptation:
    """The objective's adaptation term (DANN: with its domain classifier, watching the head's
    input features)."""
    a = config.adapt
    adaptation = Adaptation(
        a.method,
        weight=a.weight,
        temperature=a.temperature,
        threshold=a.threshold,
        total_steps=total_steps,
    )
    if a.method == "dann":
        fc: Any = getattr(head, "fc", None)
        if not isinstance(fc, torch.nn.Linear):
            raise UsageError("adapt.method: dann needs a head with a linear layer `fc`")
        adaptation.classifier, adaptation.optimizer = domain_classifier(
            fc.in_features, a.classifier_lr, device
        )
        adaptation.watch(head)
    return adaptation
