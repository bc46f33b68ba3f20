"""The wall-time budget of ``graft auto``: the clock, and the cost model that says whether a
run fits in what is left."""

from __future__ import annotations

import time
from dataclasses import dataclass

SAFETY = 1.3  # estimates × this: eval passes, model set-up and noise are not in the linear model
FINAL_SHARE = 0.35  # of the budget kept for the final training


class Clock:
    """Elapsed and remaining time of the budget."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def remaining(self) -> float:
        return self.budget_s - self.elapsed


@dataclass
class CostModel:
    """Seconds per run as ``fixed + epochs × train examples × per_example`` (both measured)."""

    fixed_s: float = 0.0
    per_example_s: float | None = None

    def estimate(self, epochs: float, n_train: int) -> float:
        if self.per_example_s is None:
            return float("inf")
        return SAFETY * (self.fixed_s + epochs * n_train * self.per_example_s)
