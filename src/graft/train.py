"""The training loop: phases of a plan, epochs, steps, evaluation, early stopping.

Short on purpose. Everything else (checkpoints, logs, progress) happens in named hooks that the
loop calls explicitly (:class:`LoopHooks`); the runner supplies them (:mod:`graft.recorder`). The
optimizer and the schedule come as factories built once from the config
(:class:`~graft.optim.OptimizerFactory`, :class:`~graft.optim.ScheduleFactory`): each phase asks
them for a fresh optimizer over the groups it trains.

The loop can be stopped after any optimizer step and continued bit for bit: :class:`TrainState`
holds where it is inside the epoch (the batch and the epoch's running sums) and the loss of every
step, and the data pipeline can start an epoch at any batch. A NaN or Inf loss stops training
(:class:`~graft.errors.TrainingDiverged`) before the optimizer applies it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from graft.adapt.term import Adaptation
from graft.checkpoint import restore_rng_states, rng_untouched
from graft.data.types import LabelMap
from graft.distill import Distillation
from graft.distributed import (
    gather_batches,
    my_batches,
    seed_step,
    sum_over_ranks,
    world_size,
    wrap,
)
from graft.errors import TrainingDiverged
from graft.features.body import cached_loaders, head_only
from graft.features.prefix import cached_prefix_loaders
from graft.features.store import FeatureStore
from graft.models.base import GraftModel, LayerGroup
from graft.optim import OptimizerFactory, ScheduleFactory, is_closure_optimizer
from graft.phases import apply_phase, group_table, set_train_mode
from graft.pipeline import Batch, set_epoch, to_device
from graft.regularize import clip_gradients
from graft.runtime import Precision, autocast, no_grad_eval
from graft.strategies.plan import Phase, Plan
from graft.tasks import Classification, Task, score


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so a resume continues exactly here."""

    phase: int = 0  # index of the current phase
    phase_epoch: int = 0  # epochs finished in the current phase
    epoch: int = 0  # epochs finished overall
    step: int = 0  # optimizer steps overall
    best_score: float | None = None
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs without improvement (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)
    batch: int = 0  # batches finished in the current epoch (a checkpoint mid-epoch)
    sums: dict[str, float] = field(default_factory=dict)  # the current epoch's running sums
    losses: list[float] = field(default_factory=list)  # the loss of every optimizer step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def at_phase_start(self) -> bool:
        """Nothing of the current phase has run yet."""
        return self.phase_epoch == 0 and self.batch == 0


@dataclass
class LoopSettings:
    """What the loop needs beyond the plan and the data: the optimizer and schedule factories,
    and the loop's own settings, as flat values."""

    optimizer: OptimizerFactory = field(default_factory=OptimizerFactory)
    schedule: ScheduleFactory = field(default_factory=ScheduleFactory)
    grad_accum: int = 1
    max_grad_norm: float | None = None
    max_grad_value: float | None = None
    metric: str = "accuracy"
    patience: int | None = None
    min_delta: float = 0.0  # an improvement smaller than this does not reset the patience
    frozen_bn_updates: bool = False
    feature_cache: bool = True  # train head-only phases on stored body features
    feature_store: FeatureStore | None = None  # shared with other runs (features/store.py)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision = "fp32"  # "bf16": autocast of the forward passes (runtime.py)
    seed: int = 0  # train.seed: a distributed run's per-rank random streams start from it
    task: Task | None = None  # None: classification over the loop's label names


@dataclass
class Objective:
    """What each step minimises, and what it keeps true afterwards.

    ``loss_fn(logits, targets)`` (targets may be class probabilities, after MixUp/CutMix);
    ``penalties``: objects with ``penalty() -> Tensor`` added to the loss (L1, L2-SP);
    ``constraints``: objects with ``apply()`` run after every optimizer step (max-norm, ...);
    ``distill``: a teacher's soft targets blended with ``loss_fn`` (:mod:`graft.distill`);
    ``adapt``: a domain-adaptation term for the unlabeled target rows (:mod:`graft.adapt`).
    """

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    penalties: list[Any] = field(default_factory=list)
    constraints: list[Any] = field(default_factory=list)
    distill: Distillation | None = None
    adapt: Adaptation | None = None  # unlabeled target rows' term (graft.adapt)

    def loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of a batch's logits, penalties included; with distillation it needs the
        teacher's logits of the batch (:meth:`batch_loss` finds them)."""
        if self.adapt is not None:
            # The supervised loss over the labeled (source) rows, plus the target rows' term.
            labeled = targets >= 0
            supervised = (
                self.loss_fn(logits[labeled].float(), targets[labeled])
                if bool(labeled.any())
                else logits.sum() * 0.0
            )
            loss = supervised + self.adapt.term(logits, targets)
        elif self.distill is None:
            loss = self.loss_fn(logits.float(), targets)
        elif teacher_logits is None:
            raise ValueError("a distillation objective needs the batch's teacher logits")
        else:
            loss = self.distill.loss(logits, teacher_logits, targets, self.loss_fn)
        for p in self.penalties:
            loss = loss + p.penalty()
        return loss

    def batch_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The loss of one training batch, its teacher logits (if distilling) carried by the
        batch or computed by the teacher from the batch's inputs."""
        teacher = None if self.distill is None else self.distill.teacher_logits(batch)
        return self.loss(logits, batch["targets"], teacher)


class LoopHooks(Protocol):
    """What the loop calls, at fixed points, in this order (:class:`~graft.recorder.Recorder`
    is the runner's implementation; :class:`Hooks` takes plain callables)."""

    def phase_start(self, index: int, phase: Phase, table: list[dict[str, Any]]) -> None:
        """A phase begins; ``table`` is :func:`group_table` (each group's size, state, LR)."""

    def message(self, text: str) -> None:
        """A line for the run log (caches computed or turned off, ...)."""

    def epoch_start(self, state: TrainState, n_batches: int) -> None:
        """An epoch begins (possibly mid-way, on a resume: ``state.batch`` > 0)."""

    def step(self, batch_index: int, loss: float, batch_size: int) -> None:
        """A batch was trained."""

    def step_end(self, state: TrainState, optimizer: Any, scheduler: Any, epoch_done: bool) -> None:
        """An optimizer step was taken: ``state`` is complete for a checkpoint; ``epoch_done``:
        it was the epoch's last step, and the epoch's evaluation and ``epoch_end`` follow."""

    def epoch_end(
        self,
        state: TrainState,
        record: dict[str, Any],
        is_best: bool,
        optimizer: Any,
        scheduler: Any,
    ) -> None:
        """An epoch was trained and evaluated; ``state`` already points past it."""


def _noop(*_: Any) -> None:
    return None


@dataclass
class Hooks:
    """:class:`LoopHooks` from plain callables, each a no-op unless given (tests, benchmarks)."""

    phase_start: Callable[..., None] = _noop
    message: Callable[..., None] = _noop
    epoch_start: Callable[..., None] = _noop
    step: Callable[..., None] = _noop
    step_end: Callable[..., None] = _noop
    epoch_end: Callable[..., None] = _noop


def steps_per_epoch(n_batches: int, settings: LoopSettings) -> int:
    """Optimizer steps per epoch: ceil(batches / grad_accum), or one full-batch L-BFGS step."""
    return 1 if settings.optimizer.closure_based else -(-n_batches // settings.grad_accum)


def evaluate(
    model: nn.Module,
    loader: DataLoader[Batch],
    device: torch.device,
    precision: Precision = "fp32",
    task: Task | None = None,
) -> dict[str, Any]:
    """Logits (a regression's outputs), targets and mean loss over a labeled loader: the
    task's plain loss (cross-entropy by default). In a distributed run each rank computes whole
    batches of the loader and every rank gets all of them, in order: the same numbers as one
    process."""
    parts = []
    with no_grad_eval(model), autocast(device, precision):
        for batch in my_batches(loader):
            batch = to_device(batch, device)
            parts.append((model(**batch["inputs"]).float().cpu(), batch["targets"].cpu()))
    parts = gather_batches(parts)
    all_logits = torch.cat([logits for logits, _ in parts])
    all_targets = torch.cat([targets for _, targets in parts])
    if task is None:
        loss = float(F.cross_entropy(all_logits, all_targets))
    else:
        loss = task.eval_loss(all_logits, all_targets)
    return {"logits": all_logits, "targets": all_targets.numpy(), "loss": loss}


def loop_task(settings: LoopSettings, label_names: list[str]) -> Task:
    """The task the loop scores: the settings', or classification over ``label_names``."""
    return settings.task or Classification(LabelMap(tuple(label_names)))


def train(
    model: GraftModel,
    groups: list[LayerGroup],
    plan: Plan,
    train_loader: DataLoader[Batch],
    val_loader: DataLoader[Batch],
    label_names: list[str],
    settings: LoopSettings,
    hooks: LoopHooks,
    state: TrainState | None = None,
    resume: dict[str, Any] | None = None,
    objective: Objective | None = None,
) -> TrainState:
    """Run ``plan`` from ``state`` (a fresh start by default). ``resume`` holds the optimizer,
    scheduler and RNG states of the checkpoint that ``state`` came from; ``objective`` the
    loss, penalties and constraints (default: plain cross-entropy)."""
    state = state or TrainState()
    objective = objective or Objective()
    device = settings.device
    rng = resume.get("rng") if resume is not None else None
    while state.phase < len(plan.phases):
        phase = plan.phases[state.phase]
        apply_phase(groups, phase)
        optimizer = settings.optimizer(groups, phase)
        steps = steps_per_epoch(len(train_loader), settings)
        scheduler = settings.schedule(optimizer, steps * phase.epochs)
        if resume is not None:
            # A checkpoint at a phase boundary holds the finished phase's optimizer: this phase
            # starts with a new one, as it did in the run that wrote the checkpoint.
            if not state.at_phase_start:
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
            resume = None
        hooks.phase_start(state.phase, phase, group_table(groups, phase, settings.optimizer.lr))
        with rng_untouched():  # so a checkpoint before or after the set-up resumes alike
            forward, phase_train, phase_val, context = _phase_inputs(
                model, groups, phase, train_loader, val_loader, settings, hooks
            )
        if rng is not None:  # the one restore point of a resume
            restore_rng_states(rng)
            rng = None
        trained = wrap(forward)  # DDP when distributed: built per phase, as groups thaw
        while state.phase_epoch < phase.epochs:
            hooks.epoch_start(state, len(phase_train))
            set_train_mode(model, settings.frozen_bn_updates, bn_eval=phase.bn == "eval")
            record = _train_epoch(
                trained,
                phase_train,
                optimizer,
                scheduler,
                settings,
                objective,
                hooks,
                state,
                context,
            )
            with context():  # the cached prefix is swapped in only while the model runs
                val = evaluate(forward, phase_val, device, settings.precision, settings.task)
            is_best, phase_done = _close_epoch(state, record, val, label_names, phase, settings)
            # The checkpoint written here already points at the next epoch (or phase).
            hooks.epoch_end(state, record, is_best, optimizer, scheduler)
            if phase_done:
                break
    return state


def _close_epoch(
    state: TrainState,
    record: dict[str, Any],
    val: dict[str, Any],
    label_names: list[str],
    phase: Phase,
    settings: LoopSettings,
) -> tuple[bool, bool]:
    """Record the epoch, track the best score and the patience; advance the state past the
    epoch (and past the phase when it is over). Returns (is_best, phase_done)."""
    task = loop_task(settings, label_names)
    metrics = task.metrics(val["logits"], val["targets"], val["loss"])
    state.epoch += 1
    state.phase_epoch += 1
    state.batch, state.sums = 0, {}
    record.update(
        epoch=state.epoch,
        phase=phase.name,
        phase_index=state.phase,
        val_loss=val["loss"],
        **task.val_record(metrics),
    )
    state.history.append(record)
    current, best = score(metrics, settings.metric), state.best_score
    is_best = best is None or current > best
    improved = best is None or current > best + settings.min_delta
    state.stale_epochs = 0 if improved else state.stale_epochs + 1
    if is_best:
        state.best_score, state.best_epoch = current, state.epoch
    patience = phase.patience if phase.patience is not None else settings.patience
    phase_done = (patience is not None and state.stale_epochs >= patience) or (
        state.phase_epoch >= phase.epochs
    )
    if phase_done:
        state.phase, state.phase_epoch, state.stale_epochs = state.phase + 1, 0, 0
    return is_best, phase_done


def _phase_inputs(
    model: GraftModel,
    groups: list[LayerGroup],
    phase: Phase,
    train_loader: DataLoader[Batch],
    val_loader: DataLoader[Batch],
    settings: LoopSettings,
    hooks: LoopHooks,
) -> tuple[nn.Module, DataLoader[Batch], DataLoader[Batch], Callable[[], Any]]:
    """What a phase trains on: the model and the data, or, when the groups below the lowest
    trained one are frozen, what runs above them and their outputs computed once (the
    frozen-prefix cache; not when frozen BatchNorm layers update: then those outputs change)."""
    plain = (model, train_loader, val_loader, contextlib.nullcontext)
    trained = [i for i, g in enumerate(groups) if g.name in phase.train]
    cut = trained[0] if trained and phase.params == "all" else 0
    if not settings.feature_cache or settings.frozen_bn_updates or cut == 0:
        return plain
    started, store = time.perf_counter(), settings.feature_store
    if head_only(phase):  # the whole body is frozen: train the head on stored features
        cached = cached_loaders(
            model, train_loader, val_loader, settings.device, settings.precision, store
        )
        hooks.message(
            f"feature cache: body outputs {cached.origin} in {time.perf_counter() - started:.1f}s"
        )
        return model.head, cached.train, cached.val, contextlib.nullcontext
    frozen = {id(p) for g in groups[:cut] for _, p in g.params}
    prefix = cached_prefix_loaders(
        model, frozen, train_loader, val_loader, settings.device, settings.precision, store
    )
    if isinstance(prefix, str):
        hooks.message(f"prefix cache off: {prefix}")
        return plain
    hooks.message(
        f"prefix cache: outputs of {groups[cut - 1].name} and below {prefix.origin} in "
        f"{time.perf_counter() - started:.1f}s"
    )
    return prefix.model, prefix.train, prefix.val, prefix.cut.installed


def _train_epoch(
    model: nn.Module,
    loader: DataLoader[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: LoopSettings,
    objective: Objective,
    hooks: LoopHooks,
    state: TrainState,
    context: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Train one epoch, from batch ``state.batch`` on (0, or where a checkpoint stopped).
    ``context()`` is entered around each forward pass only (the frozen-prefix cache swaps stubs
    into the model there): between steps the model is whole, as a checkpoint must see it."""
    if is_closure_optimizer(optimizer):
        return _full_batch_epoch(
            model, loader, optimizer, scheduler, objective, hooks, state, context, settings
        )
    set_epoch(loader, state.epoch, state.batch)
    device, accum = settings.device, settings.grad_accum
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    clipping = settings.max_grad_norm is not None or settings.max_grad_value is not None
    sums = _epoch_sums(state)
    started, earlier = time.perf_counter(), sums["time_s"]
    step_losses: list[float] = []  # the micro-batch losses of the current optimizer step
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)  # the whole epoch's, also when it starts past its first batch
    for i, batch in enumerate(loader, start=state.batch):
        batch = to_device(batch, device)
        steps_now = (i + 1) % accum == 0 or i + 1 == n_batches
        seed_step(settings.seed, state.epoch, i)  # distributed: this rank's dropout stream
        # DDP all-reduces gradients in the backward of a step's last micro-batch only.
        with _gradient_sync(model, steps_now):
            with context(), autocast(device, settings.precision):
                logits = model(**batch["inputs"])
            loss = objective.batch_loss(logits, batch)
            value = float(loss.detach())
            counts = _batch_counts(value, logits, batch["targets"], settings.task)
            if world_size() > 1:  # the global batch's loss and counts, on every rank
                counts = sum_over_ranks(counts)
                value = counts[0] / counts[1]
                # A rank's shard weighs by its share of the global batch; DDP averages.
                loss = loss * (len(batch["targets"]) * world_size() / counts[1])
            _finite(value, state)  # before anything is applied
            # Average over the micro-batches of a step: 4 micro-batches of 32 = a step of 128.
            (loss / accum).backward()
        step_losses.append(value)
        n = _count(sums, counts)
        if steps_now:
            if clipping:
                clip_gradients(trainable, settings.max_grad_norm, settings.max_grad_value)
            optimizer.step()
            _after_step(optimizer, scheduler, objective, state, sum(step_losses) / len(step_losses))
            step_losses.clear()
            sums["time_s"] = earlier + time.perf_counter() - started
            state.batch, state.sums = i + 1, dict(sums)
            hooks.step_end(state, optimizer, scheduler, i + 1 == n_batches)
        hooks.step(i, value, n)
    elapsed = earlier + time.perf_counter() - started
    return _epoch_record(state, sums, optimizer, elapsed, settings.task)


def _full_batch_epoch(
    model: nn.Module,
    loader: DataLoader[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    objective: Objective,
    hooks: LoopHooks,
    state: TrainState,
    context: Callable[[], Any],
    settings: LoopSettings,
) -> dict[str, Any]:
    """An epoch of a closure-based optimizer (L-BFGS): one step over the whole training set.

    L-BFGS (Liu & Nocedal 1989) is a full-batch method: its curvature pairs and its line search
    assume one deterministic loss. Stepped on mini-batches, each step fits its own batch (up to
    20 iterations) and the next batch's loss explodes (2.3 → 134 → 2.9 → 51 on a linear probe).
    So the closure evaluates the mean loss over every batch (gradients accumulated, weighted by
    batch size) and the strong-Wolfe line search sees one function. The epoch's training loss
    and accuracy are those before the step."""
    sums = _epoch_sums(state)
    started, earlier = time.perf_counter(), sums["time_s"]
    n_batches = len(loader)
    if state.batch >= n_batches:  # resumed after this epoch's step: only its evaluation is left
        return _epoch_record(state, sums, optimizer, earlier, settings.task)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    first: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        set_epoch(loader, state.epoch, 0)
        total, seen = torch.zeros(()), 0
        for batch in loader:
            batch = to_device(batch, settings.device)
            with context(), autocast(settings.device, settings.precision):
                logits = model(**batch["inputs"])
            loss = objective.batch_loss(logits, batch)
            n = len(batch["targets"])
            (loss * n).backward()  # a sum over examples; divided by their count below
            total, seen = total + loss.detach() * n, seen + n
            if not first:
                counts = _batch_counts(
                    float(loss.detach()), logits, batch["targets"], settings.task
                )
                _count(sums, counts)
        for p in params:
            if p.grad is not None:
                p.grad.div_(seen)
        mean = total / seen
        _finite(float(mean), state)
        if not first:
            first.append(float(mean))
        return mean

    optimizer.step(closure)  # type: ignore[arg-type]
    _after_step(optimizer, scheduler, objective, state, first[0])
    sums["time_s"] = earlier + time.perf_counter() - started
    state.batch, state.sums = n_batches, dict(sums)
    hooks.step_end(state, optimizer, scheduler, True)
    hooks.step(n_batches - 1, first[0], int(sums["seen"]))
    return _epoch_record(state, sums, optimizer, sums["time_s"], settings.task)


def _epoch_sums(state: TrainState) -> dict[str, Any]:
    """The epoch's running sums, continued from a checkpoint's. A checkpoint written before
    unlabeled examples were counted apart had only labeled ones: ``labeled`` is ``seen``."""
    sums = {"loss": 0.0, "correct": 0, "seen": 0, "time_s": 0.0, **state.sums}
    sums.setdefault("labeled", sums["seen"])
    return sums


def _batch_counts(
    loss: float, logits: torch.Tensor, targets: torch.Tensor, task: Task | None
) -> list[float]:
    """One batch's loss sum, size, task score (correct predictions; a regression's squared
    errors) and labeled count (summed over ranks when distributed). Only labeled examples are
    scored (an unlabeled distillation or target example has a negative target)."""
    n = len(targets)
    if task is not None and task.kind != "classification":  # every row labeled (no MixUp)
        return [loss * n, float(n), task.batch_score(logits, targets), float(n)]
    hard = targets.argmax(1) if targets.ndim == 2 else targets  # MixUp/CutMix: soft targets
    labeled = hard >= 0
    correct = int(((logits.argmax(1) == hard) & labeled).sum())
    return [loss * n, float(n), float(correct), float(labeled.sum())]


def _count(sums: dict[str, Any], counts: list[float]) -> int:
    """Add one batch's :func:`_batch_counts` to the epoch's running sums; returns its size."""
    loss, n, correct, labeled = counts
    sums["loss"] += loss
    sums["correct"] += correct  # a regression's squared errors: not a count
    sums["labeled"] += int(labeled)
    sums["seen"] += int(n)
    return int(n)


def _gradient_sync(model: nn.Module, sync: bool) -> Any:
    """DDP's ``no_sync`` on micro-batches that do not end a step (nothing otherwise)."""
    no_sync = getattr(model, "no_sync", None)
    return contextlib.nullcontext() if sync or no_sync is None else no_sync()


def _after_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    objective: Objective,
    state: TrainState,
    loss: float,
) -> None:
    """What follows every optimizer step: the schedule, the constraints, the step count."""
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    for constraint in objective.constraints:
        constraint.apply()
    state.step += 1
    state.losses.append(loss)


def _epoch_record(
    state: TrainState,
    sums: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    elapsed: float,
    task: Task | None,
) -> dict[str, Any]:
    seen = max(sums["seen"], 1)
    labeled = int(sums["labeled"])
    scored = (
        {"train_accuracy": sums["correct"] / max(labeled, 1)}
        if task is None
        else task.train_record(sums["correct"], labeled)
    )
    return {
        "step": state.step,
        "train_loss": sums["loss"] / seen,
        **scored,
        "lr": max(g["lr"] for g in optimizer.param_groups),
        "epoch_time_s": elapsed,
        "samples_per_s": sums["seen"] / max(elapsed, 1e-9),
    }


def _finite(loss: float, state: TrainState) -> float:
    """``loss``, if it is a number: a NaN or Inf loss means training diverged."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: the loss is {loss} at step {state.step + 1} "
            f"(epoch {state.epoch + 1}, phase {state.phase})",
            hint="the last checkpoint holds the last good weights; lower optim.lr, set "
            "train.max_grad_norm, or check the data for extreme values",
        )
    return loss
