"""The strategy catalogue: exact plans for a known group list, bad parameters refused, and short
real training runs (a tiny timm EfficientNet) that check which parameters each strategy moves."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from graft.errors import UsageError
from graft.strategies import build_plan, strategies
from graft.strategies.plan import Plan

G = ["stem", "b0", "b1", "b2", "head"]
NEW = ["partial", "gradual", "chain_thaw", "discriminative", "lp_ft", "surgical", "bitfit"]


def plan(name: str, epochs: int = 6, groups: list[str] = G, **params: Any) -> Plan:
    return build_plan(name, params, groups=groups, epochs=epochs)


def trains(p: Plan) -> list[tuple[str, ...]]:
    return [ph.train for ph in p.phases]


def epochs(p: Plan) -> list[int]:
    return [ph.epochs for ph in p.phases]


# --- plans ---------------------------------------------------------------------------------------


def test_registered_with_a_summary() -> None:
    from graft.strategies import get_strategy

    for name in NEW:
        assert name in strategies()
        doc = (get_strategy(name).__doc__ or "").strip().splitlines()
        assert doc and len(doc[0]) > 20, name


def test_partial() -> None:
    assert trains(plan("partial")) == [("b1", "b2", "head")]
    assert trains(plan("partial", k=1)) == [("b2", "head")]
    assert trains(plan("partial", k=4)) == [tuple(G)]
    assert epochs(plan("partial", epochs=3)) == [3]
    assert trains(plan("partial", groups=["stem", "head"], k=1)) == [("stem", "head")]


@pytest.mark.parametrize("k", [0, 5, -1, 1.5, "2", True])
def test_partial_refuses_bad_k(k: object) -> None:
    with pytest.raises(UsageError, match="strategy 'partial': k must be"):
        plan("partial", k=k)


def test_partial_names_the_groups_when_k_is_too_large() -> None:
    with pytest.raises(UsageError, match=r"between 1 and 4 \(the body groups below the head: stem"):
        plan("partial", k=5)
    with pytest.raises(UsageError, match=r"k must be between 1 and 1"):
        plan("partial", groups=["stem", "head"])  # the default k=2 needs two body groups
    with pytest.raises(UsageError, match="at least one body group"):
        plan("partial", groups=["head"], k=1)


def test_gradual_thaws_one_group_per_phase_top_down() -> None:
    p = plan("gradual", epochs=6)
    assert trains(p) == [
        ("head",),
        ("b2", "head"),
        ("b1", "b2", "head"),
        ("b0", "b1", "b2", "head"),
        ("stem", "b0", "b1", "b2", "head"),
    ]
    assert epochs(p) == [1, 1, 1, 1, 2]  # the last phase takes the rest of the budget
    assert all(ph.lr_mult == {} for ph in p.phases)


def test_gradual_budgets() -> None:
    # Too short a budget: every group still thaws, one epoch each (5 > 3).
    assert epochs(plan("gradual", epochs=3)) == [1, 1, 1, 1, 1]
    p = plan("gradual", epochs=10, epochs_per_phase=2, max_groups=2)
    assert trains(p) == [("head",), ("b2", "head"), ("b1", "b2", "head")]
    assert epochs(p) == [2, 2, 6] and p.epochs == 10
    # The last phase gets at least epochs_per_phase: 2 + 2 + max(2, 5 - 4) = 6.
    assert epochs(plan("gradual", epochs=5, epochs_per_phase=2, max_groups=2)) == [2, 2, 2]
    # A cap above the number of body groups thaws them all.
    assert trains(plan("gradual", max_groups=9)) == trains(plan("gradual"))


def test_gradual_with_discriminative_rates() -> None:
    p = plan("gradual", decay=0.5)
    assert p.phases[0].lr_mult == {"head": 1.0}
    assert p.phases[2].lr_mult == {"b1": 0.25, "b2": 0.5, "head": 1.0}
    assert p.phases[4].multiplier("stem") == pytest.approx(0.5**4)


@pytest.mark.parametrize(
    "params", [{"epochs_per_phase": 0}, {"max_groups": 0}, {"decay": 0.0}, {"decay": 2.0}]
)
def test_gradual_refuses(params: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="strategy 'gradual'"):
        plan("gradual", **params)


def test_chain_thaw() -> None:
    p = plan("chain_thaw", epochs=4)
    assert trains(p) == [("head",), ("stem",), ("b0",), ("b1",), ("b2",), tuple(G)]
    assert [ph.name for ph in p.phases] == ["head", "stem", "b0", "b1", "b2", "all"]
    assert epochs(p) == [1, 1, 1, 1, 1, 4]  # the final phase defaults to the run's epochs
    down = plan("chain_thaw", order="top_down", epochs_per_group=2, final_epochs=3)
    assert trains(down) == [("head",), ("b2",), ("b1",), ("b0",), ("stem",), tuple(G)]
    assert down.epochs == 5 * 2 + 3


@pytest.mark.parametrize(
    "params", [{"order": "sideways"}, {"epochs_per_group": 0}, {"final_epochs": 0}]
)
def test_chain_thaw_refuses(params: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="strategy 'chain_thaw'"):
        plan("chain_thaw", **params)


def test_discriminative_decay() -> None:
    p = plan("discriminative")
    (phase,) = p.phases
    assert phase.train == tuple(G)
    got = [phase.multiplier(g) for g in G]
    assert got == pytest.approx([0.8**4, 0.8**3, 0.64, 0.8, 1.0])
    ulmfit = plan("discriminative", decay=1 / 2.6).phases[0]
    assert ulmfit.multiplier("b1") == pytest.approx(1 / 2.6**2)


def test_discriminative_explicit() -> None:
    (phase,) = plan("discriminative", lr_mult={"stem": 0.1, "b0": 0.5}).phases
    assert [phase.multiplier(g) for g in G] == [0.1, 0.5, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"decay": 0.5, "lr_mult": {"stem": 0.1}}, "not both"),
        ({"lr_mult": {"nope": 0.1}}, "unknown groups"),
        ({"lr_mult": {"stem": -1}}, "lr_mult.stem must be greater than 0"),
        ({"decay": 0}, "decay must be"),
        ({"decay": 1.5}, "decay must be"),
    ],
)
def test_discriminative_refuses(params: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        plan("discriminative", **params)


def test_lp_ft() -> None:
    lp, ft = plan("lp_ft", epochs=10).phases
    assert (lp.train, lp.epochs, lp.patience, lp.lr_scale) == (("head",), 5, 1, 1.0)
    assert (ft.train, ft.epochs, ft.patience) == (tuple(G), 5, None)
    assert ft.multiplier("stem") == ft.multiplier("head") == pytest.approx(0.1)
    assert epochs(plan("lp_ft", epochs=10, lp_epochs=3)) == [3, 7]
    assert epochs(plan("lp_ft", epochs=1)) == [1, 1]  # every phase gets at least one epoch
    assert plan("lp_ft", patience=None).phases[0].patience is None
    assert plan("lp_ft", ft_lr_scale=0.01).phases[1].lr_scale == 0.01


@pytest.mark.parametrize("params", [{"lp_epochs": 0}, {"patience": 0}, {"ft_lr_scale": 0}])
def test_lp_ft_refuses(params: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="strategy 'lp_ft'"):
        plan("lp_ft", **params)


@pytest.mark.parametrize(
    ("group", "expected"),
    [(0, "stem"), (2, "b1"), (-1, "b2"), (-4, "stem"), ("b0", "b0"), ("-1", "b2")],
)
def test_surgical(group: object, expected: str) -> None:
    assert trains(plan("surgical", group=group)) == [(expected, "head")]


def test_surgical_default_is_the_first_body_group() -> None:
    assert trains(plan("surgical")) == [("stem", "head")]


@pytest.mark.parametrize("group", ["head", "nope", 4, -5, 1.0, None])
def test_surgical_refuses(group: object) -> None:
    with pytest.raises(UsageError, match="strategy 'surgical'"):
        plan("surgical", group=group)


def test_bitfit() -> None:
    (phase,) = plan("bitfit", epochs=2).phases
    assert (phase.train, phase.params, phase.epochs) == (tuple(G), "bias", 2)


def test_unknown_parameter_is_refused() -> None:
    with pytest.raises(UsageError, match=r"strategy\.kk: not a parameter of strategy 'partial'"):
        plan("partial", kk=2)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("groups", [G, ["stem", "head"]])
@pytest.mark.parametrize("budget", [1, 2, 7])
def test_every_plan_is_valid_and_round_trips(name: str, groups: list[str], budget: int) -> None:
    """Short budgets and a backbone with a single body group (where partial needs k=1)."""
    params = {"k": 1} if name == "partial" and len(groups) == 2 else {}
    p = plan(name, epochs=budget, groups=groups, **params)  # build_plan validates it
    assert p.strategy == name
    assert Plan.from_dict(p.to_dict()) == p
    for phase in p.phases:
        assert phase.epochs >= 1 and set(phase.train) <= set(groups)


# --- short real training runs --------------------------------------------------------------------


class _Tensors(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Random images served a whole batch at a time, as graft.pipeline.ImageBatches does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, index: list[int]) -> dict[str, Any]:
        return {"inputs": {"pixel_values": self.x[index]}, "targets": self.y[index]}


def _loader(n: int, seed: int, shuffle: bool) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    from graft.pipeline import EpochBatches, identity_collate

    g = torch.Generator().manual_seed(seed)
    data = _Tensors(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g))
    return torch.utils.data.DataLoader(
        data, batch_sampler=EpochBatches(n, 8, shuffle, seed), collate_fn=identity_collate
    )


@pytest.fixture(scope="module")
def pristine() -> Iterator[Any]:
    from graft.models import build_backbone

    # A model this small runs fastest on one thread; on a busy 2-core machine, two threads spin
    # and make each step ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield build_backbone("test_efficientnet", num_classes=3, pretrained=False, image_size=32)
    torch.set_num_threads(threads)


def _run(
    backbone: Any, name: str, params: dict[str, Any], epochs: int, lr: float = 1e-2
) -> tuple[Any, dict[str, bool], list[tuple[str, list[dict[str, Any]]]]]:
    """Train a copy of ``backbone`` with strategy ``name``: the final state, whether each
    parameter changed, and the group table logged at each phase start."""
    from graft.optim import OptimizerFactory, ScheduleFactory
    from graft.train import Hooks, LoopSettings, train

    b = copy.deepcopy(backbone)
    before = {n: p.detach().clone() for n, p in b.model.named_parameters()}
    p = build_plan(name, params, groups=b.group_names(), epochs=epochs)
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    hooks = Hooks(phase_start=lambda i, phase, table: tables.append((phase.name, table)))
    settings = LoopSettings(
        optimizer=OptimizerFactory("adam", lr=lr, weight_decay=0.0),
        schedule=ScheduleFactory("constant"),
    )
    torch.manual_seed(1)
    state = train(
        b.model, b.groups, p, _loader(16, 0, True), _loader(8, 1, False), ["a", "b", "c"],
        settings, hooks,
    )  # fmt: skip
    changed = {n: not torch.equal(before[n], q.detach()) for n, q in b.model.named_parameters()}
    return state, changed, tables


def _group_of(backbone: Any) -> dict[str, str]:
    return {n: g.name for g in backbone.groups for n, _ in g.params}


# (strategy, params, epochs, the body groups that train in some phase: None = all)
RUNS: list[tuple[str, dict[str, Any], int, list[str] | None]] = [
    ("partial", {"k": 2}, 1, ["blocks.3", "blocks.4..bn2"]),
    ("gradual", {"max_groups": 2}, 3, ["blocks.3", "blocks.4..bn2"]),
    ("chain_thaw", {"final_epochs": 1}, 1, None),
    ("discriminative", {"decay": 0.5}, 1, None),
    ("lp_ft", {"lp_epochs": 1, "patience": None}, 2, None),
    ("surgical", {"group": 1}, 1, ["blocks.0"]),
]


@pytest.mark.parametrize(("name", "params", "n_epochs", "body"), RUNS, ids=[r[0] for r in RUNS])
def test_training_moves_exactly_the_planned_groups(
    pristine: Any, name: str, params: dict[str, Any], n_epochs: int, body: list[str] | None
) -> None:
    state, changed, _ = _run(pristine, name, params, n_epochs)
    n_phases = len(build_plan(name, params, groups=pristine.group_names(), epochs=1).phases)
    assert state.phase == n_phases
    group_of = _group_of(pristine)
    all_body = [g for g in pristine.group_names() if g != "head"]
    training = {"head", *(all_body if body is None else body)}
    for pname, moved in changed.items():
        assert moved == (group_of[pname] in training), (pname, group_of[pname], moved)


def test_training_phase_tables_follow_the_plan(pristine: Any) -> None:
    """Each phase thaws exactly its groups, at the planned learning rates."""
    _, _, tables = _run(pristine, "chain_thaw", {"order": "top_down", "final_epochs": 1}, 1)
    names = pristine.group_names()
    assert [t[0] for t in tables] == ["head", *reversed(names[:-1]), "all"]
    for phase_name, table in tables:
        expected = set(names) if phase_name == "all" else {phase_name}
        assert {r["group"] for r in table if r["state"] == "train"} == expected
        assert {r["group"] for r in table if r["state"] == "frozen"} == set(names) - expected
    _, _, tables = _run(pristine, "discriminative", {"decay": 0.5}, 1, lr=0.01)
    ((_, table),) = tables
    lrs = [r["lr"] for r in table]
    assert lrs == pytest.approx([0.01 * 0.5**d for d in reversed(range(len(names)))])


def test_bitfit_moves_only_biases_and_the_head(pristine: Any) -> None:
    _, changed, tables = _run(pristine, "bitfit", {}, 1)
    group_of = _group_of(pristine)
    for pname, moved in changed.items():
        expected = group_of[pname] == "head" or pname.endswith("bias")
        assert moved == expected, (pname, moved)
    states = {r["group"]: r["state"] for r in tables[0][1]}
    assert states["head"] == "train"
    assert all(s == "partial" for g, s in states.items() if g != "head")


def test_lp_ft_probe_ends_on_plateau(pristine: Any) -> None:
    """With nothing learned (lr 0) the metric never improves: the probe stops after 2 epochs of
    its 4 (epoch 1 sets the best, epoch 2 is stale, patience 1), then fine-tuning runs 2."""
    state, _, _ = _run(pristine, "lp_ft", {"lp_epochs": 4, "patience": 1}, 6, lr=0.0)
    assert [r["phase"] for r in state.history] == ["lp", "lp", "ft", "ft"]
