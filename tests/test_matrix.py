"""Every registered backbone family × every registered strategy × each task (classification,
regression, multi-label), trained for real.

After a short run, exactly the parameters that some phase of the plan trains have changed, and
every other parameter is bit-identical. A new family (via conftest's tiny instances) or a new
strategy is covered without touching this file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import ALL_TINY, NUM_CLASSES, Tiny, build_tiny, random_examples

from graft.data.targets import Standardizer
from graft.data.types import LabelMap
from graft.losses import MultiLabelLoss, RegressionLoss
from graft.optim import OptimizerFactory, ScheduleFactory
from graft.pipeline import Loaders
from graft.strategies import build_plan, strategies
from graft.strategies.plan import Plan
from graft.tasks import MultiLabel, Regression
from graft.train import Hooks, LoopSettings, Objective, apply_phase, train

LABELS = ["a", "b", "c"][:NUM_CLASSES]
# `custom` has no defaults (its phases are the config); it is exercised in test_plans.py.
STRATEGIES = [s for s in strategies() if s != "custom"]


def _trained_ids(backbone: Any, plan: Plan) -> set[int]:
    """Parameters that at least one phase trains, as the loop sets them."""
    ids: set[int] = set()
    for phase in plan.phases:
        apply_phase(backbone.groups, phase)
        ids |= {id(p) for p in backbone.model.parameters() if p.requires_grad}
    return ids


def expected_to_train(strategy: str, backbone: Any) -> set[str]:
    """What each strategy trains with its default parameters, stated from the papers' recipes
    over the layer groups (bottom to top, the head last), not from the plan code."""
    groups = {g.name: [n for n, _ in g.params] for g in backbone.groups}
    body = [g.name for g in backbone.groups[:-1]]
    head = set(groups["head"])
    every = {n for names in groups.values() for n in names}
    if strategy in {"full", "discriminative", "gradual", "chain_thaw", "lp_ft"}:
        return every  # each of these has every group train in some phase
    if strategy == "linear_probe":
        return head
    if strategy == "partial":  # k = 2: the head and the top two body groups
        return head | {n for g in body[-2:] for n in groups[g]}
    if strategy == "surgical":  # group 0: the bottom body group, with the head
        return head | set(groups[body[0]])
    if strategy == "bitfit":  # every bias of the body, and the whole new head
        return head | {n for n in every if n.endswith("bias")}
    raise AssertionError(f"no expectation written for strategy {strategy!r}")


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("tiny", ALL_TINY, ids=lambda t: t.id)
def test_only_planned_parameters_change(
    tiny: Tiny, strategy: str, task: str, request: pytest.FixtureRequest
) -> None:
    bert = request.getfixturevalue("tiny_bert_dir") if tiny.family == "hf" else None
    regression, multilabel = task == "regression", task == "multilabel"
    backbone = build_tiny(tiny, bert, num_classes=1 if regression else NUM_CLASSES)
    plan = build_plan(strategy, {}, groups=backbone.group_names(), epochs=1)
    expected = expected_to_train(strategy, backbone)
    by_id = {id(p): n for n, p in backbone.model.named_parameters()}
    assert {by_id[i] for i in _trained_ids(backbone, plan)} == expected
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    # BatchNorm statistics of layers with nothing to train stay fixed (eval mode).
    frozen_bn = {
        name: {k: b.clone() for k, b in m.named_buffers()}
        for name, m in backbone.model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and not any(f"{name}.{k}" in expected for k, _ in m.named_parameters())
    }

    train_ex = random_examples(backbone.modality, 8, LABELS, seed=1)
    val_ex = random_examples(backbone.modality, 4, LABELS, seed=2)
    loaders = Loaders(backbone.preprocess, backbone.tokenizer, False, 0, 0)
    codes = {n: i for i, n in enumerate(LABELS)}

    def targets(ex: Any) -> np.ndarray:
        if regression:  # a number per example (its class index, standardised-ish)
            return np.array([codes[y] - 1.0 for y in ex.labels], dtype=np.float32)
        if multilabel:  # its class and the next one present
            rows = np.zeros((len(ex), NUM_CLASSES), dtype=np.float32)
            for i, y in enumerate(ex.labels):
                rows[i, [codes[y], (codes[y] + 1) % NUM_CLASSES]] = 1.0
            return rows
        return np.array([codes[y] for y in ex.labels], dtype=np.int64)

    settings = LoopSettings(
        optimizer=OptimizerFactory("adamw", lr=1e-2, weight_decay=0.01),
        schedule=ScheduleFactory("constant"),
        task=Regression(LabelMap(("y",)), Standardizer(0.0, 1.0))
        if regression
        else MultiLabel(LabelMap(tuple(LABELS)))
        if multilabel
        else None,
        metric="rmse" if regression else "map" if multilabel else "accuracy",
    )
    train(
        backbone.model,
        backbone.groups,
        plan,
        loaders.loader(train_ex, targets(train_ex), 4, shuffle=True),
        loaders.loader(val_ex, targets(val_ex), 4, shuffle=False),
        LABELS,
        settings,
        Hooks(),
        objective=Objective(RegressionLoss("mse"))
        if regression
        else Objective(MultiLabelLoss())
        if multilabel
        else None,
    )
    for name, p in backbone.model.named_parameters():
        if name in expected:
            assert not torch.equal(p, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, before[name]), f"{name} should be frozen"
    modules = dict(backbone.model.named_modules())
    for name, buffers in frozen_bn.items():
        for key, value in modules[name].named_buffers():
            assert torch.equal(value, buffers[key]), f"{name}.{key} moved in a frozen layer"
