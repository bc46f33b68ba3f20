"""The config's loss, regularize and optimizer sections reach the training loop."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_image_run_config

from graft.config import validate
from graft.console import RunLog
from graft.errors import UsageError
from graft.prepare import prepare
from graft.regularize import L2SP, L1Penalty, L2Penalty, MaxNorm
from graft.run import fit

DIGITS = {"dataset": "digits"}


def _config(tmp_path: Path, **sections: dict[str, Any]) -> Any:
    base = tiny_image_run_config(DIGITS, tmp_path, **sections)
    base["data"].update({"train_size": 120, "val_size": 40, "test_size": 40})
    return validate(base)


def _prepare(tmp_path: Path, **sections: dict[str, Any]) -> Any:
    return prepare(_config(tmp_path, **sections), RunLog(quiet=True))


def test_objective_carries_the_configured_penalties_and_constraints(tmp_path: Path) -> None:
    prep = _prepare(tmp_path, regularize={"l1": 1e-4, "l2_sp": 0.1, "max_norm": 3.0})
    kinds = {type(p) for p in prep.objective.penalties} | {
        type(c) for c in prep.objective.constraints
    }
    assert kinds == {L1Penalty, L2SP, MaxNorm}
    # L2-SP replaces weight decay on the backbone: only the head keeps it.
    assert prep.settings.optimizer.body_weight_decay == 0.0


def test_penalties_enter_the_loss(tmp_path: Path) -> None:
    prep = _prepare(tmp_path, regularize={"l1": 1.0})
    logits, targets = torch.zeros(2, 10), torch.tensor([0, 1])
    plain = torch.nn.functional.cross_entropy(logits, targets)
    assert float(prep.objective.loss(logits, targets).detach()) > float(plain) + 1.0


def test_class_weights_from_frequencies_change_the_loss(tmp_path: Path) -> None:
    plain = _prepare(tmp_path).objective
    weighted = _prepare(tmp_path, loss={"class_weights": [1.0] * 9 + [50.0]}).objective
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([9, 0, 1, 2, 3, 9])
    assert float(weighted.loss(logits, targets)) != pytest.approx(
        float(plain.loss(logits, targets))
    )


def test_class_weights_of_the_wrong_length_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"loss.class_weights"):
        _prepare(tmp_path, loss={"class_weights": [1.0, 2.0]})


def test_l2_sp_keeps_the_backbone_closer_to_its_start(tmp_path: Path) -> None:
    def body_distance(**regularize: Any) -> float:
        sections = {
            "optim": {"lr": 3e-2, "weight_decay": 0.0},
            "regularize": regularize,
            "train": {"epochs": 2},
        }
        start = {
            k: v.clone()
            for k, v in _prepare(tmp_path, **sections).backbone.model.body.state_dict().items()
        }
        name = "l2sp" if regularize else "plain"
        result = fit(_config(tmp_path, output={"name": name}, **sections), quiet=True)
        from safetensors.torch import load_file

        end = load_file(str(result.model_dir / "model.safetensors"))
        return sum(
            float((end[f"body.{k}"] - v).pow(2).sum())
            for k, v in start.items()
            if v.is_floating_point() and "running" not in k
        )

    assert body_distance(l2_sp=5.0) < body_distance()


def test_lbfgs_is_refused_where_it_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"optim.name: lbfgs"):
        _prepare(
            tmp_path,
            optim={"name": "lbfgs"},
            backbone={"head_dropout": 0.0},
            train={"grad_accum": 2},
        )


def test_plain_l2_is_selectable_and_enters_the_loss(tmp_path: Path) -> None:
    prep = _prepare(tmp_path, regularize={"l2": 0.5})
    (penalty,) = prep.objective.penalties
    assert isinstance(penalty, L2Penalty)
    trained = [p for p in prep.backbone.model.parameters() if p.requires_grad]
    expected = 0.25 * sum(float(p.detach().pow(2).sum()) for p in trained)  # 0.5/2 · Σ‖w‖²
    assert float(penalty.penalty().detach()) == pytest.approx(expected, rel=1e-5)


def test_lbfgs_steps_on_the_whole_training_set_and_never_goes_uphill(tmp_path: Path) -> None:
    """L-BFGS is full-batch: one step per epoch over every training example, so its strong-Wolfe
    line search sees one loss, which each step can only lower (on mini-batches it oscillated:
    2.30 → 134 → 2.91 → 51 on this probe)."""
    config = _config(
        tmp_path,
        optim={"name": "lbfgs", "lr": 0.5, "weight_decay": 0.0},
        strategy={"name": "linear_probe"},
        schedule={"name": "constant"},
        train={"epochs": 4},
    )
    result = fit(config, quiet=True)
    steps = [json.loads(line) for line in (result.run_dir / "steps.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # one optimizer step per epoch
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.5 * losses[0]


def test_lbfgs_trains_a_linear_probe(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        optim={"name": "lbfgs", "lr": 0.5, "weight_decay": 0.0},
        strategy={"name": "linear_probe"},
        schedule={"name": "constant"},
    )
    result = fit(config, quiet=True)
    assert result.results["validation"]["accuracy"] > 0.2  # 10 classes: chance is 0.1


@pytest.mark.parametrize(
    "schedule",
    [
        {"name": "step", "step_size": 0.5, "gamma": 0.1},
        {"name": "one_cycle"},
        {"name": "slanted_triangular", "cut_frac": 0.2},
    ],
)
def test_schedules_from_the_config_run(tmp_path: Path, schedule: dict[str, Any]) -> None:
    result = fit(_config(tmp_path, schedule=schedule), quiet=True)
    assert result.results["test"] is not None


def test_a_schedule_option_that_does_not_apply_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        fit(_config(tmp_path, schedule={"name": "cosine", "cut_frac": 0.2}), quiet=True)
    assert not any(tmp_path.iterdir())  # nothing half-written
