"""The catalogue of fine-tuning strategies from the literature, each a small plan function.

Every function takes the backbone's group names (bottom to top, ``head`` last) and the run's epoch
budget (``train.epochs``), plus its own keyword parameters from the config's ``strategy:`` section,
and returns a :class:`Plan`. Bad parameters raise ``ValueError``, which
:func:`graft.strategies.build_plan` turns into a usage error that names the strategy.

Epoch budgets: the single-phase strategies use exactly ``epochs``. The multi-phase ones say in
their docstrings how they spend it; a plan is longer than the budget only where it has to be to
give every phase at least one epoch (``gradual``, ``lp_ft`` with ``epochs=1``) or where the paper's
recipe adds phases in front of the full fine-tune (``chain_thaw``). ``docs/strategies.md`` has the
papers and the when-to-use notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from graft.strategies import register_strategy
from graft.strategies.plan import Phase, Plan

HEAD = "head"


def _body(groups: list[str]) -> list[str]:
    """The groups below the head, bottom to top."""
    if not groups or groups[-1] != HEAD:
        raise ValueError(f"the last layer group must be {HEAD!r}, got {groups}")
    return groups[:-1]


def _int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` as an int in [low, high], else a ValueError that names the parameter."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}{why}, got {value}")
    return value


def _float(name: str, value: object, *, low: float, high: float | None = None) -> float:
    """``value`` as a float in (low, high], else a ValueError that names the parameter."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not x > low or (high is not None and x > high):
        bound = f"greater than {low}" + ("" if high is None else f" and at most {high}")
        raise ValueError(f"{name} must be {bound}, got {value}")
    return x


def _top(body: list[str], k: int) -> tuple[str, ...]:
    """The top ``k`` body groups, bottom to top (``body[-0:]`` would be all of them)."""
    return tuple(body[len(body) - k :])


def _decay_mults(groups: list[str], decay: float) -> dict[str, float]:
    """``decay ** depth_from_top``: head 1, top body group ``decay``, the next ``decay**2``, ..."""
    return {g: decay**depth for depth, g in enumerate(reversed(groups))}


@register_strategy("partial")
def partial(groups: list[str], epochs: int, k: int = 2) -> Plan:
    """The head and the top k body groups train; the groups below stay frozen."""
    body = _body(groups)
    if not body:
        raise ValueError("partial needs at least one body group below the head")
    k = _int("k", k, 1, len(body), why=f" (the body groups below the head: {', '.join(body)})")
    train = (*_top(body, k), HEAD)
    return Plan("partial", (Phase(f"head+top{k}", train, epochs),))


@register_strategy("gradual")
def gradual(
    groups: list[str],
    epochs: int,
    epochs_per_phase: int = 1,
    max_groups: int | None = None,
    decay: float = 1.0,
) -> Plan:
    """ULMFiT gradual unfreezing: the head first, then one more body group thaws each phase.

    Phase ``i`` trains the head and the top ``i`` body groups, for ``epochs_per_phase`` epochs;
    thawing stops after ``max_groups`` body groups (default: all; a larger value is capped at the
    number of body groups). The last phase (everything thawed) takes whatever remains of the
    run's ``epochs``, and at least ``epochs_per_phase``: the plan lasts
    ``max(epochs, (thawed + 1) * epochs_per_phase)`` epochs, longer than the budget only when the
    budget is too short to thaw every group. ``decay`` < 1 adds ULMFiT's discriminative learning
    rates (``decay ** depth_from_top``; the paper used 1/2.6).
    """
    body = _body(groups)
    epochs_per_phase = _int("epochs_per_phase", epochs_per_phase, 1)
    n = len(body) if max_groups is None else min(_int("max_groups", max_groups, 1), len(body))
    mults = {} if decay == 1.0 else _decay_mults(groups, _float("decay", decay, low=0, high=1))
    phases = []
    for i in range(n + 1):
        last = i == n
        train = (*_top(body, i), HEAD)
        phases.append(
            Phase(
                "head" if i == 0 else f"head+top{i}",
                train,
                max(epochs_per_phase, epochs - n * epochs_per_phase) if last else epochs_per_phase,
                lr_mult={g: mults[g] for g in train if g in mults},
            )
        )
    return Plan("gradual", tuple(phases))


@register_strategy("chain_thaw")
def chain_thaw(
    groups: list[str],
    epochs: int,
    epochs_per_group: int = 1,
    order: str = "bottom_up",
    final_epochs: int | None = None,
) -> Plan:
    """Chain-thaw (DeepMoji): the head alone, then each body group alone in turn, then all.

    ``order``: ``bottom_up`` (the paper's, from the first layer) or ``top_down``. The head phase and
    each single-group phase last ``epochs_per_group`` epochs; the final phase with every group
    lasts ``final_epochs`` (default: the run's ``epochs``). The plan therefore lasts
    ``(body groups + 1) * epochs_per_group + final_epochs`` epochs: the chain comes in front of a
    full fine-tune of the run's length.
    """
    body = _body(groups)
    epochs_per_group = _int("epochs_per_group", epochs_per_group, 1)
    final = epochs if final_epochs is None else _int("final_epochs", final_epochs, 1)
    if order not in ("bottom_up", "top_down"):
        raise ValueError(f"order must be 'bottom_up' or 'top_down', got {order!r}")
    chain = body if order == "bottom_up" else body[::-1]
    phases = [Phase("head", (HEAD,), epochs_per_group)]
    phases += [Phase(g, (g,), epochs_per_group) for g in chain]
    phases.append(Phase("all", tuple(groups), final))
    return Plan("chain_thaw", tuple(phases))


@register_strategy("discriminative")
def discriminative(
    groups: list[str],
    epochs: int,
    decay: float | None = None,
    lr_mult: Mapping[str, float] | None = None,
) -> Plan:
    """Every group trains, lower groups at smaller learning rates (layer-wise LR decay).

    The multiplier of a group is ``decay ** depth_from_top`` (head 1, top body group ``decay``,
    the next ``decay**2``, ...); ``decay`` defaults to 0.8. Or give ``lr_mult`` explicitly, a
    mapping from group name to multiplier (unnamed groups: 1.0); not both.
    """
    if lr_mult is not None:
        if decay is not None:
            raise ValueError("give either decay or lr_mult, not both")
        if not isinstance(lr_mult, Mapping):
            raise ValueError(f"lr_mult must be a mapping of group name to multiplier: {lr_mult!r}")
        unknown = [g for g in lr_mult if g not in groups]
        if unknown:
            raise ValueError(f"lr_mult names unknown groups {unknown}; groups: {groups}")
        mults = {str(g): _float(f"lr_mult.{g}", v, low=0) for g, v in lr_mult.items()}
    else:
        d = 0.8 if decay is None else _float("decay", decay, low=0, high=1)
        mults = _decay_mults(groups, d)
    return Plan("discriminative", (Phase("all", tuple(groups), epochs, lr_mult=mults),))


@register_strategy("lp_ft")
def lp_ft(
    groups: list[str],
    epochs: int,
    lp_epochs: int | None = None,
    patience: int | None = 1,
    ft_lr_scale: float = 0.1,
    ft_bn: str = "eval",
) -> Plan:
    """LP-FT: a linear probe until it converges, then everything at a smaller learning rate.

    Phase ``lp`` trains the head alone for at most ``lp_epochs`` epochs (default: half the run,
    at least 1) and ends early once the validation metric has not improved for ``patience``
    epochs (None: the run's early-stopping setting). Phase ``ft`` trains every group with the
    learning rate scaled by ``ft_lr_scale`` for the rest of the run's ``epochs`` (at least 1).
    The split is fixed when the plan is built: epochs that an early-ended probe leaves unused
    are not handed to ``ft``. ``ft_bn``: ``eval`` (default) keeps BatchNorm statistics as the
    probe saw them during ``ft``; with ``train`` they switch to batch statistics the moment the
    body trains, and the probed head's inputs shift under it (measured on EfficientNet-Lite0 +
    Fashion-MNIST: train accuracy fell from 0.54 to 0.30 in the first ``ft`` epoch).
    """
    _body(groups)
    lp = max(1, epochs // 2) if lp_epochs is None else _int("lp_epochs", lp_epochs, 1)
    if patience is not None:
        patience = _int("patience", patience, 1)
    scale = _float("ft_lr_scale", ft_lr_scale, low=0)
    if ft_bn not in ("train", "eval"):
        raise ValueError(f"ft_bn must be 'train' or 'eval', got {ft_bn!r}")
    bn: Literal["train", "eval"] = "eval" if ft_bn == "eval" else "train"
    return Plan(
        "lp_ft",
        (
            Phase("lp", (HEAD,), lp, patience=patience),
            Phase("ft", tuple(groups), max(1, epochs - lp), lr_scale=scale, bn=bn),
        ),
    )


@register_strategy("surgical")
def surgical(groups: list[str], epochs: int, group: str | int = 0) -> Plan:
    """Surgical fine-tuning: one chosen body group trains, with the head; the rest is frozen.

    ``group``: a body group's name, or its index from the bottom (0 = the first body group, the
    paper's choice for input-level shifts such as image corruptions) or, negative, from the top
    (-1 = the top body group, the paper's choice for output-level shifts).
    """
    body = _body(groups)
    if not body:
        raise ValueError("surgical needs at least one body group below the head")
    if isinstance(group, str) and group not in body:
        try:
            group = int(group)  # "2" or "-1" from a command-line override
        except ValueError:
            raise ValueError(f"group {group!r} is not a body group; body groups: {body}") from None
    if isinstance(group, bool) or not isinstance(group, str | int):
        raise ValueError(f"group must be a body group's name or index, got {group!r}")
    if isinstance(group, int):
        if not -len(body) <= group < len(body):
            raise ValueError(
                f"group index {group} is out of range for {len(body)} body groups "
                f"(0..{len(body) - 1} from the bottom, -1..-{len(body)} from the top)"
            )
        group = body[group]
    return Plan("surgical", (Phase(f"head+{group}", (group, HEAD), epochs),))


@register_strategy("bitfit")
def bitfit(groups: list[str], epochs: int) -> Plan:
    """BitFit: only the bias terms of the body train, and the whole head.

    One phase over every group with ``params: bias``; the training loop trains every parameter
    of the ``head`` group even then (it is new and has to be learned).
    """
    _body(groups)
    return Plan("bitfit", (Phase("bias", tuple(groups), epochs, params="bias"),))


__all__ = [
    "bitfit",
    "chain_thaw",
    "discriminative",
    "gradual",
    "lp_ft",
    "partial",
    "surgical",
]
