"""``graft compare``: every strategy × seed on the same splits and budget, resumable, with
statistics over seeds.

A compare is a base run config plus a *spec* (the ``compare:`` block of the YAML, or command-line
options): which strategies (optionally labelled, with their own parameters), how many seeds, and
per-strategy config overrides (a linear probe wants a higher LR than a full fine-tune). The spec
is kept out of :class:`~graft.config.RunConfig`, so each run's config hash is that of a plain
``graft fit``.

Everything lives in one directory, ``output.dir/compare-<name>/``::

    compare.json          the manifest: spec, the planned runs and a hash over their configs
    configs/<run>.yaml    each run's exact config (``graft fit`` can rerun it alone)
    <label>-seed<k>/      each run's directory, as ``graft fit`` writes it
    summary.json / .csv   per-strategy statistics (one row per strategy)
    runs.csv              one row per finished run
    report.html           the comparison report (``graft.compare_report``)

Resume is by construction: a run whose directory holds ``results.json`` is done, one with a
checkpoint continues from it, and the rest start. A different spec in the same directory is
refused rather than mixed in.

Only the data split seed (``data.seed``) is shared; seeds vary ``train.seed`` (initialization of
the head, batch order, dropout). By default each run is a child process (``graft fit`` in a fresh
interpreter), so that its peak memory and wall time are its own and memory is returned between
runs.

This module imports neither torch nor matplotlib at import time: ``graft report`` uses its
statistics without loading a model stack.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from graft.atomic import atomic_write_text
from graft.checkpoint import config_hash
from graft.config import RunConfig, apply_override, dump_config, read_yaml, validate
from graft.console import RunLog
from graft.errors import DataError, GraftError, UsageError

MANIFEST = "compare.json"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
RUNS_CSV = "runs.csv"
REPORT = "report.html"
CHECKPOINT = "checkpoint.pt"  # graft.checkpoint.CHECKPOINT, without importing torch here
RESULTS = "results.json"
ALPHA = 0.05
# Fields a per-strategy override may not touch: they would break "same splits, same seeds"
# or move the run out of the compare directory.
_FIXED_PREFIXES = ("data", "train.seed", "output")


# --------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------


class StrategyEntry(BaseModel):
    """One strategy of a compare: a registered name, an optional label (to run the same strategy
    twice with different parameters), and the strategy's own parameters beside them."""

    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @property
    def key(self) -> str:
        """How the strategy is named in run names, overrides and the report."""
        return self.label or self.name

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CompareSpec(BaseModel):
    """The ``compare:`` block: strategies × seeds, with per-strategy overrides."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="compare directory: output.dir/compare-<name>")
    strategies: list[StrategyEntry] = Field(min_length=1)
    seeds: int | list[int] = Field(3, description="a count (train.seed, +1, ...) or the seeds")
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def seed_values(self, base_seed: int) -> list[int]:
        """The ``train.seed`` of each repetition."""
        if isinstance(self.seeds, int):
            return [base_seed + i for i in range(self.seeds)]
        return list(self.seeds)


def _loc(parts: Sequence[Any]) -> str:
    out = "compare"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_spec(data: Any, origin: str = "config") -> CompareSpec:
    """Validate a ``compare:`` mapping; errors name the field (``compare.strategies[2]``).

    Checks beyond types: known strategy names (with a suggestion), parameters the strategy takes,
    unique labels, a positive seed count / unique seeds, and overrides that name a strategy of
    the spec and leave the data, seeds and output alone.
    """
    if not isinstance(data, dict):
        raise UsageError(f"{origin}: compare: must be a mapping (strategies, seeds, overrides)")
    try:
        spec = CompareSpec.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = [p for p in err["loc"] if p not in ("str", "int", "list[int]")]
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {_loc(loc)}: {msg}")
        raise UsageError(f"{origin}: invalid compare block\n" + "\n".join(lines)) from None
    check_spec(spec, origin)
    return spec


def _check_strategy(entry: StrategyEntry, where: str) -> None:
    import difflib

    from graft.strategies import _STRATEGIES, strategies

    if entry.name not in _STRATEGIES:
        close = difflib.get_close_matches(entry.name, _STRATEGIES, n=1)
        raise UsageError(
            f"{where}: unknown strategy {entry.name!r}",
            hint=(f"did you mean {close[0]!r}? " if close else "")
            + f"known: {', '.join(strategies())}",
        )
    accepted = [
        p
        for p in inspect.signature(_STRATEGIES[entry.name]).parameters
        if p not in {"groups", "epochs"}
    ]
    for key in entry.params():
        if key not in accepted:
            raise UsageError(
                f"{where}.{key}: not a parameter of strategy {entry.name!r}",
                hint=f"it takes: {', '.join(accepted) or 'no parameters'}",
            )


def check_spec(spec: CompareSpec, origin: str = "config") -> None:
    """The checks of :func:`parse_spec` that go beyond types (also run after CLI options)."""
    labels: dict[str, int] = {}
    for i, entry in enumerate(spec.strategies):
        where = f"{origin}: compare.strategies[{i}]"
        _check_strategy(entry, where)
        if entry.key in labels:
            raise UsageError(
                f"{where}: {entry.key!r} is already compare.strategies[{labels[entry.key]}]",
                hint="give one of them a distinct `label:`",
            )
        if not entry.key.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise UsageError(f"{where}: label {entry.key!r}: use letters, digits, _ - .")
        labels[entry.key] = i
    if isinstance(spec.seeds, int) and not 1 <= spec.seeds <= 100:
        raise UsageError(f"{origin}: compare.seeds: a count from 1 to 100 (got {spec.seeds})")
    if isinstance(spec.seeds, list) and (not spec.seeds or len(set(spec.seeds)) != len(spec.seeds)):
        raise UsageError(f"{origin}: compare.seeds: a non-empty list of distinct seeds")
    from graft.strategies import strategies

    known = set(labels) | set(strategies())
    for key, values in spec.overrides.items():
        if key not in known:
            raise UsageError(
                f"{origin}: compare.overrides.{key}: not a strategy of compare.strategies",
                hint=f"strategies: {', '.join(labels)}",
            )
        for dotted in values:
            if any(dotted == p or dotted.startswith(p + ".") for p in _FIXED_PREFIXES):
                raise UsageError(
                    f"{origin}: compare.overrides.{key}.{dotted}: the same for every run of a "
                    "compare (data, train.seed and output are fixed)",
                    hint="set it in the base config instead",
                )


def load_compare(
    path: str | Path, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], CompareSpec | None]:
    """Read a compare config: the base run config (as a mapping, overrides applied, validated)
    and the ``compare:`` block (``None`` when the file has none)."""
    data = read_yaml(Path(path))
    block = data.pop("compare", None)
    for override in overrides:
        apply_override(data, override)
    validate(data, origin=str(path))  # the base alone is a valid run config
    spec = parse_spec(block, str(path)) if block is not None else None
    return data, spec


def spec_from_options(
    spec: CompareSpec | None,
    *,
    strategies: str | None = None,
    seeds: str | None = None,
    name: str | None = None,
) -> CompareSpec:
    """The spec of the YAML with command-line options applied (``--strategies a,b --seeds 3``);
    command-line strategies replace the block's, the block's overrides for them still apply."""
    data: dict[str, Any] = spec.model_dump(exclude_none=True) if spec is not None else {}
    if spec is not None:
        data["strategies"] = [
            {"name": e.name, **({"label": e.label} if e.label else {}), **e.params()}
            for e in spec.strategies
        ]
    if strategies is not None:
        names = [s.strip() for s in strategies.split(",") if s.strip()]
        if not names:
            raise UsageError("--strategies: give comma-separated names, e.g. full,linear_probe")
        by_key = {e["label"] if "label" in e else e["name"]: e for e in data.get("strategies", [])}
        data["strategies"] = [by_key.get(n, {"name": n}) for n in names]
    if seeds is not None:
        try:
            parts = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise UsageError(f"--seeds: a count (3) or a list (0,1,2), got {seeds!r}") from None
        data["seeds"] = parts if "," in seeds else parts[0]
    if name is not None:
        data["name"] = name
    if not data.get("strategies"):
        raise UsageError(
            "graft compare needs strategies",
            hint="--strategies full,linear_probe,lp_ft or a `compare: {strategies: [...]}` block",
        )
    return parse_spec(data, "command line" if spec is None else "compare")


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    """One strategy × seed of a compare, with its complete run config."""

    label: str
    strategy: str
    seed: int
    config: RunConfig
    config_hash: str

    @property
    def name(self) -> str:
        return f"{self.label}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output.dir) / self.name


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    node = data
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"{where}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        node[parts[-1]] = {**node[parts[-1]], **value}  # a section: merge, as YAML nesting reads
    else:
        node[parts[-1]] = value


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_config_hash(config: RunConfig) -> str:
    """The hash ``graft fit`` gives this config (training settings, not output or progress)."""
    return config_hash(config.to_dict())


def compare_dir_for(base: Mapping[str, Any], spec: CompareSpec, default_name: str) -> Path:
    """``output.dir/compare-<name>`` (the spec's name, else ``default_name``)."""
    out = (base.get("output") or {}).get("dir", "runs")
    return Path(out) / f"compare-{spec.name or default_name}"


def plan_runs(
    base: Mapping[str, Any], spec: CompareSpec, compare_dir: Path, origin: str = "config"
) -> list[PlannedRun]:
    """Every strategy × seed, seed-major (all strategies of the first seed first, so that an
    interrupted compare already compares every strategy), each a validated run config."""
    base_seed = int((base.get("train") or {}).get("seed", 0))
    runs = []
    for seed in spec.seed_values(base_seed):
        for i, entry in enumerate(spec.strategies):
            data = copy.deepcopy(dict(base))
            # The base config's strategy section is replaced, parameters included.
            data["strategy"] = {"name": entry.name, **entry.params()}
            # Overrides by strategy name first, then by label (the more specific wins).
            for key in dict.fromkeys((entry.name, entry.key)):
                for dotted, value in spec.overrides.get(key, {}).items():
                    _set_dotted(data, dotted, value, f"compare.overrides.{key}.{dotted}")
            data.setdefault("train", {})["seed"] = seed
            data["output"] = {"dir": str(compare_dir), "name": f"{entry.key}-seed{seed}"}
            config = validate(data, origin=f"{origin} (compare.strategies[{i}], seed {seed})")
            runs.append(PlannedRun(entry.key, entry.name, seed, config, run_config_hash(config)))
    return runs


def manifest(spec: CompareSpec, runs: Sequence[PlannedRun], source: str) -> dict[str, Any]:
    """The content of ``compare.json``; ``spec_hash`` covers every run's name and config."""
    listed = [
        {
            "name": r.name,
            "label": r.label,
            "strategy": r.strategy,
            "seed": r.seed,
            "config_hash": r.config_hash,
        }
        for r in runs
    ]
    return {
        "format": 1,
        "spec": spec.model_dump(mode="json"),
        "spec_hash": _hash(listed),
        "source": source,
        "runs": listed,
    }


def read_manifest(compare_dir: Path) -> dict[str, Any]:
    path = Path(compare_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path}: file not found", hint="is this a graft compare directory?"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise DataError(f"{path}: not a graft compare manifest")
    return data


def _spec_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    before = {r["name"]: r.get("config_hash") for r in old.get("runs", [])}
    after = {r["name"]: r["config_hash"] for r in new["runs"]}
    parts = []
    if added := sorted(set(after) - set(before)):
        parts.append("new runs " + ", ".join(added))
    if removed := sorted(set(before) - set(after)):
        parts.append("runs no longer planned " + ", ".join(removed))
    if changed := sorted(n for n in set(before) & set(after) if before[n] != after[n]):
        parts.append("a different config for " + ", ".join(changed))
    return "; ".join(parts) or "a different spec"


def open_compare_dir(compare_dir: Path, content: dict[str, Any], resume: bool) -> bool:
    """Create the compare directory or check that it holds this very compare; returns whether
    it is resumed. A different spec is refused: results of two specs never mix."""
    path = compare_dir / MANIFEST
    if path.is_file():
        old = read_manifest(compare_dir)
        if old.get("spec_hash") != content["spec_hash"]:
            raise UsageError(
                f"{compare_dir}: holds a different compare ({_spec_difference(old, content)})",
                hint="give this compare another name (--name, compare.name), or delete the "
                "directory to start over",
            )
        return True
    if resume:
        raise DataError(
            f"{compare_dir}: no compare to resume here",
            hint="start it without --resume",
        )
    if compare_dir.exists() and any(compare_dir.iterdir()):
        raise UsageError(
            f"{compare_dir}: exists and is not a graft compare directory (no {MANIFEST})",
            hint="choose another name (--name) or output.dir",
        )
    compare_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(content, indent=1))
    return False


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
    """One leaderboard row: a strategy's statistics over its seeds."""

    label: str
    strategy: str
    runs: list[RunRecord]
    accuracy: Stat
    macro_f1: Stat
    extra: dict[str, Stat]
    wall_time_s: Stat
    peak_rss_mb: Stat
    trainable_params: int | None
    test: Test = field(default_factory=lambda: Test("", None))
    is_best: bool = False

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
            "accuracy": self.accuracy.to_dict(),
            "macro_f1": self.macro_f1.to_dict(),
            "extra_accuracy": {k: v.to_dict() for k, v in self.extra.items()},
            "wall_time_s": self.wall_time_s.to_dict(),
            "peak_rss_mb": self.peak_rss_mb.to_dict(),
            "trainable_params": self.trainable_params,
            "is_best": self.is_best,
            "test_vs_best": {"test": self.test.kind or None, "p": self.test.p},
            "not_significantly_worse_than_best": self.tied_with_best,
        }


def evaluated_split(records: Sequence[RunRecord]) -> str:
    """``test`` when every run has a test set, else ``validation``."""
    return "test" if all(r.score("accuracy", "test") is not None for r in records) else "validation"


def extra_names(records: Sequence[RunRecord]) -> list[str]:
    names: list[str] = []
    for r in records:
        for name in r.results.get("extra") or {}:
            if name not in names:
                names.append(name)
    return names


def summarize(records: Sequence[RunRecord]) -> list[StrategySummary]:
    """Group runs by label; statistics per strategy; sorted best first (mean accuracy on the
    test set, or on validation when a run has no test set); each compared to the best."""
    split = evaluated_split(records)
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
                accuracy=stat(rs, lambda r: r.score("accuracy", split), share=True),
                macro_f1=stat(rs, lambda r: r.score("macro_f1", split), share=True),
                extra={
                    name: stat(rs, lambda r, n=name: r.score("accuracy", n), share=True)  # type: ignore[misc]
                    for name in extra_names(rs)
                },
                wall_time_s=stat(rs, lambda r: r.number("wall_time_s")),
                peak_rss_mb=stat(rs, lambda r: r.number("peak_rss_mb")),
                trainable_params=int(max(trainable)) if trainable else None,
            )
        )
    rows.sort(key=lambda s: -s.accuracy.mean if not math.isnan(s.accuracy.mean) else math.inf)
    if rows:
        best = rows[0]
        best.is_best = True
        by_seed = {r.seed: v for r in best.runs if (v := r.score("accuracy", split)) is not None}
        for row in rows[1:]:
            other = {r.seed: v for r in row.runs if (v := r.score("accuracy", split)) is not None}
            row.test = compare_to_best(by_seed, other)
    return rows


def significance_note(rows: Sequence[StrategySummary]) -> str:
    """One sentence on what the significance marks mean here, for the report and terminal."""
    most = max((s.accuracy.n for s in rows), default=0)
    if most < 2:
        return (
            "One seed per strategy: significance cannot be judged, and differences of a point or "
            "two may be noise. Run more seeds (--seeds 3) for intervals and tests."
        )
    kinds = sorted({s.test.kind for s in rows if s.test.kind})
    how = " and ".join(kinds) or "t-test"
    return (
        f"≈ marks strategies whose accuracy is not significantly different from the best "
        f"({how}, two-sided, α = {ALPHA}; paired by seed where both ran the same seeds, since "
        "seeds share the data splits). No correction for multiple comparisons. "
        "Intervals: 95% Student t over seeds."
    )


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _in_process(run: PlannedRun, resume: Path | None, quiet: bool) -> None:
    from graft import run as run_module  # looked up at call time: tests count the calls

    run_module.fit(run.config, resume=resume if resume is not None else False, quiet=quiet)


def _in_child(run: PlannedRun, config_path: Path, resume: Path | None, quiet: bool) -> None:
    """``graft fit`` in a fresh interpreter: its peak RSS and wall time are the run's own."""
    cmd = [sys.executable, "-m", "graft.cli", "fit", str(config_path)]
    if resume is not None:
        cmd += ["--resume", str(resume)]
    if quiet:
        cmd.append("--quiet")
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False).returncode
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        error = UsageError if code == 2 else DataError if code == 3 else GraftError
        raise error(
            f"run {run.name} failed (exit code {code}; its error is printed above)",
            hint=f"rerun it alone: graft fit {config_path}; `graft compare` again resumes the rest",
        )


def run_state(run_dir: Path) -> str:
    """``done`` (results.json), ``partial`` (a checkpoint to resume), ``stale`` (a directory
    with neither: killed before its first epoch ended) or ``new``."""
    if (run_dir / RESULTS).is_file():
        return "done"
    if (run_dir / CHECKPOINT).is_file():
        return "partial"
    return "stale" if run_dir.exists() else "new"


def load_record(run: PlannedRun, isolated: bool = True) -> RunRecord:
    from graft.report import load_run

    data = load_run(run.run_dir)
    return RunRecord(
        run.label, run.seed, run.run_dir, data.results, data.history, data.config_text, isolated
    )


@dataclass
class CompareResult:
    """What :func:`run_compare` returns."""

    compare_dir: Path
    records: list[RunRecord]
    summary: list[StrategySummary]
    report: Path | None
    ran: int  # runs trained (or continued) by this call
    skipped: int  # finished before this call


def _fmt_stat(s: Stat, pct: bool = True) -> str:
    if math.isnan(s.mean):
        return "–"
    scale = 100.0 if pct else 1.0
    if math.isnan(s.std):
        return f"{scale * s.mean:.2f}"
    return f"{scale * s.mean:.2f} ± {scale * s.std:.2f}"


def summary_table(rows: Sequence[StrategySummary]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the terminal leaderboard."""
    extras = extra_names([r for s in rows for r in s.runs])
    headers = [
        "strategy",
        "seeds",
        "acc %",
        "macro-F1 %",
        *[f"{e} acc %" for e in extras],
        "time s",
        "trainable",
        "peak MiB",
        "vs best",
    ]
    out = []
    for s in rows:
        mark = (
            "best"
            if s.is_best
            else {True: "≈", False: f"worse (p={s.test.p:.3f})", None: "?"}[s.tied_with_best]
        )
        out.append(
            [
                s.label,
                str(s.accuracy.n),
                _fmt_stat(s.accuracy),
                _fmt_stat(s.macro_f1),
                *[_fmt_stat(s.extra[e]) if e in s.extra else "–" for e in extras],
                f"{s.wall_time_s.mean:.1f}" if not math.isnan(s.wall_time_s.mean) else "–",
                f"{s.trainable_params:,.0f}" if s.trainable_params is not None else "–",
                f"{s.peak_rss_mb.mean:,.0f}" if not math.isnan(s.peak_rss_mb.mean) else "–",
                mark,
            ]
        )
    return headers, out


def write_summary(compare_dir: Path, rows: Sequence[StrategySummary]) -> None:
    """``summary.json`` (statistics per strategy), ``summary.csv`` (the leaderboard) and
    ``runs.csv`` (one line per run)."""
    records = [r for s in rows for r in s.runs]
    split = evaluated_split(records) if records else "test"
    extras = extra_names(records)
    atomic_write_text(
        compare_dir / SUMMARY_JSON,
        json.dumps(
            {"evaluated_on": split, "alpha": ALPHA, "strategies": [s.to_dict() for s in rows]},
            indent=1,
        ),
    )

    def csv_text(header: list[str], lines: list[list[Any]]) -> str:
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(lines)
        return buffer.getvalue()

    header = [
        "strategy",
        "label",
        "seeds",
        f"{split}_accuracy_mean",
        f"{split}_accuracy_std",
        "ci95_low",
        "ci95_high",
        "macro_f1_mean",
        "macro_f1_std",
        *[f"{e}_accuracy_mean" for e in extras],
        "wall_time_s_mean",
        "trainable_params",
        "peak_rss_mb_mean",
        "p_vs_best",
        "not_significantly_worse_than_best",
    ]
    lines = [
        [
            s.strategy,
            s.label,
            s.accuracy.n,
            s.accuracy.mean,
            s.accuracy.std,
            s.accuracy.low,
            s.accuracy.high,
            s.macro_f1.mean,
            s.macro_f1.std,
            *[s.extra[e].mean if e in s.extra else "" for e in extras],
            s.wall_time_s.mean,
            s.trainable_params,
            s.peak_rss_mb.mean,
            "" if s.test.p is None else s.test.p,
            "" if s.tied_with_best is None else s.tied_with_best,
        ]
        for s in rows
    ]
    atomic_write_text(compare_dir / SUMMARY_CSV, csv_text(header, lines))
    run_header = [
        "run",
        "label",
        "strategy",
        "seed",
        f"{split}_accuracy",
        "macro_f1",
        *[f"{e}_accuracy" for e in extras],
        "best_epoch",
        "wall_time_s",
        "trainable_params",
        "peak_rss_mb",
    ]
    run_lines = [
        [
            r.run_dir.name,
            r.label,
            r.results.get("strategy"),
            r.seed,
            r.score("accuracy", split),
            r.score("macro_f1", split),
            *[r.score("accuracy", e) for e in extras],
            r.results.get("best_epoch"),
            r.number("wall_time_s"),
            r.results.get("trainable_params"),
            r.number("peak_rss_mb"),
        ]
        for r in records
    ]
    atomic_write_text(compare_dir / RUNS_CSV, csv_text(run_header, run_lines))


def run_compare(
    base: Mapping[str, Any],
    spec: CompareSpec,
    *,
    default_name: str = "compare",
    source: str = "config",
    resume: bool = False,
    isolate: bool = True,
    quiet: bool = False,
    verbose: bool = False,
    report: bool = True,
) -> CompareResult:
    """Plan every strategy × seed, run those not finished yet, summarize, write the report.

    ``base`` is the run config mapping (without ``compare:``). ``resume=True`` insists that the
    compare directory already exists; without it an existing directory of the same spec is
    resumed anyway, and one of a different spec is refused. ``isolate`` runs each ``graft fit``
    in a child process; ``verbose`` shows each run's own log.
    """
    log = RunLog(quiet=quiet)
    compare_dir = compare_dir_for(base, spec, default_name)
    runs = plan_runs(base, spec, compare_dir, source)  # every config checked before any run
    resumed = open_compare_dir(compare_dir, manifest(spec, runs, source), resume)
    log.attach(compare_dir / "log.txt")
    states = {r.name: run_state(r.run_dir) for r in runs}
    done = sum(s == "done" for s in states.values())
    log(
        f"compare {compare_dir}: {len(spec.strategies)} strategies × "
        f"{len(spec.seed_values(0))} seeds = {len(runs)} runs"
        + (f"; resuming, {done} finished" if resumed else "")
    )
    isolated = _isolation_record(compare_dir)
    ran = 0
    for i, run in enumerate(runs, start=1):
        state = states[run.name]
        if state == "done":
            continue
        if state == "stale":  # killed before its first checkpoint: nothing to keep
            shutil.rmtree(run.run_dir)
        config_path = compare_dir / "configs" / f"{run.name}.yaml"
        config_path.parent.mkdir(exist_ok=True)
        atomic_write_text(config_path, dump_config(run.config))
        resume_dir = run.run_dir if state == "partial" else None
        log(
            f"[{i}/{len(runs)}] {run.label} seed {run.seed}" + (" (resuming)" if resume_dir else "")
        )
        started = time.perf_counter()
        if isolate:
            _in_child(run, config_path, resume_dir, quiet=not verbose)
        else:
            _in_process(run, resume_dir, quiet=not verbose)
        isolated[run.name] = isolate
        atomic_write_text(compare_dir / "isolation.json", json.dumps(isolated))
        ran += 1
        record = load_record(run)
        acc = record.score("accuracy", "test") or record.score("accuracy", "validation")
        log(
            f"[{i}/{len(runs)}] {run.label} seed {run.seed}: accuracy "
            + ("–" if acc is None else f"{acc:.4f}")
            + f" in {time.perf_counter() - started:.1f}s"
        )
    records = [load_record(r, isolated.get(r.name, True)) for r in runs]
    rows = summarize(records)
    write_summary(compare_dir, rows)
    headers, table = summary_table(rows)
    # A leaderboard wraps badly at 80 columns; a log or a pipe takes a wide one as well.
    log.console.width = max(log.console.width, 150)
    log.table(f"compare {compare_dir.name}: {evaluated_split(records)} set", headers, table)
    log(significance_note(rows))
    report_path = None
    if report:
        from graft.compare_report import write_compare_report

        report_path = write_compare_report(
            records,
            compare_dir / REPORT,
            title=f"graft compare · {compare_dir.name.removeprefix('compare-')}",
            spec_text=dump_spec(spec),
        )
        log(f"report: {report_path}")
    return CompareResult(compare_dir, records, rows, report_path, ran, len(runs) - ran)


def _isolation_record(compare_dir: Path) -> dict[str, bool]:
    """Which runs ran in a child process (read back on resume)."""
    path = compare_dir / "isolation.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): bool(v) for k, v in data.items()} if isinstance(data, dict) else {}


def compare(
    config: str | Path,
    overrides: Sequence[str] = (),
    *,
    strategies: str | None = None,
    seeds: str | None = None,
    name: str | None = None,
    resume: bool = False,
    isolate: bool = True,
    quiet: bool = False,
    verbose: bool = False,
) -> CompareResult:
    """``graft compare CONFIG``: read the config and its ``compare:`` block, apply the options
    (``strategies="full,linear_probe"``, ``seeds="3"`` or ``"0,1,2"``), and run it."""
    base, block = load_compare(config, overrides)
    spec = spec_from_options(block, strategies=strategies, seeds=seeds, name=name)
    return run_compare(
        base,
        spec,
        default_name=Path(config).stem,
        source=str(config),
        resume=resume,
        isolate=isolate,
        quiet=quiet,
        verbose=verbose,
    )


def dump_spec(spec: CompareSpec) -> str:
    """The spec as a YAML ``compare:`` block."""
    return yaml.safe_dump(
        {"compare": spec.model_dump(mode="json", exclude_none=True)}, sort_keys=False
    )
