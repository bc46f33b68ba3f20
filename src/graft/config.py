"""The typed run config: a YAML file plus dotted ``key=value`` overrides, validated once.

Every field is declared here with its type and default; unknown keys are refused. Validation errors
name the field path (``train.epochs``) and the file, and become :class:`graft.errors.UsageError`.
Components never receive this object: the runner reads it and calls builders with plain keyword
arguments.
"""

from __future__ import annotations

import hashlib
import json
import operator
from functools import partial
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from graft.config_errors import MOVED_KEYS as MOVED_KEYS  # re-exported: tests list them
from graft.config_errors import format_errors, moved_keys
from graft.errors import UsageError
from graft.yaml_file import read_yaml


def _takes_numbers(annotation: Any) -> bool:
    """Whether a field holds an int or a float (``X | None`` too), and no bool."""
    kinds = (
        set(get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else {annotation}
    )
    return bool(kinds & {int, float}) and bool not in kinds


class _Strict(BaseModel):
    # No inf or nan where a number is asked for (optim.lr=inf would train on NaN weights).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads `true` as a boolean, which pydantic would take as 1 (train.epochs=true).
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _takes_numbers(field.annotation):
            raise ValueError(f"a number is needed, not {str(value).lower()}")
        return value


_unset = partial(operator.is_, None)
_HF = "a Hugging Face dataset: a saved folder (load_from_disk) or a hub name (load_dataset)"


class SourceConfig(_Strict):
    """Where one set of labeled examples comes from: a named real dataset, or a file/folder."""

    dataset: str | None = None
    split: str | None = None
    format: Literal["image_folder", "idx", "csv", "tsv", "jsonl"] | None = None
    # min_length: an empty path (`data.train.path=`) would mean the working directory.
    path: str | None = Field(None, min_length=1)
    labels_path: str | None = Field(None, min_length=1)
    text_column: str = "text"
    label_column: str = "label"
    delimiter: str | None = Field(
        None, min_length=1, max_length=1, description="CSV: the separator (default: detected)"
    )
    # Unset, these stay out of the dump (and so of the hash of every config older than them).
    hf_dataset: str | None = Field(None, min_length=1, exclude_if=_unset, description=_HF)
    image_column: str | None = Field(None, min_length=1, exclude_if=_unset)  # default: image
    memory: str | None = Field(None, min_length=1, exclude_if=_unset)  # set by fit(train=...)

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        if sum(x is not None for x in (self.dataset, self.path, self.hf_dataset, self.memory)) != 1:
            raise ValueError(
                "give exactly one of `dataset` (a named set), `path` (a file/folder) or "
                "`hf_dataset` (a Hugging Face dataset)"
            )
        return self


class DataConfig(_Strict):
    """A run's data: train, optional validation/test/extra sets, splitting, preprocessing."""

    train: SourceConfig
    validation: SourceConfig | None = None
    test: SourceConfig | None = None
    extra_eval: dict[str, SourceConfig] = Field(default_factory=dict)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    train_size: int | None = Field(None, gt=0)
    val_size: int | None = Field(None, gt=0)
    test_size: int | None = Field(None, gt=0)
    extra_size: int | None = Field(None, gt=0, description="subsample each extra_eval set")
    seed: int = 0
    image_size: int | None = Field(None, ge=8, le=1024, description="default: the backbone's")
    max_length: int | None = Field(
        None, ge=8, le=8192, description="text: tokens, longer texts are cut (default 128)"
    )
    augment: Literal["none", "light", "strong", "randaugment", "trivialaugment"] = "none"
    mixup_alpha: float = Field(0.0, ge=0, description="MixUp on training batches (0: off)")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix on training batches (0: off)")
    target_unlabeled: SourceConfig | None = Field(
        None,
        description="the target domain's examples for adapt: (any labels it has are never read)",
    )
    target_unlabeled_size: int | None = Field(
        None, gt=0, description="subsample data.target_unlabeled (seeded by data.seed)"
    )
    target_labeled: SourceConfig | None = Field(
        None, description="a few labeled target examples, trained on beside data.train's"
    )
    target_labeled_size: int | None = Field(
        None, gt=0, description="subsample data.target_labeled (seeded by data.seed)"
    )

    @model_validator(mode="after")
    def _target_size_needs_target(self) -> DataConfig:
        if self.target_unlabeled is None and self.target_unlabeled_size is not None:
            raise ValueError("target_unlabeled_size needs target_unlabeled")
        if self.target_labeled is None and self.target_labeled_size is not None:
            raise ValueError("target_labeled_size needs target_labeled")
        return self


class BackboneConfig(_Strict):
    """The pretrained network and the new head put on it."""

    name: str
    source: Literal["auto", "timm", "hf", "torchvision"] = "auto"
    pretrained: bool = True
    pooling: Literal["mean", "cls"] | None = Field(
        None, description="text backbones: mean over tokens (the default) or the [CLS] token"
    )
    head_dropout: float = Field(0.0, ge=0, lt=1)
    dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="set every dropout rate inside the backbone (default: its own)",
    )
    trust_remote_code: bool = Field(
        False,
        description="run Python code shipped with a Hugging Face model: only one you trust",
    )
    # Checked against the model's layer count (range, order, duplicates) when it is built.
    keep_layers: list[int] | None = Field(
        None,
        min_length=1,
        description="text backbones: keep these transformer layers of the pretrained encoder, "
        "in order, and drop the others (a DistilBERT-style smaller student, e.g. [0, 2, 4])",
    )
    init_from: str | None = Field(
        None,
        description="start from this saved graft model folder: its architecture (pruned "
        "shapes included) and all its weights, head included (e.g. a `graft prune` output's "
        "model/)",
    )


class InitConfig(_Strict):
    """Initialization, orthogonal to the strategy: what is kept pretrained, how the head starts."""

    body: Literal["pretrained", "random"] = "pretrained"
    reinit_top: int = Field(0, ge=0, description="re-initialize the top k body groups")
    method: Literal["default", "normal", "uniform"] = "default"
    scale: float = Field(0.02, gt=0, description="std (normal) or bound (uniform)")
    head: Literal[
        "default",
        "xavier_uniform",
        "xavier_normal",
        "kaiming_uniform",
        "kaiming_normal",
        "normal",
        "zeros",
        "linear_probe",
    ] = "default"
    head_std: float = Field(0.01, gt=0, description="std of head: normal")


class StrategyConfig(BaseModel):
    """A fine-tuning strategy by name; its own parameters sit beside ``name`` and are checked
    against the strategy's signature when the plan is built."""

    model_config = ConfigDict(extra="allow")
    name: str = "full"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimConfig(_Strict):
    """The optimizer; ``lr`` is the base rate that the plan's per-group multipliers scale."""

    name: Literal["adamw", "adam", "amsgrad", "sgd", "rmsprop", "adagrad", "adadelta", "lbfgs"] = (
        "adamw"
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    weight_decay_mode: Literal["decoupled", "l2"] = Field(
        "decoupled", description="decoupled (AdamW-style) or L2 added to the gradient"
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class ScheduleConfig(_Strict):
    """The per-step LR schedule; options a schedule does not use must stay unset."""

    name: Literal["constant", "step", "cosine", "linear", "one_cycle", "slanted_triangular"] = (
        "cosine"
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    step_size: float | None = Field(None, gt=0, description="step: steps, or a fraction if < 1")
    gamma: float | None = Field(None, gt=0, description="step: factor per step_size")
    min_factor: float | None = Field(None, ge=0, le=1, description="cosine/linear: floor")
    pct_start: float | None = Field(None, gt=0, lt=1, description="one_cycle: peak position")
    div_factor: float | None = Field(None, gt=0, description="one_cycle: start = max / this")
    final_div_factor: float | None = Field(None, gt=0, description="one_cycle: end = start / this")
    cut_frac: float | None = Field(None, gt=0, lt=1, description="slanted_triangular: peak")
    ratio: float | None = Field(None, gt=0, description="slanted_triangular: max / min LR")

    def options(self) -> dict[str, Any]:
        """The schedule-specific options that are set."""
        general = {"name", "warmup_ratio", "warmup_steps"}
        return {k: v for k, v in self.model_dump().items() if k not in general and v is not None}


#: Losses per task; the first is the task's default.
TASK_LOSSES = {
    "classification": ("cross_entropy", "focal"),
    "regression": ("mse", "huber", "l1"),
    "multilabel": ("bce",),
}
#: Selection metrics per task (``loss`` suits both); the first is the task's default.
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "regression": ("rmse", "mae", "r2", "spearman"),
    "multilabel": ("map", "micro_f1", "macro_f1", "subset_accuracy"),
}


class LossConfig(_Strict):
    """The training loss (the validation loss is always the task's plain loss: cross-entropy,
    or the mean squared error of standardised targets; comparable across runs)."""

    name: Literal["cross_entropy", "focal", "mse", "huber", "l1", "bce"] = "cross_entropy"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["none", "inverse", "effective_number"] | list[float] = "none"
    focal_gamma: float = Field(2.0, ge=0)
    huber_delta: float = Field(
        1.0, gt=0, description="huber: where the loss turns linear (standardised units)"
    )
    pos_weight: Literal["none", "balanced"] | list[float] = Field(
        "none", description="bce: each label's positive weight (balanced: negatives/positives)"
    )


class RegularizeConfig(_Strict):
    """Penalties added to the loss, and constraints kept after every step."""

    l1: float = Field(0.0, ge=0)
    l2: float = Field(
        0.0, ge=0, description="strength/2 · Σ‖w‖² on the trained weights (coupled L2, in the loss)"
    )
    l2_sp: float = Field(
        0.0, ge=0, description="α: pull the backbone towards its pretrained weights"
    )
    l2_sp_head: float = Field(0.0, ge=0, description="β: plain L2 on the head, with L2-SP")
    max_norm: float | None = Field(None, gt=0, description="per-unit max-norm of weight layers")
    clamp: tuple[float, float] | None = Field(None, description="[min, max] for every weight")
    sign: Literal["nonnegative", "initial"] | None = Field(
        None, description="keep weights non-negative, or keep their pretrained sign"
    )
    distance_bound: float | None = Field(
        None, gt=0, description="max distance of each body tensor from its pretrained value"
    )
    distance_norm: Literal["l2", "linf"] = "l2"
    distance_relative: bool = Field(True, description="radius relative to the tensor's norm")


class DistillConfig(_Strict):
    """Knowledge distillation from a trained graft model (off unless ``teacher`` is set): the
    loss is ``alpha·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − alpha)·CE(z_s, y)``, CE being
    the ``loss:`` section's; on ``unlabeled`` examples only the distillation term counts."""

    teacher: str | None = Field(
        None, min_length=1, description="a graft model folder: a run directory or its model/"
    )
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    temperature: float = Field(2.0, gt=0, description="T: softens both distributions")
    unlabeled: SourceConfig | None = Field(
        None, description="extra transfer data the teacher labels (its own labels are ignored)"
    )
    unlabeled_size: int | None = Field(
        None, gt=0, description="subsample the unlabeled set (seeded by data.seed)"
    )

    @model_validator(mode="after")
    def _needs_a_teacher(self) -> DistillConfig:
        # Without a teacher the section is off: data given for the teacher to label would be
        # ignored silently. (alpha and temperature have defaults, so a dumped config holds them.)
        if self.teacher is None and self.unlabeled is not None:
            raise ValueError("distill.unlabeled needs distill.teacher (the model that labels it)")
        if self.unlabeled is None and self.unlabeled_size is not None:
            raise ValueError("distill.unlabeled_size needs distill.unlabeled")
        return self


class AdaptConfig(_Strict):
    """Domain adaptation to the unlabeled target of ``data.target_unlabeled`` (off: ``none``).
    Each training batch mixes source and target examples; the target rows add the method's
    term to the supervised loss of the source rows (docs/adaptation.md)."""

    method: Literal["none", "entropy", "mcc", "self_training", "dann"] = "none"
    weight: float = Field(
        1.0, ge=0, description="the term's weight (DANN: λ's final value in its schedule)"
    )
    target_fraction: float = Field(
        0.5, gt=0, lt=1, description="the share of each training batch from the target"
    )
    temperature: float = Field(2.5, gt=0, description="MCC: T of softmax(z / T)")
    threshold: float = Field(
        0.9, gt=0, lt=1, description="self_training: the confidence a pseudo-label needs"
    )
    classifier_lr: float = Field(1e-3, gt=0, description="DANN: the domain classifier's LR")


class TrainConfig(_Strict):
    """The loop: epochs, batches, gradient handling, model selection, seeds."""

    epochs: int = Field(3, gt=0)
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    max_grad_norm: float | None = Field(None, gt=0)
    max_grad_value: float | None = Field(None, gt=0)
    metric: Literal[
        "accuracy",
        "macro_f1",
        "loss",
        "rmse",
        "mae",
        "r2",
        "spearman",
        "map",
        "micro_f1",
        "subset_accuracy",
    ] = Field("accuracy", description="model selection (regression: rmse, multilabel: map)")
    early_stopping_patience: int | None = Field(None, gt=0)
    early_stopping_min_delta: float = Field(0.0, ge=0)
    restore_best: bool = Field(
        True, description="the saved model is the best epoch's, not the last"
    )
    frozen_bn: Literal["eval", "update"] = Field(
        "eval", description="BatchNorm in frozen groups: statistics fixed, or updated"
    )
    feature_cache: bool = Field(True, description="head-only phases train on stored features")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast where the hardware computes bf16 natively (AMX, "
        "AVX512-BF16, a GPU), except a CNN on a CPU, fp32 elsewhere; weights, optimizer state "
        "and loss stay fp32",
    )
    seed: int = 0
    deterministic: bool = Field(
        False,
        description="deterministic algorithms only (torch.use_deterministic_algorithms); "
        "needed for reproducible GPU runs, CPU runs are reproducible without it",
    )


class HardwareConfig(_Strict):
    """Where and how fast a run computes; none of it changes what is trained, so a run may be
    resumed on other hardware (bit-identical results need the same device and thread count)."""

    device: str = "auto"
    threads: int | None = Field(None, gt=0, description="default: all cores")
    num_workers: int = Field(0, ge=0, description="data-loading processes")
    channels_last: bool | None = Field(None, description="default: on for CNNs")


class CheckpointConfig(_Strict):
    """How often the training checkpoint (what ``--resume`` continues from) is written."""

    every: int | None = Field(None, gt=0, description="also every this many optimizer steps")
    minutes: float | None = Field(
        10.0, gt=0, description="also when this many minutes passed since the last"
    )
    keep: bool = Field(
        False, description="keep the last checkpoint when the run finishes (else it is deleted)"
    )


class OutputConfig(_Strict):
    """Where a run's directory goes and what it shows besides its files."""

    dir: str = "runs"
    name: str | None = None
    progress: bool = Field(True, description="progress bars on a terminal")
    tensorboard: bool = Field(
        False, description="TensorBoard event files in RUN_DIR/tensorboard (graftkit[tensorboard])"
    )
    mlflow: bool | str = Field(False, description="MLflow: true (a store in ./mlruns) or a URI")

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, value: bool) -> bool:
        if value:  # refused with the config, before any data is read or directory written
            from graft.tensorboard import tensorboard_missing

            if reason := tensorboard_missing():
                raise ValueError(reason)
        return value


class RunConfig(_Strict):
    """Everything one ``graft fit`` needs."""

    task: Literal["classification", "regression", "multilabel"] = Field(
        "classification",
        description="regression: the label column holds numbers; multilabel: sets of labels",
    )
    backbone: BackboneConfig
    data: DataConfig
    init: InitConfig = Field(default_factory=InitConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    regularize: RegularizeConfig = Field(default_factory=RegularizeConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _task_defaults(self) -> RunConfig:
        # A regression config that names no loss or metric gets the regression defaults; one
        # that names a classification loss or metric (or the reverse) is refused by name.
        if self.task != "classification":
            if "name" not in self.loss.model_fields_set:
                self.loss.name = TASK_LOSSES[self.task][0]  # type: ignore[assignment]
            if "metric" not in self.train.model_fields_set:
                self.train.metric = TASK_METRICS[self.task][0]  # type: ignore[assignment]
        if self.loss.name not in TASK_LOSSES[self.task]:
            raise ValueError(
                f"loss.name: {self.loss.name!r} is not a {self.task} loss "
                f"(use one of {', '.join(TASK_LOSSES[self.task])})"
            )
        if self.train.metric not in (*TASK_METRICS[self.task], "loss"):
            raise ValueError(
                f"train.metric: {self.train.metric!r} does not score {self.task} "
                f"(use one of {', '.join(TASK_METRICS[self.task])} or loss)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``3e-4``, ``true``,
    ``[1, 2]``), so types follow the same rules as in the file."""
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(
            f"malformed override {override!r}", hint="write overrides as dotted.key=value"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    set_dotted(data, key, value, where=f"override {override!r}")


def set_dotted(
    data: dict[str, Any], key: str, value: Any, *, where: str, merge: bool = False
) -> None:
    """Set ``a.b.c`` in a nested config mapping, creating sections (an empty ``a:`` too); refuse
    to descend into a value (the error starts with ``where``). ``merge``: a mapping given for a
    section updates it instead of replacing it, as YAML nesting reads."""
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UsageError(f"{where}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    last = parts[-1]
    if merge and isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = {**node[last], **value}
    else:
        node[last] = value


def validate(data: dict[str, Any], origin: str = "config") -> RunConfig:
    """Validate a config mapping; errors name each bad field."""
    if moved := moved_keys(data):
        raise UsageError(f"{origin}: invalid config\n" + "\n".join(moved))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UsageError(format_errors(e, origin)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or start empty), apply dotted overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    # A `graft compare` or `graft search` block: `graft fit` runs the base config.
    data.pop("compare", None)
    data.pop("search", None)
    for override in overrides:
        apply_override(data, override)
    return validate(data, origin=str(path) if path is not None else "config")


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, the form saved in every run directory."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


# Sections that change where a run's output goes, how often it is saved or on what hardware it
# runs, never what is trained: a run may be resumed with them changed.
HASH_NEUTRAL_SECTIONS = frozenset({"output", "checkpoint", "hardware"})


# Settings added after runs were made, each with the value that means "not used": left out of
# the hash at that value, so a run (or a compare) started before they existed keeps its hash
# and stays resumable.
LATER_SETTINGS: dict[tuple[str, str | None], Any] = {
    ("backbone", "keep_layers"): None,
    ("backbone", "init_from"): None,
    ("distill", None): DistillConfig().model_dump(mode="json"),
    ("adapt", None): AdaptConfig().model_dump(mode="json"),
    ("data", "target_unlabeled"): None,
    ("data", "target_unlabeled_size"): None,
    ("data", "target_labeled"): None,
    ("data", "target_labeled_size"): None,
    ("task", None): "classification",
    ("loss", "huber_delta"): 1.0,
    ("loss", "pos_weight"): "none",
}


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of the settings that change training (not where its output goes)."""
    relevant = {k: v for k, v in config.items() if k not in HASH_NEUTRAL_SECTIONS}
    for (section, key), unused in LATER_SETTINGS.items():
        if key is None and relevant.get(section) == unused:
            relevant = {k: v for k, v in relevant.items() if k != section}
        elif (
            key is not None
            and isinstance(relevant.get(section), dict)
            and relevant[section].get(key, unused) == unused
        ):
            relevant[section] = {k: v for k, v in relevant[section].items() if k != key}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
