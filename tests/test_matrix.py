"""Every registered backbone family × every registered strategy, trained for real.

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

from graft.optim import OptimizerFactory, ScheduleFactory
from graft.pipeline import Loaders
from graft.strategies import build_plan, strategies
from graft.strategies.plan import Plan
from graft.train import Hooks, LoopSettings, apply_phase, train

LABELS = ["a", "b", "c"][:NUM_CLASSES]
# `custom` has no defaults (its phases are the config); it is exercised in test_plans.py.
STRATEGIES = [s for s in strategies() if s != "custom"]


def _trained_ids(backbone: Any, plan: Plan) -> set[int]:
    """Parameters that at least one phase trains (as the loop will set them)."""
    ids: set[int] = set()
    for phase in plan.phases:
        apply_phase(backbone.groups, phase)
        ids |= {id(p) for p in backbone.model.parameters() if p.requires_grad}
    return ids


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("tiny", ALL_TINY, ids=lambda t: t.id)
def test_only_planned_parameters_change(
    tiny: Tiny, strategy: str, request: pytest.FixtureRequest
) -> None:
    bert = request.getfixturevalue("tiny_bert_dir") if tiny.family == "hf" else None
    backbone = build_tiny(tiny, bert)
    plan = build_plan(strategy, {}, groups=backbone.group_names(), epochs=1)
    trained = _trained_ids(backbone, plan)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}

    train_ex = random_examples(backbone.modality, 8, LABELS, seed=1)
    val_ex = random_examples(backbone.modality, 4, LABELS, seed=2)
    loaders = Loaders(backbone.preprocess, backbone.tokenizer, False, 0, 0)
    codes = {n: i for i, n in enumerate(LABELS)}

    def targets(ex: Any) -> np.ndarray:
        return np.array([codes[y] for y in ex.labels], dtype=np.int64)

    settings = LoopSettings(
        optimizer=OptimizerFactory("adamw", lr=1e-2, weight_decay=0.01),
        schedule=ScheduleFactory("constant"),
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
    )
    for name, p in backbone.model.named_parameters():
        if id(p) in trained:
            assert not torch.equal(p, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, before[name]), f"{name} should be frozen"
