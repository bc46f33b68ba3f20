"""Fine-tuning strategies, each a small function returning a plan over layer groups.

A strategy is registered by decorator and receives the backbone's group names (bottom to top, the
head last), the run's epoch budget, and its own keyword parameters from the config's
``strategy:`` section. Unknown parameters are refused with the field named.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from graft.errors import UsageError
from graft.strategies.plan import Phase, Plan

StrategyFn = Callable[..., Plan]
_STRATEGIES: dict[str, StrategyFn] = {}


def register_strategy(name: str) -> Callable[[StrategyFn], StrategyFn]:
    """Register a strategy; a second registration of a name is a bug and raises."""

    def decorate(fn: StrategyFn) -> StrategyFn:
        if name in _STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        _STRATEGIES[name] = fn
        return fn

    return decorate


def strategies() -> list[str]:
    """The registered strategy names, sorted."""
    return sorted(_STRATEGIES)


def get_strategy(name: str, field: str = "strategy.name") -> StrategyFn:
    """The registered strategy function; an unknown name is a :class:`UsageError` that names
    ``field`` and suggests the closest known name."""
    if name not in _STRATEGIES:
        close = difflib.get_close_matches(name, _STRATEGIES, n=1)
        raise UsageError(
            f"{field}: unknown strategy {name!r}",
            hint=(f"did you mean {close[0]!r}? " if close else "")
            + f"known: {', '.join(strategies())}",
        )
    return _STRATEGIES[name]


def strategy_parameters(name: str) -> list[str]:
    """The parameters strategy ``name`` takes from the config (besides groups and epochs)."""
    return [
        p for p in inspect.signature(get_strategy(name)).parameters if p not in {"groups", "epochs"}
    ]


def check_strategy(name: str, params: Mapping[str, Any], where: str = "strategy") -> None:
    """Refuse an unknown strategy or a parameter it does not take; messages name ``where``
    (``strategy.name``, ``strategy.decay``; ``compare.strategies[2]``, ...)."""
    get_strategy(name, f"{where}.name" if where == "strategy" else where)
    accepted = strategy_parameters(name)
    for key in params:
        if key not in accepted:
            raise UsageError(
                f"{where}.{key}: not a parameter of strategy {name!r}",
                hint=f"it takes: {', '.join(accepted) or 'no parameters'}",
            )


def strategy_summaries() -> dict[str, str]:
    """Each strategy's name and the first line of its docstring, sorted by name."""
    return {n: (_STRATEGIES[n].__doc__ or "").strip().splitlines()[0] for n in strategies()}


def build_plan(name: str, params: dict[str, Any], *, groups: Sequence[str], epochs: int) -> Plan:
    """The plan of strategy ``name`` for these groups; checks parameter names and the result."""
    check_strategy(name, params)
    try:
        plan = get_strategy(name)(groups=list(groups), epochs=epochs, **params)
    except (TypeError, ValueError) as e:
        raise UsageError(f"strategy {name!r}: {e}") from None
    plan.validate(groups)
    return plan


@register_strategy("full")
def full(groups: list[str], epochs: int) -> Plan:
    """Every group trains at the same learning rate: the usual full fine-tuning."""
    return Plan("full", (Phase("full", tuple(groups), epochs),))


@register_strategy("linear_probe")
def linear_probe(groups: list[str], epochs: int) -> Plan:
    """Only the new head trains on frozen pretrained features (feature extraction)."""
    return Plan("linear_probe", (Phase("head", ("head",), epochs),))


@register_strategy("custom")
def custom(groups: list[str], epochs: int, phases: list[dict[str, Any]]) -> Plan:
    """Phases written out in the config; ``train: all`` means every group."""
    out = []
    for i, p in enumerate(phases):
        if not isinstance(p, dict) or "train" not in p:
            raise ValueError(f"phases[{i}] must be a mapping with at least `train`")
        train = p["train"]
        train = (
            tuple(groups) if train == "all" else tuple([train] if isinstance(train, str) else train)
        )
        out.append(
            Phase(
                name=str(p.get("name", f"phase{i}")),
                train=train,
                epochs=int(p.get("epochs", epochs)),
                lr_mult={str(k): float(v) for k, v in p.get("lr_mult", {}).items()},
                lr_scale=float(p.get("lr_scale", 1.0)),
                params=p.get("params", "all"),
                patience=p.get("patience"),
                bn=p.get("bn", "train"),
            )
        )
    return Plan("custom", tuple(out))


__all__ = [
    "Phase",
    "Plan",
    "build_plan",
    "check_strategy",
    "get_strategy",
    "register_strategy",
    "strategies",
    "strategy_parameters",
    "strategy_summaries",
]

from graft.strategies import catalog as _catalog  # noqa: E402,F401  (registers the catalogue)
