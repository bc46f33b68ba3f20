"""The adaptation term of a run's objective (:class:`Adaptation`): which method, its weight, and
for DANN the domain classifier with its own optimizer, stepped after every training step and
saved in every checkpoint (so a resume continues it exactly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graft.adapt.objectives import (
    DomainClassifier,
    dann_lambda,
    minimum_class_confusion,
    prediction_entropy,
    pseudo_label_loss,
    reverse_gradient,
)


@dataclass
class Adaptation:
    """What a step adds for its target rows (target :data:`~graft.distill.IGNORE_INDEX`).

    ``total_steps``: the run's optimizer steps (DANN's λ schedule); ``step``: those taken (the
    loop's constraint hook :meth:`apply` counts them; a resume sets it from the checkpoint)."""

    method: str
    weight: float = 1.0
    temperature: float = 2.5
    threshold: float = 0.9
    total_steps: int = 1
    step: int = 0
    classifier: DomainClassifier | None = None
    optimizer: torch.optim.Optimizer | None = None
    features: Tensor | None = field(default=None, repr=False)  # the head's last input

    def watch(self, head: nn.Module) -> None:
        """Keep the head's input (the pooled features) of each forward pass, for DANN."""

        def grab(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.features = args[0] if args else next(iter(kwargs.values()))

        head.register_forward_pre_hook(grab, with_kwargs=True)

    def term(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The adaptation loss of one batch, already weighted."""
        target_rows = targets < 0
        if self.method == "dann":
            assert self.classifier is not None and self.features is not None
            lam = dann_lambda(self.step / max(self.total_steps, 1), self.weight)
            domain = self.classifier(reverse_gradient(self.features.float(), lam))
            # The classifier learns at full strength; the features get −λ times its gradient.
            return F.binary_cross_entropy_with_logits(domain, target_rows.float())
        target = logits[target_rows]
        if len(target) == 0:
            return logits.sum() * 0.0
        if self.method == "entropy":
            value = prediction_entropy(target)
        elif self.method == "mcc":
            value = minimum_class_confusion(target, self.temperature)
        elif self.method == "self_training":
            value = pseudo_label_loss(target, self.threshold)
        else:
            raise ValueError(f"unknown adaptation method {self.method!r}")
        return self.weight * value

    def apply(self) -> None:
        """After each optimizer step (the loop's constraint hook): step the domain classifier,
        count the step."""
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (the domain classifier and its optimizer)."""
        if self.classifier is None or self.optimizer is None:
            return {}
        return {
            "classifier": self.classifier.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        """Continue from a checkpoint's :meth:`state_dict`, ``step`` steps into the run."""
        self.step = step
        if state and self.classifier is not None and self.optimizer is not None:
            self.classifier.load_state_dict(state["classifier"])
            self.optimizer.load_state_dict(state["optimizer"])


def domain_classifier(features: int, lr: float, device: torch.device) -> tuple[Any, Any]:
    """DANN's domain classifier on ``features``-wide inputs, with its Adam at ``lr``."""
    classifier = DomainClassifier(features).to(device)
    return classifier, torch.optim.Adam(classifier.parameters(), lr=lr)
