"""Plans and phases: every fine-tuning strategy is a function that returns a :class:`Plan`.

A phase says, for some number of epochs, which layer groups train and each group's learning-rate
multiplier. Freezing, per-group learning rates and multi-phase schedules are one mechanism.
A plan is plain data: it is printed in the run log, saved in every checkpoint and in the model's
JSON, and can be written by hand in YAML (strategy ``custom``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from graft.errors import UsageError


@dataclass(frozen=True)
class Phase:
    """One stage of a plan.

    ``train``: names of the groups that train (all others are frozen: no gradient, eval mode).
    ``lr_mult``: per-group multiplier of the base learning rate (groups not named: 1.0).
    ``lr_scale``: a multiplier for the whole phase (LP-FT's smaller fine-tuning LR).
    ``params``: ``bias`` trains only the bias terms of the named groups (BitFit).
    ``patience``: end the phase early once the validation metric has not improved for this many
    epochs (a transition "on plateau"; ``epochs`` is then the maximum). None: the run's
    early-stopping setting applies.
    ``bn``: ``eval`` keeps the BatchNorm statistics of the training groups fixed too (their
    affine weights still train) — what a head fitted on the frozen body's features needs, so
    that its inputs do not shift the moment the body starts training.
    """

    name: str
    train: tuple[str, ...]
    epochs: int
    lr_mult: dict[str, float] = field(default_factory=dict)
    lr_scale: float = 1.0
    params: Literal["all", "bias"] = "all"
    patience: int | None = None
    bn: Literal["train", "eval"] = "train"

    def multiplier(self, group: str) -> float:
        return self.lr_scale * self.lr_mult.get(group, 1.0)


@dataclass(frozen=True)
class Plan:
    """The ordered phases of a strategy."""

    strategy: str
    phases: tuple[Phase, ...]

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "phases": [asdict(p) for p in self.phases]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        phases = tuple(
            Phase(**{**p, "train": tuple(p["train"]), "lr_mult": dict(p.get("lr_mult", {}))})
            for p in data["phases"]
        )
        return cls(data["strategy"], phases)

    def validate(self, groups: Sequence[str]) -> None:
        """Every phase names known groups and trains at least one."""
        known = set(groups)
        if not self.phases:
            raise UsageError(f"strategy {self.strategy!r}: the plan has no phases")
        for i, phase in enumerate(self.phases):
            where = f"strategy {self.strategy!r}, phase {i} ({phase.name})"
            unknown = [g for g in (*phase.train, *phase.lr_mult) if g not in known]
            if unknown:
                raise UsageError(
                    f"{where}: unknown layer groups {unknown}", hint=f"groups: {', '.join(groups)}"
                )
            if not phase.train:
                raise UsageError(f"{where}: trains no group")
            if phase.epochs < 1:
                raise UsageError(f"{where}: epochs must be at least 1")
