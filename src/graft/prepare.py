"""Everything a run needs, built and checked from the config before any file is written: the
data splits, the backbone (initialized), the plan, the loaders, the loss with its penalties and
constraints, and the loop settings (:func:`prepare`). Every mistake in the config or the data
surfaces here, so a run that starts has nothing left to refuse.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.adapt.batches import MixedBatches
from graft.adapt.setup import (
    build_adaptation,
    check_adapt_config,
    check_adapt_plan,
)
from graft.augment import build_augment, build_batch_mix
from graft.config import (
    DataConfig,
    InitConfig,
    RunConfig,
)
from graft.console import RunLog
from graft.data import Splits
from graft.data.types import Examples
from graft.distill import (
    IGNORE_INDEX,
    Distillation,
    Teacher,
    check_same_preprocessing,
    join_examples,
    load_teacher,
    with_teacher_logits,
)
from graft.distributed import active, rank_device, shard_loader
from graft.errors import UsageError
from graft.features.body import compute_features
from graft.features.store import shared_store
from graft.models import Backbone, ImagePreprocess, build_backbone, check_backbone_name
from graft.models.base import set_dropout
from graft.optim import OptimizerFactory, ScheduleFactory
from graft.phases import apply_phase
from graft.pipeline import Loaders, with_sampler
from graft.run_data import load_splits as load_splits  # re-exported: commands use it here
from graft.run_data import unlabeled_sets
from graft.runtime import (
    Precision,
    keep_freed_memory,
    resolve_precision,
    select_device,
    set_threads,
)
from graft.strategies import build_plan
from graft.strategies.plan import Plan
from graft.tasks import Regression, Task, task_of
from graft.train import LoopSettings, Objective, steps_per_epoch


def configured_backbone(
    config: RunConfig,
    num_classes: int,
    *,
    pretrained: bool | None = None,
    label_names: Sequence[str] | None = None,
) -> Backbone:
    """The backbone the config describes, with a new ``num_classes`` head (``pretrained``
    overrides ``backbone.pretrained``). With ``backbone.init_from``, the saved model it names
    instead: its architecture and all its weights, head included (``label_names``, when given,
    must be its classes)."""
    b = config.backbone
    if b.init_from is not None:
        return _saved_backbone(config, num_classes, label_names)
    return build_backbone(
        b.name,
        num_classes=num_classes,
        source=b.source,
        pretrained=b.pretrained if pretrained is None else pretrained,
        head_dropout=b.head_dropout,
        pooling=b.pooling,
        dropout=b.dropout,
        trust_remote_code=b.trust_remote_code,
        image_size=config.data.image_size,
        max_length=config.data.max_length,
        keep_layers=b.keep_layers,
    )


def _saved_backbone(
    config: RunConfig, num_classes: int, label_names: Sequence[str] | None
) -> Backbone:
    """``backbone.init_from``: a saved graft model (e.g. a pruned one, whose smaller shapes its
    JSON records), to train further. Options that would rebuild or re-initialise what it
    holds are refused: the point is to start from exactly its weights."""
    from graft.artifact import load_model

    b, init = config.backbone, config.init
    field = "backbone.init_from"
    if b.keep_layers is not None:
        raise UsageError(
            f"{field} and backbone.keep_layers: the saved model's layers are already chosen",
            hint="remove backbone.keep_layers",
        )
    if init.head == "linear_probe" or init.body == "random":
        what = "init.head: linear_probe" if init.head == "linear_probe" else "init.body: random"
        raise UsageError(
            f"{field} and {what}: it would overwrite the saved model's weights",
            hint="remove it from the init: section (the default keeps the loaded weights)",
        )
    saved = load_model(Path(str(b.init_from)).expanduser())
    names = list(saved.label_map.names)
    if len(names) != num_classes or (label_names is not None and list(label_names) != names):
        wanted = list(label_names) if label_names is not None else f"{num_classes} classes"
        raise UsageError(
            f"{field} {b.init_from}: the saved model has the classes {names}, the data {wanted}",
            hint="start from a model fine-tuned on these classes",
        )
    backbone = saved.backbone
    prep = backbone.preprocess
    given = config.data.image_size if isinstance(prep, ImagePreprocess) else config.data.max_length
    own = prep.image_size if isinstance(prep, ImagePreprocess) else prep.max_length
    if given is not None and given != own:
        option = "data.image_size" if isinstance(prep, ImagePreprocess) else "data.max_length"
        raise UsageError(
            f"{option}: {given}, but the model of {field} was trained with {own}",
            hint=f"remove {option} (the saved model's own is used)",
        )
    if b.dropout is not None:
        set_dropout(backbone.model.body, b.dropout)
    backbone.model.train()  # load_model returns it in eval mode; the loop sets modes per phase
    return backbone


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _trainable_in_plan(backbone: Backbone, plan: Plan) -> int:
    """Parameters that train in at least one phase of the plan."""
    ids: set[int] = set()
    for phase in plan.phases:
        apply_phase(backbone.groups, phase)
        ids |= {id(p) for p in backbone.model.parameters() if p.requires_grad}
    return sum(p.numel() for p in backbone.model.parameters() if id(p) in ids)


def _augmentation(data: DataConfig, backbone: Backbone, num_classes: int) -> tuple[Any, Any]:
    """The per-image transform and batch mix of the config (images only)."""
    wanted = data.augment != "none" or data.mixup_alpha > 0 or data.cutmix_alpha > 0
    if not isinstance(backbone.preprocess, ImagePreprocess):
        if wanted:
            raise UsageError(
                "data.augment, data.mixup_alpha, data.cutmix_alpha apply to images only"
            )
        return None, None
    return (
        build_augment(data.augment, backbone.preprocess.image_size),
        build_batch_mix(data.mixup_alpha, data.cutmix_alpha, num_classes),
    )


def _initialize(
    init: InitConfig,
    backbone: Backbone,
    train_loader: Any,
    settings: LoopSettings,
    log: RunLog,
) -> None:
    """Apply the ``init:`` section. It runs on a resume too (deterministically: the seed is set),
    so that the references of L2-SP and distance bounds are the same as in the first run."""
    from graft import init as policies

    if init.body == "random":
        policies.random_init(backbone, init.method, init.scale)
        log(f"init: body re-initialized ({init.method})")
    elif init.reinit_top:
        try:
            names = policies.reinit_top(backbone, init.reinit_top, init.method, init.scale)
        except ValueError as e:
            raise UsageError(f"init.reinit_top: {e}") from None
        log(f"init: re-initialized the top {init.reinit_top} groups: {', '.join(names)}")
    if init.head == "linear_probe":
        data = compute_features(
            backbone.model,
            train_loader,
            settings.device,
            settings.precision,
            settings.feature_store,
        )
        labeled = data.targets >= 0  # distill.unlabeled examples have no class to fit
        fit = policies.fit_head_linear_probe(
            backbone.model.head, data.features[labeled], data.targets[labeled]
        )
        log(f"init: head fitted by a linear probe (train accuracy {fit['accuracy']:.3f})")
    elif init.head != "default":
        policies.init_head(backbone.model.head, init.head, std=init.head_std)


def _objective(config: RunConfig, model: torch.nn.Module, train_targets: np.ndarray) -> Objective:
    """The loss, penalties and constraints of the config. Built after initialization: L2-SP and
    the distance bound take the weights as they are now as their reference."""
    from graft import regularize as reg
    from graft.losses import (
        MultiLabelLoss,
        RegressionLoss,
        build_loss,
        class_weights_from_counts,
    )

    loss_cfg, r = config.loss, config.regularize
    loss_fn: Any
    weights: torch.Tensor | list[float] | None = None
    n_classes = int(model.head.fc.out_features)  # type: ignore[union-attr, arg-type]
    if isinstance(loss_cfg.class_weights, list):
        if len(loss_cfg.class_weights) != n_classes:
            raise UsageError(
                f"loss.class_weights: {len(loss_cfg.class_weights)} weights for {n_classes} classes"
            )
        weights = loss_cfg.class_weights
    elif loss_cfg.class_weights != "none":
        counts = np.bincount(train_targets, minlength=n_classes)
        weights = class_weights_from_counts(counts, loss_cfg.class_weights)
    if config.task == "regression":
        loss_fn = RegressionLoss(loss_cfg.name, loss_cfg.huber_delta)
    elif config.task == "multilabel":
        loss_fn = MultiLabelLoss(_pos_weight(loss_cfg.pos_weight, train_targets))
    else:
        loss_fn = build_loss(
            loss_cfg.name,
            label_smoothing=loss_cfg.label_smoothing,
            class_weights=weights,
            focal_gamma=loss_cfg.focal_gamma,
        )
    penalties: list[Any] = []
    if r.l1:
        penalties.append(reg.L1Penalty(model, r.l1))
    if r.l2:
        penalties.append(reg.L2Penalty(model, r.l2))
    if r.l2_sp or r.l2_sp_head:
        penalties.append(reg.L2SP(model.named_parameters(), r.l2_sp, r.l2_sp_head))
    constraints: list[Any] = []
    if r.max_norm is not None:
        constraints.append(reg.MaxNorm(model, r.max_norm))
    if r.clamp is not None:
        constraints.append(reg.Clamp(model.parameters(), *r.clamp))
    if r.sign is not None:
        constraints.append(
            reg.SignConstraint(model.parameters(), "+" if r.sign == "nonnegative" else "initial")
        )
    if r.distance_bound is not None:
        body = list(model.body.named_parameters(prefix="body"))  # type: ignore[union-attr]
        constraints.append(
            reg.DistanceBound(body, r.distance_bound, r.distance_norm, relative=r.distance_relative)
        )
    return Objective(loss_fn, penalties, constraints)


def _settings(
    config: RunConfig, device: torch.device, precision: Precision, cache_off: bool
) -> LoopSettings:
    """The loop's settings: the optimizer and schedule factories, built (and checked) once.
    ``cache_off``: no frozen-body or prefix cache (batches augmented at random, or batches that
    must carry their teacher logits)."""
    o, s, t = config.optim, config.schedule, config.train
    optimizer = OptimizerFactory(
        name=o.name,
        lr=o.lr,
        weight_decay=o.weight_decay,
        # L2-SP replaces weight decay on the backbone (Li et al. 2018).
        body_weight_decay=0.0 if config.regularize.l2_sp else None,
        decoupled_weight_decay=o.weight_decay_mode == "decoupled",
        momentum=o.momentum,
        nesterov=o.nesterov,
        betas=o.betas,
        eps=o.eps,
    )
    schedule = ScheduleFactory(
        name=s.name,
        warmup_ratio=s.warmup_ratio,
        warmup_steps=s.warmup_steps,
        options=s.options(),
    )
    return LoopSettings(
        optimizer=optimizer,
        schedule=schedule,
        grad_accum=t.grad_accum,
        max_grad_norm=t.max_grad_norm,
        max_grad_value=t.max_grad_value,
        metric=t.metric,
        patience=t.early_stopping_patience,
        min_delta=t.early_stopping_min_delta,
        frozen_bn_updates=t.frozen_bn == "update",
        feature_cache=t.feature_cache and not cache_off,
        feature_store=shared_store() if t.feature_cache else None,
        device=device,
        precision=precision,
        seed=t.seed,
    )


def _check_modality(backbone: Backbone, splits: Splits, name: str) -> None:
    if backbone.modality != splits.train.modality:
        raise UsageError(
            f"backbone.name: {name} takes {backbone.modality} input, "
            f"but data.train ({splits.train.origin}) holds {splits.train.modality}"
        )


def _check_closure_optimizer(config: RunConfig, backbone: Backbone, trainable: int) -> None:
    from graft.optim import check_lbfgs_applicable

    if config.optim.name == "lbfgs" and active() is not None:
        raise UsageError(
            "optim.name: lbfgs takes full-batch steps in one process; a data-parallel run "
            "cannot split its line search",
            hint="run it without --nproc / torchrun, or choose another optimizer",
        )
    if config.optim.name != "lbfgs":
        return
    if config.train.grad_accum > 1:
        raise UsageError("optim.name: lbfgs steps on whole batches; set train.grad_accum=1")
    has_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in backbone.model.modules())
    reason = check_lbfgs_applicable(trainable, has_dropout)
    if reason:
        raise UsageError(
            f"optim.name: lbfgs does not fit this run: {reason}",
            hint="L-BFGS suits a small deterministic problem, e.g. strategy linear_probe",
        )


def _pos_weight(setting: str | list[float], targets: np.ndarray) -> torch.Tensor | None:
    """``loss.pos_weight``: none, balanced (each label's negatives / positives in training), or
    one weight per label."""
    if setting == "none":
        return None
    if isinstance(setting, list):
        if len(setting) != targets.shape[1]:
            raise UsageError(
                f"loss.pos_weight: {len(setting)} weights for {targets.shape[1]} labels"
            )
        return torch.tensor(setting, dtype=torch.float32)
    positives = targets.sum(0)
    return torch.from_numpy((len(targets) - positives) / np.maximum(positives, 1.0)).float()


def _check_task_config(config: RunConfig) -> None:
    """What a regression or multi-label task cannot do yet (or at all), refused by field
    before the data is read."""
    if config.task == "classification":
        return
    if config.task != "multilabel" and config.loss.pos_weight != "none":
        raise UsageError("loss.pos_weight: only with task: multilabel")
    d, loss = config.data, config.loss
    refused = [
        ("distill.teacher", config.distill.teacher is not None, "its soft targets are classes"),
        ("adapt.method", config.adapt.method != "none", "its terms act on one class per row"),
        ("data.mixup_alpha", d.mixup_alpha > 0 or d.cutmix_alpha > 0, "it blends one class"),
        ("loss.class_weights", loss.class_weights != "none", "weights of single classes"),
        ("loss.label_smoothing", loss.label_smoothing > 0, "it smooths one class per row"),
        ("init.head", config.init.head == "linear_probe", "the probe fits a softmax classifier"),
    ]
    for field, on, why in refused:
        if on:
            raise UsageError(
                f"{field}: not with task: {config.task} ({why})",
                hint=f"remove {field} from the config",
            )


def _check_distill_config(config: RunConfig) -> None:
    """What can be refused in the ``distill:`` section before the data is read."""
    d, data = config.distill, config.data
    if d.unlabeled is not None and (data.mixup_alpha > 0 or data.cutmix_alpha > 0):
        raise UsageError(
            "distill.unlabeled: MixUp and CutMix (data.mixup_alpha, data.cutmix_alpha) blend "
            "the labels of two examples, and an unlabeled example has none",
            hint="turn MixUp/CutMix off, or distil without unlabeled data",
        )


def _distillation(
    config: RunConfig,
    teacher: Teacher,
    train_set: Examples,
    train_loader: Any,
    loaders: Loaders,
    device: torch.device,
    log: RunLog,
) -> tuple[Distillation, Any]:
    """The objective's distillation term and the training loader it needs: batches with their
    teacher logits computed once, or (batches augmented at random) the teacher run on each."""
    d, t = config.distill, config.train
    precision = resolve_precision(t.precision, device, cnn=teacher.loaded.backbone.is_cnn)
    term = f"distill: teacher {d.teacher}, alpha {d.alpha}, temperature {d.temperature}"
    if loaders.random:
        teacher.model.to(device)
        log(f"{term}; it runs on each training batch (they are augmented at random)")
        return Distillation(d.alpha, d.temperature, teacher, precision), train_loader
    started = time.perf_counter()
    logits = teacher.logits(
        train_set,
        device=device,
        precision=precision,
        batch_size=t.eval_batch_size or 2 * t.batch_size,
    )
    log(
        f"{term}; its logits of the {len(train_set)} training examples computed once in "
        f"{time.perf_counter() - started:.1f}s"
    )
    return Distillation(d.alpha, d.temperature), with_teacher_logits(train_loader, logits)


@dataclass
class Prepared:
    """Everything a run needs, built and checked from the config before any file is written."""

    config: RunConfig
    splits: Splits
    backbone: Backbone
    plan: Plan
    loaders: Loaders
    train_loader: Any
    val_loader: Any
    settings: LoopSettings
    objective: Objective
    device: torch.device
    threads: int
    channels_last: bool
    trainable: int
    unlabeled: dict[str, Examples] = dataclasses.field(default_factory=dict)  # labels unread

    @property
    def labels(self) -> list[str]:
        return list(self.splits.label_map.names)

    @property
    def task(self) -> Task:
        assert self.settings.task is not None  # set by prepare()
        return self.settings.task

    def eval_loader(self, ex: Examples) -> Any:
        eval_bs = self.config.train.eval_batch_size or 2 * self.config.train.batch_size
        targets = self.task.targets(ex)
        return self.loaders.loader(ex, targets, eval_bs, shuffle=False, by_length=True)


def prepare(config: RunConfig, log: RunLog) -> Prepared:
    """Data, backbone (initialized), plan, loaders, objective: everything but the run directory.
    Every mistake in the config or the data surfaces here."""
    threads = set_threads(config.hardware.threads)
    keep_freed_memory()
    device = rank_device(select_device(config.hardware.device))
    seed_everything(config.train.seed)
    check_backbone_name(config.backbone.name, config.backbone.source)  # before the data is read
    _check_task_config(config)
    _check_distill_config(config)
    check_adapt_config(config)
    splits = load_splits(config.data, config.task)
    task = task_of(splits, config.task)
    sets = unlabeled_sets(config)
    unlabeled, target = sets.get("distill.unlabeled"), sets.get("data.target_unlabeled")
    log(
        f"data: train {len(splits.train)}, validation {len(splits.validation)}, "
        f"test {len(splits.test) if splits.test else 0}"
        + "".join(f", {k} {len(v)}" for k, v in splits.extra.items())
        + (f"; {len(splits.label_map)} classes" if task.kind == "classification" else "")
        + (f"; {len(splits.label_map)} labels (multi-label)" if task.kind == "multilabel" else "")
        + (
            f"; regression of {splits.label_map.names[0]} (training mean {task.scale.mean:.4g}, "
            f"std {task.scale.std:.4g})"
            if isinstance(task, Regression)
            else ""
        )
        + (f"; unlabeled {len(unlabeled)} (distill.unlabeled)" if unlabeled is not None else "")
        + (f"; target {len(target)} unlabeled (adapt: {config.adapt.method})" if target else "")
    )
    teacher = (
        load_teacher(config.distill.teacher, splits.label_map.names, modality=splits.train.modality)
        if config.distill.teacher is not None
        else None
    )
    backbone = configured_backbone(config, task.outputs, label_names=splits.label_map.names)
    _check_modality(backbone, splits, config.backbone.name)
    precision = resolve_precision(config.train.precision, device, cnn=backbone.is_cnn)
    plan = build_plan(
        config.strategy.name,
        config.strategy.params(),
        groups=backbone.group_names(),
        epochs=config.train.epochs,
    )
    check_adapt_plan(config, plan)
    trainable = _trainable_in_plan(backbone, plan)
    channels_last = (
        backbone.is_cnn if config.hardware.channels_last is None else config.hardware.channels_last
    )
    model = backbone.model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loaders = Loaders(
        backbone.preprocess,
        backbone.tokenizer,
        channels_last,
        config.hardware.num_workers,
        config.train.seed,
        *_augmentation(config.data, backbone, len(splits.label_map)),
    )
    if teacher is not None and loaders.random:  # the teacher will run on the student's inputs
        check_same_preprocessing(teacher, backbone.preprocess)
    train_targets = task.targets(splits.train)
    # Unlabeled transfer examples train with the labeled ones, for the loader only (the splits
    # and the label map stay those of the labeled data); their target says they have no label.
    # (An adaptation's target rows likewise; the two are never combined.)
    train_set, loader_targets = splits.train, train_targets
    for extra, where in ((unlabeled, "distill.unlabeled"), (target, "data.target_unlabeled")):
        if extra is not None:
            train_set = join_examples(splits.train, extra, where)
            no_label = np.full(len(extra), IGNORE_INDEX, dtype=train_targets.dtype)
            loader_targets = np.concatenate([train_targets, no_label])
    train_loader = loaders.loader(
        train_set,
        loader_targets,
        config.train.batch_size,
        shuffle=True,
        by_length=True,
        train=True,
    )
    if target is not None:  # each batch: source and target examples in the stated ratio
        lengths = getattr(train_loader.batch_sampler, "lengths", None)
        mixed = MixedBatches(
            len(splits.train),
            len(target),
            config.train.batch_size,
            config.adapt.target_fraction,
            config.train.seed,
            lengths,
        )
        train_loader = with_sampler(train_loader, mixed)
    _check_closure_optimizer(config, backbone, trainable)
    settings = _settings(config, device, precision, loaders.random or teacher is not None)
    settings.task = task
    steps = steps_per_epoch(len(train_loader), settings)
    for phase in plan.phases:  # a schedule option that does not apply: refused before the run
        settings.schedule.check(steps * phase.epochs)
    _initialize(config.init, backbone, train_loader, settings, log)
    objective = _objective(config, model, train_targets)
    if target is not None:
        total = steps * plan.epochs
        objective.adapt = build_adaptation(config, model.head, device, total)
        objective.constraints.append(objective.adapt)  # its step after every optimizer step
    if teacher is not None:
        objective.distill, train_loader = _distillation(
            config, teacher, train_set, train_loader, loaders, device, log
        )
    # Distributed: this rank's shard of every global batch (the loader is unchanged otherwise);
    # caches and the head's linear-probe fit above still see every example.
    train_loader = shard_loader(train_loader)
    prepared = Prepared(
        config=config,
        splits=splits,
        backbone=backbone,
        plan=plan,
        loaders=loaders,
        train_loader=train_loader,
        val_loader=None,
        settings=settings,
        objective=objective,
        device=device,
        threads=threads,
        channels_last=channels_last,
        trainable=trainable,
        unlabeled=sets,
    )
    prepared.val_loader = prepared.eval_loader(splits.validation)
    return prepared
