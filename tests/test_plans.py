"""Plans after a short real training run: frozen groups bit-identical, trained groups changed,
frozen modules in eval mode (BatchNorm statistics fixed), per-group learning rates as planned.

Parametrized over every registered strategy that runs with its defaults, so a new strategy is
checked automatically; strategies with required parameters are skipped by name (and ``custom``
is checked below with explicit phases).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONES, build_tiny, random_examples
from torch import nn

from graft.errors import UsageError
from graft.models import Backbone
from graft.optim import OptimizerFactory, ScheduleFactory
from graft.pipeline import Loaders
from graft.strategies import build_plan, get_strategy, strategies
from graft.strategies.plan import Phase, Plan
from graft.train import Hooks, LoopSettings, TrainState, train

LR = 1e-2
LABELS = ["a", "b", "c"]


def _required_params(name: str) -> list[str]:
    sig = inspect.signature(get_strategy(name))
    return [
        p.name
        for p in sig.parameters.values()
        if p.name not in {"groups", "epochs"} and p.default is inspect.Parameter.empty
    ]


@dataclass
class Record:
    """What the hooks saw while training."""

    phases: list[int] = field(default_factory=list)
    optimizers: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    requires_grad: dict[int, dict[int, bool]] = field(default_factory=dict)
    # (phase, module name, module.training, any parameter of it trainable) per training forward
    modes: list[tuple[int, str, bool, bool]] = field(default_factory=list)


def run_plan(backbone: Backbone, plan: Plan, *, steps_per_epoch: int = 2) -> Record:
    """Train ``plan`` for real (graft.train.train) on random images, recording what happened."""
    batch = 8
    train_ex = random_examples("image", batch * steps_per_epoch, LABELS, seed=1)
    val_ex = random_examples("image", 6, LABELS, seed=2)
    loaders = Loaders(backbone.preprocess, None, False, 0, 0)
    codes = {n: i for i, n in enumerate(LABELS)}

    def targets(ex: Any) -> np.ndarray:
        return np.array([codes[y] for y in ex.labels], dtype=np.int64)

    train_loader = loaders.loader(train_ex, targets(train_ex), batch, shuffle=True)
    val_loader = loaders.loader(val_ex, targets(val_ex), batch, shuffle=False)
    rec = Record()
    model = backbone.model
    owners = {n: m for n, m in model.named_modules() if any(True for _ in m.parameters())}

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, _args: object) -> None:
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                trainable = any(p.requires_grad for p in module.parameters())
                rec.modes.append((rec.phases[-1], name, module.training, trainable))

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in owners.items()]

    def phase_start(index: int, phase: Phase, table: list[dict[str, Any]]) -> None:
        rec.phases.append(index)
        rec.requires_grad[index] = {id(p): p.requires_grad for p in model.parameters()}

    def epoch_end(state: TrainState, record: dict, is_best: bool, opt: Any, sched: Any) -> None:
        rec.optimizers[record["phase_index"]] = [
            {k: v for k, v in g.items() if k != "params"} | {"ids": [id(p) for p in g["params"]]}
            for g in opt.param_groups
        ]

    settings = LoopSettings(
        optimizer=OptimizerFactory("adamw", lr=LR, weight_decay=0.01),
        schedule=ScheduleFactory("constant"),
    )
    hooks = Hooks(phase_start=phase_start, epoch_end=epoch_end)
    try:
        train(model, backbone.groups, plan, train_loader, val_loader, LABELS, settings, hooks)
    finally:
        for h in handles:
            h.remove()
    return rec


@pytest.fixture
def effnet() -> Backbone:
    """The timm test EfficientNet: BatchNorm everywhere, 6 body groups + head."""
    return build_tiny(TINY_BACKBONES["timm"][0], None)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_run(backbone: Backbone, plan: Plan) -> None:
    model = backbone.model
    before = snapshot(model)
    rec = run_plan(backbone, plan)
    after = snapshot(model)
    groups = {g.name: g for g in backbone.groups}
    assert rec.phases == list(range(len(plan.phases))), "not every phase ran"

    # Which parameters the plan trains at all; which it trains whole in some phase.
    trained_groups = {g for ph in plan.phases for g in ph.train}
    whole = {g for ph in plan.phases if ph.params == "all" for g in ph.train} | (
        {"head"} & trained_groups
    )
    for name, g in groups.items():
        for pname, _ in g.params:
            if name not in trained_groups:
                assert torch.equal(before[pname], after[pname]), f"frozen {pname} changed"
            elif name in whole or pname.endswith("bias"):
                assert not torch.equal(before[pname], after[pname]), f"trained {pname} unchanged"

    # Per phase: requires_grad follows the plan, and the optimizer holds exactly the trainable
    # parameters, each group at base LR × the phase's multiplier for it.
    id_group = {id(p): g.name for g in backbone.groups for _, p in g.params}
    for i, phase in enumerate(plan.phases):
        flags = rec.requires_grad[i]
        for g in backbone.groups:
            for pname, p in g.params:
                if g.name not in phase.train:
                    assert not flags[id(p)], f"phase {i}: {pname} trainable outside the plan"
                elif phase.params == "all":
                    assert flags[id(p)], f"phase {i}: {pname} frozen though its group trains"
        opt_groups = rec.optimizers[i]
        in_opt = [pid for og in opt_groups for pid in og["ids"]]
        assert len(in_opt) == len(set(in_opt))
        assert set(in_opt) == {pid for pid, on in flags.items() if on}
        for og in opt_groups:
            gname = og["group"]
            assert {id_group[pid] for pid in og["ids"]} == {gname}
            expected = LR * phase.multiplier(gname)
            assert og["initial_lr"] == pytest.approx(expected, rel=1e-12)
            assert og["lr"] == pytest.approx(expected, rel=1e-12)  # constant schedule

    # Frozen modules ran in eval mode while training; modules with a trainable parameter in
    # train mode, except BatchNorm in a phase that fixes its statistics (``bn: eval``).
    assert rec.modes
    modules = dict(model.named_modules())
    for phase_i, mname, training, trainable in rec.modes:
        fixed_bn = plan.phases[phase_i].bn == "eval" and isinstance(
            modules[mname], nn.modules.batchnorm._BatchNorm
        )
        expected = trainable and not fixed_bn
        assert training == expected, f"phase {phase_i}: {mname or 'model'} training={training}"

    # BatchNorm statistics: moved in modules trained in a phase that lets them move (bn: train),
    # fixed everywhere else.
    ever_trainable = {
        pid
        for i, f in rec.requires_grad.items()
        if plan.phases[i].bn == "train"
        for pid, on in f.items()
        if on
    }
    checked_frozen = checked_trained = 0
    for mname, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        keys = [f"{mname}.{b}" for b, _ in m.named_buffers()]
        if any(id(p) in ever_trainable for p in m.parameters()):
            assert not torch.equal(before[f"{mname}.running_mean"], after[f"{mname}.running_mean"])
            checked_trained += 1
        else:
            for k in keys:
                assert torch.equal(before[k], after[k]), f"frozen BatchNorm buffer {k} moved"
            checked_frozen += 1
    if trained_groups != set(groups):
        assert checked_frozen > 0
    bn_fixed = all(ph.bn == "eval" for ph in plan.phases if set(ph.train) != {"head"})
    assert checked_trained > 0 or trained_groups == {"head"} or bn_fixed


# Strategies with required parameters (custom's phases) are checked by their own tests.
@pytest.mark.parametrize("name", [s for s in strategies() if not _required_params(s)])
def test_strategy_plan_after_training(name: str, effnet: Backbone) -> None:
    plan = build_plan(name, {}, groups=effnet.group_names(), epochs=1)
    check_run(effnet, plan)


def test_full_trains_everything(effnet: Backbone) -> None:
    before = snapshot(effnet.model)
    check_run(effnet, build_plan("full", {}, groups=effnet.group_names(), epochs=1))
    changed = [k for k, v in effnet.model.named_parameters() if not torch.equal(before[k], v)]
    assert len(changed) == len(list(effnet.model.parameters()))


def test_linear_probe_trains_only_the_head(effnet: Backbone) -> None:
    before = snapshot(effnet.model)
    check_run(effnet, build_plan("linear_probe", {}, groups=effnet.group_names(), epochs=1))
    after = snapshot(effnet.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.fc.weight", "head.fc.bias"}  # no buffer of the body moved either


def test_custom_multipliers_and_phases(effnet: Backbone) -> None:
    """Multipliers other than 1 reach the optimizer; a later phase thaws more groups."""
    groups = effnet.group_names()
    top = groups[-2]
    phases = [
        {"name": "probe", "train": "head", "epochs": 1, "lr_mult": {"head": 10.0}},
        {
            "name": "top",
            "train": [top, "head"],
            "epochs": 1,
            "lr_mult": {top: 0.1},
            "lr_scale": 0.5,
        },
    ]
    plan = build_plan("custom", {"phases": phases}, groups=groups, epochs=1)
    assert plan.phases[1].multiplier(top) == pytest.approx(0.05)
    check_run(effnet, plan)


def _train_everything(model: nn.Module, *_: Any, **__: Any) -> None:
    model.train()


def _thaw_everything(groups: list, phase: Phase, *_: Any, **__: Any) -> None:
    for g in groups:
        for _, p in g.params:
            p.requires_grad_(True)


@pytest.mark.parametrize(
    ("target", "broken"),
    [("set_train_mode", _train_everything), ("apply_phase", _thaw_everything)],
    ids=["frozen-modules-left-in-train-mode", "plan-ignored"],
)
def test_checks_catch_a_broken_loop(
    effnet: Backbone, monkeypatch: pytest.MonkeyPatch, target: str, broken: Any
) -> None:
    """The checks above can fail: break the loop the way real code breaks, and they do."""
    import graft.train

    monkeypatch.setattr(graft.train, target, broken)
    # The bottom group and the head train: the frozen groups sit above the cut, so they run in
    # every training forward (frozen groups *below* the lowest trained one are served from the
    # prefix cache and never run at all).
    groups = effnet.group_names()
    plan = build_plan(
        "custom", {"phases": [{"train": [groups[0], "head"]}]}, groups=groups, epochs=1
    )
    with pytest.raises(AssertionError):
        check_run(effnet, plan)


def test_unknown_strategy_names_the_field() -> None:
    with pytest.raises(UsageError) as ei:
        build_plan("ful", {}, groups=["stem", "head"], epochs=1)
    assert "strategy.name" in str(ei.value) and "'ful'" in str(ei.value)


def test_unknown_strategy_parameter_names_the_field() -> None:
    with pytest.raises(UsageError) as ei:
        build_plan("full", {"warp_speed": 9}, groups=["stem", "head"], epochs=1)
    assert "strategy.warp_speed" in str(ei.value)


def test_plan_naming_an_unknown_group_is_refused() -> None:
    with pytest.raises(UsageError, match="nosuchgroup"):
        build_plan(
            "custom", {"phases": [{"train": "nosuchgroup"}]}, groups=["stem", "head"], epochs=1
        )


def test_plan_round_trips_as_data() -> None:
    plan = build_plan(
        "custom",
        {"phases": [{"train": "head", "lr_mult": {"head": 2}}, {"train": "all"}]},
        groups=["stem", "blocks.0", "head"],
        epochs=2,
    )
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.epochs == 4
