"""The training loop itself: hooks in order, step counting, gradient accumulation, early stopping,
evaluation that leaves the model's modes alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONES, build_tiny, random_examples

from graft.models import Backbone
from graft.optim import OptimizerFactory, ScheduleFactory
from graft.pipeline import Loaders
from graft.strategies import build_plan
from graft.strategies.plan import Phase, Plan
from graft.train import Hooks, LoopSettings, TrainState, evaluate, train

LABELS = ["a", "b", "c"]


def loaders(backbone: Backbone, n_train: int, batch: int) -> tuple[Any, Any]:
    ld = Loaders(backbone.preprocess, backbone.tokenizer, False, 0, seed=3)
    tr = random_examples(backbone.modality, n_train, LABELS, seed=1)
    va = random_examples(backbone.modality, 6, LABELS, seed=2)

    def y(ex: Any) -> np.ndarray:
        return np.array([LABELS.index(v) for v in ex.labels], dtype=np.int64)

    return ld.loader(tr, y(tr), batch, shuffle=True), ld.loader(va, y(va), batch, shuffle=False)


@pytest.fixture
def vit() -> Backbone:
    """The timm test ViT: LayerNorm only, no dropout, so batch composition is all that matters."""
    return build_tiny(TINY_BACKBONES["timm"][1], None)


def full_plan(backbone: Backbone, epochs: int) -> Plan:
    return build_plan("full", {}, groups=backbone.group_names(), epochs=epochs)


def test_hooks_in_order_and_step_counting(vit: Backbone) -> None:
    tr, va = loaders(vit, n_train=10, batch=4)  # 3 batches: 4, 4, 2
    calls: list[tuple[Any, ...]] = []
    hooks = Hooks(
        phase_start=lambda i, phase, table: calls.append(("phase", i, phase.name, len(table))),
        epoch_start=lambda st, n: calls.append(("epoch", st.epoch, n)),
        step=lambda i, loss, n: calls.append(("step", i, n)),
        epoch_end=lambda st, rec, best, opt, sch: calls.append(("end", st.epoch, rec["step"])),
    )
    settings = LoopSettings(optimizer=OptimizerFactory(lr=1e-3), grad_accum=2)
    state = train(vit.model, vit.groups, full_plan(vit, 2), tr, va, LABELS, settings, hooks)
    n_groups = len(vit.groups)
    # ceil(3 batches / 2 accumulated) = 2 optimizer steps per epoch
    assert calls == [
        ("phase", 0, "full", n_groups),
        ("epoch", 0, 3),
        ("step", 0, 4),
        ("step", 1, 4),
        ("step", 2, 2),
        ("end", 1, 2),
        ("epoch", 1, 3),
        ("step", 0, 4),
        ("step", 1, 4),
        ("step", 2, 2),
        ("end", 2, 4),
    ]
    assert state.epoch == 2 and state.step == 4 and state.phase == 1
    assert [r["epoch"] for r in state.history] == [1, 2]
    for r in state.history:
        assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr"} <= set(r)
        assert np.isfinite(r["train_loss"]) and 0 <= r["val_accuracy"] <= 1


def test_gradient_accumulation_equals_the_big_batch(vit: Backbone) -> None:
    """2 micro-batches of 4 accumulated = 1 batch of 8 (same examples, same order)."""
    twin = build_tiny(TINY_BACKBONES["timm"][1], None)
    start = {k: v.detach().clone() for k, v in vit.model.named_parameters()}
    opts = {
        "optimizer": OptimizerFactory("sgd", lr=0.1, momentum=0.0),
        "schedule": ScheduleFactory("constant"),
    }
    tr8, va = loaders(vit, n_train=16, batch=8)
    tr4, _ = loaders(twin, n_train=16, batch=4)
    plan = full_plan(vit, 1)
    s8 = train(vit.model, vit.groups, plan, tr8, va, LABELS, LoopSettings(**opts), Hooks())
    accum = LoopSettings(**opts, grad_accum=2)
    s4 = train(twin.model, twin.groups, plan, tr4, va, LABELS, accum, Hooks())
    assert s8.step == s4.step == 2
    big, small = dict(vit.model.named_parameters()), dict(twin.model.named_parameters())
    for k in big:
        assert not torch.equal(big[k], start[k]), f"{k} did not train"
        torch.testing.assert_close(big[k], small[k], rtol=1e-4, atol=1e-6)


def test_early_stopping_ends_the_phase(vit: Backbone) -> None:
    tr, va = loaders(vit, n_train=8, batch=4)
    plan = Plan("x", (Phase("a", tuple(vit.group_names()), 6, patience=1),))
    # lr 0: the validation score never improves after the first epoch
    settings = LoopSettings(optimizer=OptimizerFactory("sgd", lr=0.0, momentum=0.0), metric="loss")
    state = train(vit.model, vit.groups, plan, tr, va, LABELS, settings, Hooks())
    assert state.epoch == 2 and state.best_epoch == 1 and state.phase == 1


def test_resume_state_continues_where_it_stopped(vit: Backbone) -> None:
    tr, va = loaders(vit, n_train=8, batch=4)
    plan = Plan(
        "two",
        (Phase("head", ("head",), 1), Phase("all", tuple(vit.group_names()), 1)),
    )
    done = TrainState(phase=1, phase_epoch=0, epoch=1, step=2, best_score=0.0, best_epoch=1)
    seen: list[str] = []
    hooks = Hooks(phase_start=lambda i, phase, table: seen.append(phase.name))
    state = train(vit.model, vit.groups, plan, tr, va, LABELS, LoopSettings(), hooks, done)
    assert seen == ["all"] and state.epoch == 2 and state.step == 4


def test_evaluate_restores_modes_and_needs_no_grad(vit: Backbone) -> None:
    _, va = loaders(vit, n_train=4, batch=4)
    vit.model.train()
    vit.model.head.eval()
    out = evaluate(vit.model, va, torch.device("cpu"))
    assert out["logits"].shape == (6, 3) and not out["logits"].requires_grad
    assert vit.model.training and not vit.model.head.training
    assert out["targets"].tolist() == [0, 1, 2, 0, 1, 2]
