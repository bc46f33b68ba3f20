"""Statistics over seeds for ``graft compare``: mean ± std, 95% t-intervals, and which
strategies are not significantly different from the best; finished runs grouped by strategy.

No torch, no matplotlib: ``graft report`` uses it on existing run directories.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALPHA = 0.05  # significance level of the tests against the best strategy


# --------------------------------------------------------------------------------------------
# Statistics over seeds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and a 95% t-interval of values over seeds."""

    values: tuple[float, ...]
    mean: float
    std: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": [self.low, self.high]}


def describe(
    values: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Stat:
    """Mean, std (ddof 1) and the t-interval ``mean ± t(n-1) · std/√n``, clipped to ``bounds``
    (an accuracy's interval ends at 0 and 1); with one value the std and interval are NaN
    (nothing can be said about the spread)."""
    from scipy import stats

    vals = tuple(float(v) for v in values)
    n = len(vals)
    if n == 0:
        nan = math.nan
        return Stat(vals, nan, nan, nan, nan)
    mean = sum(vals) / n
    if n == 1:
        return Stat(vals, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Stat(vals, mean, std, max(bounds[0], mean - half), min(bounds[1], mean + half))


@dataclass(frozen=True)
class Test:
    """A two-sided test of one strategy against the best: ``p`` and which test gave it."""

    kind: str  # "paired t-test", "Welch t-test", or "" when it cannot be judged
    p: float | None

    @property
    def significant(self) -> bool | None:
        return None if self.p is None else self.p < ALPHA


def compare_to_best(best: Mapping[int, float], other: Mapping[int, float]) -> Test:
    """Test the difference between two strategies' scores by seed (``{seed: score}``).

    Paired by seed when both ran the same seeds (≥2): every seed shares the data splits and
    the head's initial random state, so the per-seed difference removes that shared variation.
    Otherwise Welch's unequal-variance t-test; with fewer than 2 values on a side, no test.
    Degenerate spreads (all differences equal) are decided exactly: equal means p=1, else p=0.
    """
    from scipy import stats

    if set(best) == set(other) and len(best) >= 2:
        diffs = [best[s] - other[s] for s in sorted(best)]
        if max(diffs) - min(diffs) < 1e-12:
            return Test("paired t-test", 1.0 if abs(diffs[0]) < 1e-12 else 0.0)
        a = [best[s] for s in sorted(best)]
        b = [other[s] for s in sorted(best)]
        return Test("paired t-test", float(stats.ttest_rel(a, b).pvalue))
    a, b = list(best.values()), list(other.values())
    if len(a) < 2 or len(b) < 2:
        return Test("", None)
    if max(a) - min(a) < 1e-12 and max(b) - min(b) < 1e-12:
        return Test("Welch t-test", 1.0 if abs(a[0] - b[0]) < 1e-12 else 0.0)
    return Test("Welch t-test", float(stats.ttest_ind(a, b, equal_var=False).pvalue))


# --------------------------------------------------------------------------------------------
# What a compare ranks by
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    """The metric a compare ranks strategies by, and a second one shown beside it:
    classification ranks by accuracy (macro-F1 beside it), regression by RMSE (Spearman's ρ)."""

    metric: str
    second: str
    name: str
    second_name: str
    higher_is_better: bool
    share: bool  # a share in [0, 1], shown in percent

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def format(self, value: float | None) -> str:
        """``91.23`` (percent) or ``0.8123``; ``–`` for a missing value."""
        if value is None or math.isnan(value):
            return "–"
        return f"{100 * value:.2f}" if self.share else f"{value:.4f}"

    @property
    def unit(self) -> str:
        return " %" if self.share else ""


CLASSIFICATION = Ranking("accuracy", "macro_f1", "accuracy", "macro-F1", True, True)
REGRESSION = Ranking("rmse", "spearman", "RMSE", "Spearman ρ", False, False)
MULTILABEL = Ranking("micro_f1", "map", "micro-F1", "mAP", True, True)


def ranking_of(records: Sequence[RunRecord]) -> Ranking:
    """The ranking of the runs' task (classification's for runs that name none)."""
    tasks = {r.results.get("task", "classification") for r in records}
    if "regression" in tasks:
        return REGRESSION
    return MULTILABEL if "multilabel" in tasks else CLASSIFICATION


# --------------------------------------------------------------------------------------------
# Finished runs, grouped by strategy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """A finished run as a compare sees it: its strategy label, seed and results."""

    label: str
    seed: int
    run_dir: Path
    results: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    config_text: str = ""
    isolated: bool = True  # ran in its own process: peak memory and time are its own

    def score(self, metric: str, split: str) -> float | None:
        """``metric`` (accuracy, macro_f1) on ``split`` (test, validation, or an extra set)."""
        sets = self.results.get(split) if split in ("test", "validation") else None
        if split not in ("test", "validation"):
            sets = (self.results.get("extra") or {}).get(split)
        if not isinstance(sets, dict):
            return None
        value = sets.get(metric)
        return float(value) if isinstance(value, int | float) else None

    def number(self, key: str) -> float | None:
        value = self.results.get(key)
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )


@dataclass
class StrategySummary:
    """One leaderboard row: a strategy's statistics over its seeds: ``primary`` is the
    ranking's metric (accuracy; a regression's RMSE), ``secondary`` the one beside it, ``extra``
    the primary metric on each extra evaluation set."""

    label: str
    strategy: str
    runs: list[RunRecord]
    primary: Stat
    secondary: Stat
    extra: dict[str, Stat]
    wall_time_s: Stat
    peak_rss_mb: Stat
    trainable_params: int | None
    test: Test = field(default_factory=lambda: Test("", None))
    is_best: bool = False
    ranking: Ranking = CLASSIFICATION

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def tied_with_best(self) -> bool | None:
        """Not significantly different from the best (None: cannot be judged)."""
        if self.is_best:
            return True
        return None if self.test.significant is None else not self.test.significant

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "strategy": self.strategy,
            "seeds": self.seeds,
            "runs": [r.run_dir.name for r in self.runs],
            self.ranking.metric: self.primary.to_dict(),
            self.ranking.second: self.secondary.to_dict(),
            f"extra_{self.ranking.metric}": {k: v.to_dict() for k, v in self.extra.items()},
            "wall_time_s": self.wall_time_s.to_dict(),
            "peak_rss_mb": self.peak_rss_mb.to_dict(),
            "trainable_params": self.trainable_params,
            "is_best": self.is_best,
            "test_vs_best": {"test": self.test.kind or None, "p": self.test.p},
            "not_significantly_worse_than_best": self.tied_with_best,
        }


def evaluated_split(records: Sequence[RunRecord]) -> str:
    """``test`` when every run has a test set, else ``validation``."""
    metric = ranking_of(records).metric
    return "test" if all(r.score(metric, "test") is not None for r in records) else "validation"


def extra_names(records: Sequence[RunRecord]) -> list[str]:
    names: list[str] = []
    for r in records:
        for name in r.results.get("extra") or {}:
            if name not in names:
                names.append(name)
    return names


def summarize(records: Sequence[RunRecord]) -> list[StrategySummary]:
    """Group runs by label; statistics per strategy; sorted best first (mean accuracy, or a
    regression's RMSE, on the test set, or on validation when a run has no test set); each
    compared to the best."""
    split = evaluated_split(records)
    ranking = ranking_of(records)
    metric, share = ranking.metric, ranking.share
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.label, []).append(r)

    def stat(
        rs: list[RunRecord], get: Callable[[RunRecord], float | None], share: bool = False
    ) -> Stat:
        values = [v for v in (get(r) for r in rs) if v is not None]
        return describe(values, bounds=(0.0, 1.0)) if share else describe(values)

    rows = []
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: r.seed)
        trainable = [v for v in (r.number("trainable_params") for r in rs) if v is not None]
        rows.append(
            StrategySummary(
                label=label,
                strategy=str(rs[0].results.get("strategy", label)),
                runs=rs,
                primary=stat(rs, lambda r: r.score(metric, split), share=share),
                secondary=stat(rs, lambda r: r.score(ranking.second, split), share=share),
                extra={
                    name: stat(rs, lambda r, n=name: r.score(metric, n), share=share)  # type: ignore[misc]
                    for name in extra_names(rs)
                },
                wall_time_s=stat(rs, lambda r: r.number("wall_time_s")),
                peak_rss_mb=stat(rs, lambda r: r.number("peak_rss_mb")),
                trainable_params=int(max(trainable)) if trainable else None,
                ranking=ranking,
            )
        )
    sign = -1.0 if ranking.higher_is_better else 1.0
    rows.sort(key=lambda s: sign * s.primary.mean if not math.isnan(s.primary.mean) else math.inf)
    if rows:
        best = rows[0]
        best.is_best = True
        by_seed = {r.seed: v for r in best.runs if (v := r.score(metric, split)) is not None}
        for row in rows[1:]:
            other = {r.seed: v for r in row.runs if (v := r.score(metric, split)) is not None}
            row.test = compare_to_best(by_seed, other)
    return rows


def significance_note(rows: Sequence[StrategySummary]) -> str:
    """One sentence on what the significance marks mean here, for the report and terminal."""
    most = max((s.primary.n for s in rows), default=0)
    name = rows[0].ranking.name if rows else "accuracy"
    if most < 2:
        return (
            "One seed per strategy: significance cannot be judged, and differences of a point or "
            "two may be noise. Run more seeds (--seeds 3) for intervals and tests."
        )
    kinds = sorted({s.test.kind for s in rows if s.test.kind})
    how = " and ".join(kinds) or "t-test"
    return (
        f"≈ marks strategies whose {name} is not significantly different from the best "
        f"({how}, two-sided, α = {ALPHA}; paired by seed where both ran the same seeds, since "
        "seeds share the data splits). No correction for multiple comparisons. "
        "Intervals: 95% Student t over seeds."
    )


# --------------------------------------------------------------------------------------------
# Transfer: the share of the source-only → oracle gap a method closes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """How much of the gap between a baseline (source-only) and an oracle (trained with the
    target's labels) each strategy closes, on each evaluation set both scored.

    ``closed[label][set]`` is ``(mean − baseline mean) / (oracle mean − baseline mean)`` of
    the ranking's metric over seeds (accuracy; a regression's RMSE): 0 is the baseline, 1 the
    oracle, a negative share a method that made the target worse. NaN when the oracle is no
    better than the baseline (no gap to close).
    """

    baseline: str
    sets: list[str]
    oracle: dict[str, Stat]
    closed: dict[str, dict[str, float]]


def gap_closed(
    rows: Sequence[StrategySummary], oracle_runs: Sequence[RunRecord], baseline: str
) -> Gap:
    """The :class:`Gap` of ``rows`` against ``oracle_runs`` (any number of seeds), measured
    on the extra evaluation sets that the rows and the oracle share (the target's test set).

    Raises:
        ValueError: ``baseline`` is not a row's label, or no extra set is shared.
    """
    by_label = {row.label: row for row in rows}
    if baseline not in by_label:
        raise ValueError(f"no strategy is labelled {baseline!r} (labels: {', '.join(by_label)})")
    ranking = rows[0].ranking
    sets = [name for name in extra_names(oracle_runs) if name in by_label[baseline].extra]
    if not sets:
        raise ValueError(
            "the oracle runs and the baseline share no extra evaluation set to measure a gap on"
        )
    oracle = {
        name: describe(
            [v for r in oracle_runs if (v := r.score(ranking.metric, name)) is not None],
            bounds=(0.0, 1.0) if ranking.share else (-math.inf, math.inf),
        )
        for name in sets
    }
    closed: dict[str, dict[str, float]] = {}
    for row in rows:
        closed[row.label] = {}
        for name in sets:
            base = by_label[baseline].extra[name].mean
            span = oracle[name].mean - base
            mean = row.extra[name].mean if name in row.extra else math.nan
            better = ranking.better(oracle[name].mean, base)
            closed[row.label][name] = (mean - base) / span if better else math.nan
    return Gap(baseline, sets, oracle, closed)
