"""Knowledge distillation (``distill:``) and smaller students (``backbone.keep_layers``): the loss
against a hand computation, the cached teacher logits against fresh teacher passes, distilled
runs (text with cached logits and unlabeled data, images with the teacher on augmented batches)
that save loadable models, the layers a smaller student keeps, and every refusal, with nothing
written."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BACKBONES, build_tiny, save_tiny_bert, write_yaml

from graft.artifact import load_model, save_model
from graft.config import validate
from graft.console import RunLog
from graft.data import load_examples
from graft.data.types import Examples, LabelMap
from graft.distill import (
    IGNORE_INDEX,
    Distillation,
    TeacherBatches,
    distillation_loss,
    with_teacher_logits,
)
from graft.errors import UsageError
from graft.models import build_backbone, rebuild
from graft.optim import OptimizerFactory
from graft.pipeline import Loaders
from graft.prepare import prepare
from graft.run import fit
from graft.strategies import build_plan
from graft.train import Hooks, LoopSettings, Objective, train

WORDS = "good bad great awful fine movie plot actor boring moving the a film dull long".split()  # noqa: SIM905

# --------------------------------------------------------------------------- the loss


def _hand_loss(
    student: list[list[float]],
    teacher: list[list[float]],
    targets: list[int],
    alpha: float,
    t: float,
) -> float:
    """The formula, term by term in plain Python: α·T²·mean_i KL(p_t,i ‖ p_s,i) + (1 − α)·(mean
    cross-entropy over the labeled rows, 0 without any)."""

    def softmax(z: list[float], temp: float) -> list[float]:
        e = [math.exp(v / temp) for v in z]
        return [v / sum(e) for v in e]

    kl = []
    for zs, zt in zip(student, teacher, strict=True):
        ps, pt = softmax(zs, t), softmax(zt, t)
        kl.append(sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True)))
    soft = t * t * sum(kl) / len(kl)
    ce = [-math.log(softmax(zs, 1.0)[y]) for zs, y in zip(student, targets, strict=True) if y >= 0]
    hard = sum(ce) / len(ce) if ce else 0.0
    return alpha * soft + (1 - alpha) * hard


STUDENT = [[1.0, -0.5, 0.25], [0.1, 2.0, -1.0], [-0.7, 0.3, 1.5], [0.0, 0.0, 3.0]]
TEACHER = [[2.0, 0.5, -1.0], [-0.3, 1.0, 0.2], [0.4, -1.2, 2.2], [1.0, 1.0, 0.0]]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(
    "targets", [[0, 1, 2, 2], [0, IGNORE_INDEX, 2, IGNORE_INDEX], [IGNORE_INDEX] * 4]
)
def test_the_loss_is_the_formula(alpha: float, temperature: float, targets: list[int]) -> None:
    student = torch.tensor(STUDENT, requires_grad=True)
    loss = distillation_loss(
        student,
        torch.tensor(TEACHER),
        torch.tensor(targets),
        alpha=alpha,
        temperature=temperature,
        hard_loss=F.cross_entropy,
    )
    expected = _hand_loss(STUDENT, TEACHER, targets, alpha, temperature)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    loss.backward()  # also a batch with nothing to learn from (α 0, no labels) backpropagates
    assert student.grad is not None


def test_the_hard_term_is_the_configured_loss_on_the_labeled_rows() -> None:
    from graft.losses import build_loss

    weighted = build_loss("cross_entropy", class_weights=[1.0, 2.0, 3.0])
    targets = [2, IGNORE_INDEX, 0, 1]
    loss = distillation_loss(
        torch.tensor(STUDENT),
        torch.tensor(TEACHER),
        torch.tensor(targets),
        alpha=0.0,
        temperature=2.0,
        hard_loss=weighted,
    )
    # Class-weighted mean over the three labeled rows: Σ w_y·ℓ / Σ w_y.
    rows = [(STUDENT[0], 2), (STUDENT[2], 0), (STUDENT[3], 1)]
    w = [3.0, 1.0, 2.0]
    ce = [-(z[y] - math.log(sum(math.exp(v) for v in z))) for z, y in rows]
    assert float(loss) == pytest.approx(
        sum(a * b for a, b in zip(w, ce, strict=True)) / sum(w), rel=1e-5
    )


def test_with_class_probabilities_every_row_is_labeled() -> None:
    # MixUp/CutMix targets: the hard term is the cross-entropy against the mixed distribution.
    probs = [[0.7, 0.3, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.2, 0.2, 0.6]]
    loss = distillation_loss(
        torch.tensor(STUDENT),
        torch.tensor(TEACHER),
        torch.tensor(probs),
        alpha=0.25,
        temperature=2.0,
        hard_loss=F.cross_entropy,
    )
    soft = _hand_loss(STUDENT, TEACHER, [IGNORE_INDEX] * 4, 1.0, 2.0)
    hard = 0.0
    for z, q in zip(STUDENT, probs, strict=True):
        log_norm = math.log(sum(math.exp(v) for v in z))
        hard -= sum(qk * (zk - log_norm) for zk, qk in zip(z, q, strict=True)) / len(probs)
    assert float(loss) == pytest.approx(0.25 * soft + 0.75 * hard, rel=1e-5)


# --------------------------------------------------------------------------- fixtures


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 14)))) for _ in range(n)]


def _jsonl(path: Path, texts: list[str], labels: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)
        )
    )
    return path


@pytest.fixture(scope="module")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Labeled training texts (neg, pos) and an unlabeled set whose labels mean nothing."""
    folder = tmp_path_factory.mktemp("distill-data")
    n = 60
    return {
        "train": _jsonl(folder / "train.jsonl", _texts(n, 1), ["neg", "pos"] * (n // 2)),
        "unlabeled": _jsonl(folder / "unlabeled.jsonl", _texts(20, 2), ["?"] * 20),
        "other": _jsonl(folder / "other.jsonl", _texts(n, 3), ["a", "b", "c"] * (n // 3)),
    }


def _save_text_teacher(folder: Path, bert_dir: Path, labels: tuple[str, ...]) -> Path:
    """A random-init tiny BERT saved as a model folder, reading at most 8 tokens (the students
    here read 32: the teacher must preprocess with its own settings)."""
    torch.manual_seed(1)
    backbone = build_backbone(
        f"hf:{bert_dir}", num_classes=len(labels), pretrained=False, max_length=8
    )
    save_model(folder, backbone, LabelMap(labels), plan={})
    return folder


@pytest.fixture(scope="module")
def text_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """A teacher whose labels are the data's in the other order (pos, neg)."""
    return _save_text_teacher(
        tmp_path_factory.mktemp("teacher") / "model", tiny_bert_dir, ("pos", "neg")
    )


@pytest.fixture(scope="module")
def six_layer_bert(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """A tiny 6-layer BERT with (random, seeded) weights saved as its pretrained weights."""
    folder = tmp_path_factory.mktemp("six-layer-bert")
    return save_tiny_bert(folder, tiny_bert_dir, layers=6, seed=2)


def _text_config(
    out: Path, student: Path, train: Path, teacher: Path | None, **sections: dict[str, Any]
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backbone": {"name": str(student), "source": "hf", "pretrained": False},
        "data": {"train": {"path": str(train)}, "max_length": 32, "val_fraction": 0.2},
        "distill": {"teacher": str(teacher)} if teacher is not None else {},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 16, "precision": "fp32"},
        "hardware": {"threads": 1},
        "output": {"dir": str(out), "progress": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- the teacher's logits


def test_cached_teacher_logits_are_fresh_teacher_passes(
    tmp_path: Path, tiny_bert_dir: Path, text_data: dict[str, Path], text_teacher: Path
) -> None:
    config = _text_config(
        tmp_path / "runs",
        tiny_bert_dir,
        text_data["train"],
        text_teacher,
        distill={"unlabeled": {"path": str(text_data["unlabeled"])}},
    )
    prep = prepare(validate(config), RunLog(quiet=True))
    data = prep.train_loader.dataset
    assert isinstance(data, TeacherBatches)
    unlabeled = load_examples(path=text_data["unlabeled"])
    train = prep.splits.train
    assert len(data) == len(train) + len(unlabeled)  # the splits themselves hold no unlabeled text
    # The teacher's own path (its tokenizer, its 8 tokens), on the examples in training order;
    # its classes are (pos, neg), the student's (neg, pos).
    teacher = load_model(text_teacher)
    assert teacher.label_map.names == ("pos", "neg") and prep.labels == ["neg", "pos"]
    examples = Examples("text", [*train.inputs, *unlabeled.inputs], ["?"] * len(data), "all")
    fresh = teacher.logits(examples)[:, [1, 0]]
    assert torch.allclose(data.logits, fresh, atol=1e-5)
    # Every training batch carries the rows of its own examples; unlabeled ones have no target.
    sampler = prep.train_loader.batch_sampler
    assert sampler is not None
    for index in sampler:
        batch = data.__getitems__(index)
        assert torch.allclose(batch["teacher"], fresh[index], atol=1e-5)
        unlabeled_rows = torch.as_tensor(index) >= len(train)
        assert bool((batch["targets"][unlabeled_rows] == IGNORE_INDEX).all())
        assert bool((batch["targets"][~unlabeled_rows] >= 0).all())


def test_a_distilled_run_trains_a_smaller_student_and_saves_a_model_that_loads(
    tmp_path: Path, six_layer_bert: Path, text_data: dict[str, Path], text_teacher: Path
) -> None:
    config = _text_config(
        tmp_path / "runs",
        six_layer_bert,
        text_data["train"],
        text_teacher,
        backbone={"pretrained": True, "keep_layers": [0, 2, 4]},
        init={"head": "linear_probe"},  # fitted on the labeled examples only
        distill={
            "unlabeled": {"path": str(text_data["unlabeled"])},
            "unlabeled_size": 12,
            "alpha": 0.7,
            "temperature": 3.0,
        },
    )
    result = fit(validate(config), quiet=True)
    log = (result.run_dir / "log.txt").read_text()
    assert "feature cache off: distillation needs each batch's teacher logits" in log
    assert "head fitted by a linear probe" in log
    assert "unlabeled 12 (distill.unlabeled)" in log
    match = re.search(r"data: train (\d+),", log)
    assert match is not None
    n_train = int(match.group(1)) + 12  # the labeled examples, then the unlabeled ones
    assert f"its logits of the {n_train} training examples computed once" in log
    (record,) = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(record["train_loss"]) and 0.0 <= record["train_accuracy"] <= 1.0
    model = load_model(result.run_dir)
    assert model.meta["backbone"]["hf_config"]["num_hidden_layers"] == 3
    assert [g.name for g in model.backbone.groups] == [
        "embeddings",
        "layer.0",
        "layer.1",
        "layer.2",
        "head",
    ]
    assert len(model.predict(["a moving film", "dull plot"])) == 2


def test_lr_find_sweeps_the_distillation_loss(
    tiny_bert_dir: Path, text_data: dict[str, Path], text_teacher: Path, tmp_path: Path
) -> None:
    from graft.lr_find import find_lr

    config = _text_config(tmp_path / "runs", tiny_bert_dir, text_data["train"], text_teacher)
    out = find_lr(validate(config), steps=4, quiet=True)
    assert len(out["losses"]) >= 2 and all(math.isfinite(x) for x in out["losses"])
    assert _nothing_written(tmp_path / "runs")


def test_train_accuracy_counts_labeled_examples_only() -> None:
    vit = build_tiny(TINY_BACKBONES["timm"][1], None)  # no dropout: train mode predicts as eval
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 12, 12), dtype=np.uint8)
    examples = Examples("image", images, ["a"] * 12, "random images")
    targets = np.array([0, 1, 2, IGNORE_INDEX] * 3, dtype=np.int64)
    ld = Loaders(vit.preprocess, None, False, 0, seed=3)
    with torch.no_grad():
        batches = ld.loader(examples, None, 12, shuffle=False)
        preds = torch.cat([vit.model(**b["inputs"]).argmax(1) for b in batches]).numpy()
    labeled = targets >= 0
    expected = float((preds[labeled] == targets[labeled]).mean())
    train_loader = with_teacher_logits(
        ld.loader(examples, targets, 4, shuffle=True), torch.randn(12, 3)
    )
    val = ld.loader(examples.subset(np.flatnonzero(labeled)), targets[labeled], 4, shuffle=False)
    records: list[dict[str, Any]] = []
    # An LR so small that no weight moves: the epoch's predictions are those computed above.
    settings = LoopSettings(optimizer=OptimizerFactory(name="sgd", lr=1e-30, weight_decay=0.0))
    train(
        vit.model,
        vit.groups,
        build_plan("full", {}, groups=vit.group_names(), epochs=1),
        train_loader,
        val,
        ["a", "b", "c"],
        settings,
        Hooks(epoch_end=lambda st, rec, *_: records.append(rec)),
        objective=Objective(distill=Distillation(alpha=0.5, temperature=2.0)),
    )
    assert records[0]["train_accuracy"] == pytest.approx(expected)


# --------------------------------------------------------------------------- smaller students


def test_keep_layers_keeps_those_pretrained_layers_in_order(six_layer_bert: Path) -> None:
    from transformers import BertModel

    keep = [0, 2, 4]
    small = build_backbone(f"hf:{six_layer_bert}", num_classes=2, keep_layers=keep)
    pretrained = BertModel.from_pretrained(str(six_layer_bert)).state_dict()
    encoder = small.model.body.encoder  # type: ignore[union-attr]
    assert len(encoder.encoder.layer) == 3 and encoder.config.num_hidden_layers == 3
    for new, old in enumerate(keep):
        mine = encoder.encoder.layer[new].state_dict()
        theirs = {k: v for k, v in pretrained.items() if k.startswith(f"encoder.layer.{old}.")}
        assert len(mine) == len(theirs) > 0
        for name, value in mine.items():
            assert torch.equal(value, theirs[f"encoder.layer.{old}.{name}"]), (new, name)
    for name, value in encoder.embeddings.state_dict().items():
        assert torch.equal(value, pretrained[f"embeddings.{name}"])
    assert small.group_names() == ["embeddings", "layer.0", "layer.1", "layer.2", "head"]
    # The saved description rebuilds the smaller network, and the weights fit it exactly.
    assert small.spec["hf_config"]["num_hidden_layers"] == 3
    rebuilt = rebuild(small.spec, small.preprocess.to_dict(), six_layer_bert)
    rebuilt.model.load_state_dict(small.model.state_dict(), strict=True)


@pytest.mark.parametrize(
    ("keep", "problem"),
    [
        ([0, 6], "out of range"),
        ([-1, 2], "out of range"),
        ([1, 1], "repeats a layer"),
        ([3, 1], "increasing order"),
    ],
)
def test_bad_keep_layers_are_refused_naming_the_field(
    six_layer_bert: Path, keep: list[int], problem: str
) -> None:
    with pytest.raises(UsageError, match=rf"^backbone\.keep_layers: .*{problem}"):
        build_backbone(f"hf:{six_layer_bert}", num_classes=2, keep_layers=keep)


def test_empty_keep_layers_are_refused_by_the_config() -> None:
    with pytest.raises(UsageError, match=r"backbone\.keep_layers"):
        validate(
            {"backbone": {"name": "x", "keep_layers": []}, "data": {"train": {"dataset": "digits"}}}
        )


# --------------------------------------------------------------------------- images


def _image_config(out: Path, teacher: Path | None, **sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backbone": {"name": "test_efficientnet", "source": "timm", "pretrained": False},
        "data": {
            "train": {"dataset": "digits"},
            "train_size": 80,
            "val_size": 30,
            "test_size": 30,
            "image_size": 32,
        },
        "distill": {"teacher": str(teacher)} if teacher is not None else {},
        "train": {"epochs": 1, "batch_size": 16},
        "hardware": {"threads": 1},
        "output": {"dir": str(out), "progress": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


@pytest.fixture(scope="module")
def image_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init timm test network for the ten digits, at 32 px (the students' size)."""
    folder = tmp_path_factory.mktemp("image-teacher") / "model"
    torch.manual_seed(3)
    backbone = build_backbone(
        "timm:test_efficientnet", num_classes=10, pretrained=False, image_size=32
    )
    save_model(folder, backbone, LabelMap(tuple(str(i) for i in range(10))), plan={})
    return folder


def test_on_augmented_batches_the_teacher_runs_on_each_batch(
    tmp_path: Path, image_teacher: Path
) -> None:
    config = _image_config(tmp_path / "runs", image_teacher, data={"augment": "light"})
    result = fit(validate(config), quiet=True)
    log = (result.run_dir / "log.txt").read_text()
    assert "it runs on each training batch" in log
    assert "feature cache off: training batches are augmented at random" in log
    assert load_model(result.run_dir).label_map.names == tuple(str(i) for i in range(10))


def test_on_augmented_batches_a_teacher_of_other_preprocessing_is_refused(
    tmp_path: Path, image_teacher: Path
) -> None:
    config = _image_config(
        tmp_path / "runs", image_teacher, data={"augment": "light", "image_size": 40}
    )
    with pytest.raises(UsageError, match=r"^distill\.teacher: .*image_size 32 \(teacher\) vs 40"):
        fit(validate(config), quiet=True)
    assert _nothing_written(tmp_path / "runs")


def test_mixup_with_unlabeled_data_is_refused(tmp_path: Path, image_teacher: Path) -> None:
    config = _image_config(
        tmp_path / "runs",
        image_teacher,
        data={"mixup_alpha": 0.2},
        distill={"unlabeled": {"dataset": "digits"}},
    )
    with pytest.raises(UsageError, match=r"^distill\.unlabeled: MixUp and CutMix"):
        fit(validate(config), quiet=True)
    assert _nothing_written(tmp_path / "runs")


def test_keep_layers_on_an_image_backbone_is_refused(tmp_path: Path) -> None:
    config = _image_config(tmp_path / "runs", None, backbone={"keep_layers": [0, 1]})
    with pytest.raises(UsageError, match=r"^backbone\.keep_layers: does not apply to image"):
        fit(validate(config), quiet=True)
    assert _nothing_written(tmp_path / "runs")


# --------------------------------------------------------------------------- the command line


def _cli(tmp_path: Path, config: dict[str, Any], *overrides: str) -> int:
    from graft.cli.app import main

    return main(["fit", str(write_yaml(tmp_path / "config.yaml", config)), "--quiet", *overrides])


def test_a_teacher_folder_that_is_no_model_exits_3_naming_it(
    tmp_path: Path, tiny_bert_dir: Path, text_data: dict[str, Path], capsys: Any
) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    config = _text_config(tmp_path / "runs", tiny_bert_dir, text_data["train"], None)
    assert _cli(tmp_path, config, f"distill.teacher={empty}") == 3
    err = capsys.readouterr().err
    assert f"distill.teacher: {empty}: not a graft model folder" in err
    assert _nothing_written(tmp_path / "runs")


def test_a_teacher_of_other_labels_exits_2_naming_both(
    tmp_path: Path, tiny_bert_dir: Path, text_data: dict[str, Path], text_teacher: Path, capsys: Any
) -> None:
    config = _text_config(tmp_path / "runs", tiny_bert_dir, text_data["other"], text_teacher)
    assert _cli(tmp_path, config) == 2
    err = capsys.readouterr().err
    assert "distill.teacher:" in err and "['pos', 'neg']" in err and "['a', 'b', 'c']" in err
    assert _nothing_written(tmp_path / "runs")


@pytest.mark.parametrize(
    "setting", ["distill.alpha=1.5", "distill.alpha=-0.1", "distill.temperature=0"]
)
def test_distill_numbers_out_of_range_exit_2(
    tmp_path: Path,
    tiny_bert_dir: Path,
    text_data: dict[str, Path],
    text_teacher: Path,
    setting: str,
    capsys: Any,
) -> None:
    config = _text_config(tmp_path / "runs", tiny_bert_dir, text_data["train"], text_teacher)
    assert _cli(tmp_path, config, setting) == 2
    assert setting.split("=")[0] in capsys.readouterr().err
    assert _nothing_written(tmp_path / "runs")


def test_keep_layers_out_of_range_exits_2(
    tmp_path: Path, tiny_bert_dir: Path, text_data: dict[str, Path], capsys: Any
) -> None:
    config = _text_config(tmp_path / "runs", tiny_bert_dir, text_data["train"], None)
    assert _cli(tmp_path, config, "backbone.keep_layers=[0, 2]") == 2  # the tiny BERT has 2
    assert "backbone.keep_layers: [0, 2] has an index out of range" in capsys.readouterr().err
    assert _nothing_written(tmp_path / "runs")


def test_unlabeled_data_without_a_teacher_is_refused() -> None:
    with pytest.raises(UsageError, match=r"distill\.unlabeled needs distill\.teacher"):
        validate(
            {
                "backbone": {"name": "x"},
                "data": {"train": {"dataset": "digits"}},
                "distill": {"unlabeled": {"dataset": "digits"}},
            }
        )


def test_distill_is_part_of_the_config_hash() -> None:
    from graft.config import HASH_NEUTRAL_SECTIONS, config_hash

    base = validate({"backbone": {"name": "x"}, "data": {"train": {"dataset": "digits"}}})
    changed = base.to_dict()
    changed["distill"]["alpha"] = 0.9
    assert "distill" not in HASH_NEUTRAL_SECTIONS
    assert config_hash(changed) != config_hash(base.to_dict())
