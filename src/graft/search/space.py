"""The ``search:`` block of a config: what ``graft search`` varies, how, and for how long.

A search config is an ordinary run config plus one ``search:`` section. The section stays out of
:class:`graft.config.RunConfig` (so a trial's config hash is that of a plain run); it is read here
into a :class:`SearchSpec`, strictly (unknown keys refused, every error names its field, e.g.
``search.space.optim.lr.low``)::

    search:
      n_trials: 20
      timeout: 15m          # wall-time budget of one `graft search` invocation
      metric: val_accuracy  # val_accuracy | val_macro_f1 (maximised) or val_loss (minimised);
                            # regression: val_rmse | val_mae (minimised), val_r2 | val_spearman
      sampler: tpe          # grid | random | tpe | cmaes, or {name: tpe, n_startup_trials: 5}
      pruner: median        # none | median | successive_halving | hyperband, or a mapping
      seed: 0
      space:
        optim.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
        strategy.name: {type: categorical, choices: [full, discriminative, lp_ft]}
        strategy.decay: {type: float, low: 0.5, high: 0.95, when: {strategy.name: discriminative}}
        train.batch_size: {type: int, low: 16, high: 64, step: 16}

Each key of ``space`` is a dotted config field; a trial's sampled values are set on the base
config mapping and the result validated as a normal run config. ``when`` makes a parameter
conditional on the values of parameters declared before it (a list: any of these values).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from graft.config import set_dotted, validate
from graft.errors import UsageError
from graft.units import parse_duration

SEARCH_KEY = "search"
Scalar = str | int | float | bool | None
METRICS: dict[str, Literal["minimize", "maximize"]] = {
    "val_accuracy": "maximize",
    "val_macro_f1": "maximize",
    "val_loss": "minimize",
    "val_rmse": "minimize",  # regression (task: regression)
    "val_mae": "minimize",
    "val_r2": "maximize",
    "val_spearman": "maximize",
    "val_map": "maximize",  # multi-label (task: multilabel)
    "val_micro_f1": "maximize",
    "val_subset_accuracy": "maximize",
}
#: The search metrics each task's epochs record (val_loss: every task).
TASK_SEARCH_METRICS = {
    "classification": ("val_accuracy", "val_macro_f1", "val_loss"),
    "regression": ("val_rmse", "val_mae", "val_r2", "val_spearman", "val_loss"),
    "multilabel": ("val_map", "val_micro_f1", "val_macro_f1", "val_subset_accuracy", "val_loss"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- parameters


class _Param(_Strict):
    when: dict[str, Scalar | list[Scalar]] | None = Field(
        None, description="sample only when earlier parameters have these values"
    )

    def applies(self, sampled: Mapping[str, Any]) -> bool:
        """Whether the condition holds for the values sampled so far."""
        for key, wanted in (self.when or {}).items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if key not in sampled or sampled[key] not in allowed:
                return False
        return True


class FloatParam(_Param):
    """A float between ``low`` and ``high`` (inclusive); ``log`` or a ``step`` grid, not both."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class IntParam(_Param):
    """An integer between ``low`` and ``high`` (inclusive), every ``step``-th, or log-spaced."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log and step cannot be combined")
        return self


class CategoricalParam(_Param):
    """One of ``choices`` (YAML scalars: strings, numbers, booleans)."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if len({json.dumps(c) for c in self.choices}) != len(self.choices):
            raise ValueError("choices must be distinct")
        return self


Param = FloatParam | IntParam | CategoricalParam
_PARAM_TYPES: dict[str, type[BaseModel]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
}


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0 (got {low})")


# --------------------------------------------------------------------------- samplers, pruners


class TPESamplerConfig(_Strict):
    name: Literal["tpe"]
    n_startup_trials: int = Field(5, ge=0, description="random trials before TPE models")
    multivariate: bool = True


class RandomSamplerConfig(_Strict):
    name: Literal["random"]


class GridSamplerConfig(_Strict):
    name: Literal["grid"]


class CmaEsSamplerConfig(_Strict):
    name: Literal["cmaes"]
    n_startup_trials: int = Field(1, ge=0)


SamplerConfig = Annotated[
    TPESamplerConfig | RandomSamplerConfig | GridSamplerConfig | CmaEsSamplerConfig,
    Field(discriminator="name"),
]


class NoPrunerConfig(_Strict):
    name: Literal["none"]


class MedianPrunerConfig(_Strict):
    """Prune a trial whose intermediate value is worse than the median of earlier trials at the
    same epoch."""

    name: Literal["median"]
    n_startup_trials: int = Field(3, ge=0, description="trials that finish before any pruning")
    n_warmup_steps: int = Field(0, ge=0, description="epochs of a trial never pruned")
    interval_steps: int = Field(1, ge=1)


class SuccessiveHalvingPrunerConfig(_Strict):
    """Asynchronous successive halving (Li et al. 2020); resources are epochs."""

    name: Literal["successive_halving"]
    min_resource: int | Literal["auto"] = "auto"
    reduction_factor: int = Field(3, ge=2)
    min_early_stopping_rate: int = Field(0, ge=0)


class HyperbandPrunerConfig(_Strict):
    """Hyperband (Li et al. 2018) over successive-halving brackets; resources are epochs."""

    name: Literal["hyperband"]
    min_resource: int = Field(1, ge=1)
    max_resource: int | Literal["auto"] = "auto"
    reduction_factor: int = Field(3, ge=2)


PrunerConfig = Annotated[
    NoPrunerConfig | MedianPrunerConfig | SuccessiveHalvingPrunerConfig | HyperbandPrunerConfig,
    Field(discriminator="name"),
]


class SearchSpec(_Strict):
    """The validated ``search:`` section."""

    space: dict[str, Param] = Field(min_length=1)
    n_trials: int | None = Field(None, gt=0, description="total over all workers and resumes")
    timeout: float | None = Field(None, description="seconds (or 15m, 1h) per invocation")
    metric: Literal[
        "val_accuracy",
        "val_macro_f1",
        "val_loss",
        "val_rmse",
        "val_mae",
        "val_r2",
        "val_spearman",
        "val_map",
        "val_micro_f1",
        "val_subset_accuracy",
    ] = Field("val_accuracy", description="defaults: regression val_rmse, multilabel val_map")
    sampler: SamplerConfig = Field(default_factory=lambda: TPESamplerConfig(name="tpe"))
    pruner: PrunerConfig = Field(default_factory=lambda: MedianPrunerConfig(name="median"))
    seed: int = 0
    enqueue: list[dict[str, Scalar]] = Field(
        default_factory=list, description="points tried first, before the sampler's own"
    )

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return METRICS[self.metric]

    def digest(self) -> str:
        """A hash of what defines the study (space, metric, sampler, pruner), to refuse resuming
        a study with a different search."""
        keep = self.model_dump(mode="json", include={"space", "metric", "sampler", "pruner"})
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- parsing


def _loc(parts: Sequence[Any]) -> str:
    return ".".join(str(p) for p in parts)


def _errors(err: ValidationError, prefix: str) -> list[str]:
    out = []
    for e in err.errors():
        # Drop discriminator tags ("tpe", "median") from the location: the user never wrote them.
        loc = [p for p in e["loc"] if p not in _TAGS]
        field = ".".join(x for x in (prefix, _loc(loc)) if x)
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        msg = msg.removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            msg = f"unknown name {e['input'].get('name')!r}; " + msg.split(";")[-1].strip()
        lines = f"  {field}: {msg}"
        if "input" in e and not isinstance(e["input"], dict) and e["type"] != "missing":
            lines += f" (got {e['input']!r})"
        out.append(lines)
    return out


_TAGS = {
    "tpe",
    "random",
    "grid",
    "cmaes",
    "none",
    "median",
    "successive_halving",
    "hyperband",
}


def _named(value: Any) -> Any:
    """``sampler: tpe`` is short for ``sampler: {name: tpe}``."""
    return {"name": value} if isinstance(value, str) else value


def _parse_param(key: str, raw: Any, origin: str) -> Param:
    field = f"search.space.{key}"
    if not isinstance(raw, dict):
        raise UsageError(
            f"{origin}: {field}: a parameter is a mapping with a type, got {raw!r}",
            hint="e.g. {type: float, low: 1.0e-5, high: 1.0e-3, log: true}",
        )
    kind = raw.get("type")
    model = _PARAM_TYPES.get(str(kind))
    if model is None:
        raise UsageError(
            f"{origin}: {field}.type: unknown parameter type {kind!r}",
            hint=f"one of: {', '.join(_PARAM_TYPES)}",
        )
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as e:
        lines = "\n".join(_errors(e, field))
        raise UsageError(f"{origin}: invalid search space\n{lines}") from None


def parse_search(raw: Any, origin: str = "config") -> SearchSpec:
    """Validate a ``search:`` mapping (structure only; see :func:`check_against_config`)."""
    if not isinstance(raw, dict):
        raise UsageError(f"{origin}: search: must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    space_raw = raw.pop("space", None)
    if not isinstance(space_raw, dict) or not space_raw:
        raise UsageError(
            f"{origin}: search.space: give at least one parameter",
            hint="e.g. space: {optim.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}",
        )
    space = {str(k): _parse_param(str(k), v, origin) for k, v in space_raw.items()}
    if "timeout" in raw and raw["timeout"] is not None:
        raw["timeout"] = parse_duration(raw["timeout"], f"{origin}: search.timeout")
    for key in ("sampler", "pruner"):
        if key in raw:
            raw[key] = _named(raw[key])
    try:
        spec = SearchSpec.model_validate({**raw, "space": space})
    except ValidationError as e:
        lines = "\n".join(_errors(e, "search"))
        raise UsageError(f"{origin}: invalid search section\n{lines}") from None
    _check_conditions(spec, origin)
    _check_sampler_fits(spec, origin)
    for i, point in enumerate(spec.enqueue):
        unknown = [k for k in point if k not in spec.space]
        if unknown:
            raise UsageError(
                f"{origin}: search.enqueue.{i}: {', '.join(unknown)} not in search.space",
                hint="an enqueued point sets values of the space's parameters",
            )
    return spec


def _check_conditions(spec: SearchSpec, origin: str) -> None:
    seen: list[str] = []
    for key, param in spec.space.items():
        for cond in param.when or {}:
            if cond not in seen:
                raise UsageError(
                    f"{origin}: search.space.{key}.when: {cond!r} is not a parameter declared "
                    "before it",
                    hint="a condition refers to an earlier key of search.space",
                )
            if isinstance(param.when, dict):
                other = spec.space[cond]
                wanted = param.when[cond]
                values = wanted if isinstance(wanted, list) else [wanted]
                if isinstance(other, CategoricalParam) and not all(
                    v in other.choices for v in values
                ):
                    raise UsageError(
                        f"{origin}: search.space.{key}.when.{cond}: {wanted!r} is not among "
                        f"the choices {other.choices}"
                    )
        seen.append(key)


def grid_values(key: str, param: Param) -> list[Any]:
    """The finite values of a parameter for the grid sampler."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, IntParam):
        if param.log:
            raise UsageError(f"search.space.{key}: the grid sampler needs a step, not log")
        return list(range(param.low, param.high + 1, param.step))
    if param.step is None:
        raise UsageError(
            f"search.space.{key}: the grid sampler needs finite values: give this float a step",
            hint="or make it categorical: {type: categorical, choices: [1.0e-4, 3.0e-4, 1.0e-3]}",
        )
    n = math.floor((param.high - param.low) / param.step + 1e-9) + 1
    return [round(param.low + i * param.step, 12) for i in range(n)]


def grid_size(spec: SearchSpec) -> int:
    return math.prod(len(grid_values(k, p)) for k, p in spec.space.items())


def _check_sampler_fits(spec: SearchSpec, origin: str) -> None:
    name = spec.sampler.name
    if name == "grid":
        try:
            grid_size(spec)
        except UsageError as e:
            raise UsageError(f"{origin}: {e.message}", hint=e.hint) from None
    if name == "cmaes" and not any(
        isinstance(p, FloatParam | IntParam) for p in spec.space.values()
    ):
        raise UsageError(
            f"{origin}: search.sampler: cmaes searches float and int parameters, and this space "
            "has none",
            hint="use tpe or random for a purely categorical space",
        )
    if spec.n_trials is None and spec.timeout is None and name != "grid":
        raise UsageError(
            f"{origin}: search: give n_trials, timeout, or both",
            hint="e.g. n_trials: 20 and/or timeout: 15m",
        )


# --------------------------------------------------------------------------- config values


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the base config mapping with the sampled values set.

    When ``strategy.name`` is sampled and differs from the base's, the base's strategy
    parameters are dropped: they belong to the other strategy (``decay`` would break ``full``).
    """
    data: dict[str, Any] = json.loads(json.dumps(base))
    name = params.get("strategy.name")
    strategy = data.get("strategy")
    if name is not None and isinstance(strategy, dict) and strategy.get("name", "full") != name:
        data["strategy"] = {"name": name}
    for key, value in params.items():
        set_dotted(data, key, value, where=f"search.space.{key}")
    return data


def _probe_values(param: Param) -> list[Any]:
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    return [param.low, param.high]


def check_against_config(spec: SearchSpec, base: Mapping[str, Any], origin: str) -> None:
    """Refuse, before anything runs, a space that names no config field or a value the field
    cannot take: each parameter's bounds (or each choice) are set alone on the base config and
    validated. Combinations are not checked: a bad combination fails its trial."""
    from graft.strategies import get_strategy

    for key, param in spec.space.items():
        field = f"search.space.{key}"
        for value in _probe_values(param):
            if key == "strategy.name":
                get_strategy(str(value), f"{origin}: {field}")
            try:
                validate(apply_params(base, {key: value}), origin=origin)
            except UsageError as e:
                raise UsageError(
                    f"{origin}: {field}: the value {value!r} does not make a valid config:\n"
                    + e.message.split("\n", 1)[-1],
                    hint="a space key is a dotted config field, e.g. optim.lr or strategy.name",
                ) from None


def split_search(data: dict[str, Any], origin: str) -> tuple[dict[str, Any], SearchSpec]:
    """Take the ``search:`` section out of a config mapping; return (base config, spec)."""
    base = dict(data)
    raw = base.pop(SEARCH_KEY, None)
    if raw is None:
        raise UsageError(
            f"{origin}: no search: section",
            hint="add a search: section with a space (see README, `graft search`)",
        )
    spec = parse_search(raw, origin)
    task = validate(base, origin=origin).task
    if task != "classification" and "metric" not in spec.model_fields_set:
        spec.metric = TASK_SEARCH_METRICS[task][0]  # type: ignore[assignment]
    if spec.metric not in TASK_SEARCH_METRICS[task]:
        raise UsageError(
            f"{origin}: search.metric: {spec.metric} is not recorded for task {task}",
            hint=f"use one of {', '.join(TASK_SEARCH_METRICS[task])}",
        )
    check_against_config(spec, base, origin)
    return base, spec


# --------------------------------------------------------------------------- Optuna


def distributions(spec: SearchSpec) -> dict[str, Any]:
    """The Optuna distribution of every parameter, keyed by the dotted field."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for key, p in spec.space.items():
        if isinstance(p, FloatParam):
            out[key] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[key] = IntDistribution(p.low, p.high, log=p.log, step=p.step)
        else:
            out[key] = CategoricalDistribution(p.choices)
    return out


def suggest(trial: Any, spec: SearchSpec) -> dict[str, Any]:
    """Sample a trial's parameters in declared order, skipping those whose condition fails."""
    sampled: dict[str, Any] = {}
    for key, p in spec.space.items():
        if not p.applies(sampled):
            continue
        if isinstance(p, FloatParam):
            sampled[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            sampled[key] = trial.suggest_int(key, p.low, p.high, log=p.log, step=p.step)
        else:
            sampled[key] = trial.suggest_categorical(key, p.choices)
    return sampled
