"""The spec of a ``graft compare`` and the runs it plans.

The spec is the ``compare:`` block of a YAML config (or command-line options): which strategies
(optionally labelled, with their own parameters), how many seeds, and per-strategy config
overrides (a linear probe wants a higher LR than a full fine-tune). It is kept out of
:class:`~graft.config.RunConfig`, so each run's config hash is that of a plain ``graft fit``.
Planning turns base config × spec into one complete run config per strategy × seed; the manifest
(``compare.json``) records them so that a rerun resumes and a changed spec is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from graft.atomic import atomic_write_text
from graft.config import (
    RunConfig,
    apply_override,
    config_hash,
    set_dotted,
    validate,
)
from graft.errors import DataError, UsageError
from graft.strategies import check_strategy, strategies
from graft.strategies import strategies as strategies_registered
from graft.yaml_file import read_yaml

MANIFEST = "compare.json"
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


def check_spec(spec: CompareSpec, origin: str = "config") -> None:
    """The checks of :func:`parse_spec` that go beyond types (also run after CLI options)."""
    labels: dict[str, int] = {}
    for i, entry in enumerate(spec.strategies):
        where = f"{origin}: compare.strategies[{i}]"
        check_strategy(entry.name, entry.params(), where)
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
        names = [s.strip() for s in strategies.split(",")]
        if not any(names):
            raise UsageError("--strategies: give comma-separated names, e.g. full,linear_probe")
        if "" in names:  # `full,,lp_ft`: item 2 is empty; numbering by position keeps it honest
            raise UsageError(f"--strategies: item {names.index('') + 1} is empty ({strategies!r})")
        by_key = {e["label"] if "label" in e else e["name"]: e for e in data.get("strategies", [])}
        data["strategies"] = [by_key.get(n, {"name": n}) for n in names]
        # The block's overrides for labelled entries left out here are not this compare's.
        left_out = set(by_key) - set(names) - set(strategies_registered())
        overrides = data.get("overrides") or {}
        data["overrides"] = {k: v for k, v in overrides.items() if k not in left_out}
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
                    set_dotted(
                        data, dotted, value, where=f"compare.overrides.{key}.{dotted}", merge=True
                    )
            data.setdefault("train", {})["seed"] = seed
            data["output"] = {"dir": str(compare_dir), "name": f"{entry.key}-seed{seed}"}
            if mlflow := (base.get("output") or {}).get("mlflow"):  # each run tracked, nested
                data["output"]["mlflow"] = mlflow
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
