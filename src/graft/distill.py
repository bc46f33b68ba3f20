"""Knowledge distillation: a student trained on a teacher's softened outputs as well as the labels.

Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network": with student
logits ``z_s``, teacher logits ``z_t`` and temperature ``T``, a batch's loss is

    alpha · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − alpha) · CE(z_s, y)

where CE is the run's own configured loss (``loss:``: cross-entropy or focal, label smoothing,
class weights). The T² keeps the gradient of the soft term on the scale of the hard one as T
changes (the soft term's gradients shrink as 1/T²). The KL divergence is averaged over the
batch's examples (``reduction="batchmean"``, the mathematically correct mean of the per-example
divergences); the CE term over its labeled examples only: an example of the unlabeled transfer
set (target :data:`IGNORE_INDEX`) is taught by the teacher alone, and a batch of unlabeled
examples only has a CE term of 0.

The teacher is a graft model folder (:func:`load_teacher`). Its logits are computed once per
training example, with the teacher's own preprocessing and tokenizer, in eval mode and without
autograd (:meth:`Teacher.logits`), and every training batch carries its rows
(:class:`TeacherBatches`, ``batch["teacher"]``). When training batches are augmented at random
(image augmentation, MixUp, CutMix) no two epochs see the same input, so such a cache would teach
the student about images it is not shown: the teacher then runs on each batch's own inputs
(:class:`Distillation` with a ``teacher``), which needs both models to take the same
preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from graft.artifact import LoadedModel, load_model, require_classifier
from graft.data.types import Examples
from graft.errors import DataError, UsageError
from graft.models import GraftModel, ImagePreprocess, TextPreprocess
from graft.pipeline import Batch, same_batches
from graft.runtime import Precision, autocast

# The target of an example without a label (distill.unlabeled); F.cross_entropy's ignore_index.
IGNORE_INDEX = -100


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    temperature: float,
    hard_loss: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``alpha·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − alpha)·hard_loss(z_s, y)``.

    ``targets`` are class indexes (:data:`IGNORE_INDEX`, or any negative index: unlabeled) or
    class probabilities (after MixUp/CutMix, every row labeled). The KL term is the batch mean
    over every row; ``hard_loss`` sees the labeled rows only (0 when there are none). Computed
    in float32 whatever the autocast dtype of the logits."""
    student, teacher = student_logits.float(), teacher_logits.float()
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if targets.ndim == 2:  # class probabilities: mixed labeled examples, none unlabeled
        hard = hard_loss(student, targets)
    else:
        labeled = targets >= 0
        hard = (
            hard_loss(student[labeled], targets[labeled])
            if bool(labeled.any())
            else student.new_zeros(())
        )
    return alpha * soft + (1.0 - alpha) * hard


@dataclass
class Teacher:
    """A loaded teacher model, and where each of the student's classes is among its outputs:
    ``order[i]`` is the teacher's output index of the student's class ``i`` (the same label
    set, possibly in another order)."""

    loaded: LoadedModel
    order: list[int]

    @property
    def model(self) -> GraftModel:
        return self.loaded.backbone.model

    @property
    def preprocess(self) -> ImagePreprocess | TextPreprocess:
        return self.loaded.backbone.preprocess

    def logits_of(self, inputs: dict[str, Tensor]) -> Tensor:
        """The teacher's logits of one batch of model inputs, in the student's label order
        (float32; the caller chooses autograd and autocast)."""
        return self.model(**inputs).float()[:, self.order]

    def logits(
        self,
        examples: Examples,
        *,
        device: torch.device,
        precision: Precision = "fp32",
        batch_size: int = 64,
    ) -> Tensor:
        """The teacher's logits of every example, in the examples' order and the student's label
        order, computed on ``device`` with the teacher's own preprocessing and tokenizer, in
        eval mode and without autograd (:meth:`graft.artifact.LoadedModel.logits`)."""
        logits = self.loaded.logits(examples, batch_size, device=device, precision=precision)
        return logits[:, self.order]


def load_teacher(
    path: str | Path,
    label_names: Sequence[str],
    field: str = "distill.teacher",
    *,
    modality: str | None = None,
) -> Teacher:
    """Load the teacher model at ``path`` (a run directory or its ``model/`` folder) for a
    student of classes ``label_names`` (and input ``modality``, when given).

    A folder that is not a graft model is a :class:`DataError` (load_model's message, with
    ``field`` named); a teacher of another label set or another modality a :class:`UsageError`.
    The same labels in another order are fine: :attr:`Teacher.order` reorders its outputs."""
    try:
        loaded = load_model(path)
        require_classifier(loaded, "distill.teacher")
    except DataError as e:
        raise DataError(f"{field}: {e.message}", hint=e.hint) from None
    theirs, ours = list(loaded.label_map.names), list(label_names)
    if set(theirs) != set(ours) or len(theirs) != len(ours):
        raise UsageError(
            f"{field}: the teacher {path} has labels {theirs}, but the data has {ours}",
            hint="distil from a model trained on the same classes",
        )
    if modality is not None and loaded.modality != modality:
        raise UsageError(
            f"{field}: the teacher {path} is a {loaded.modality} model, but the data holds "
            f"{modality} examples"
        )
    loaded.backbone.model.eval().requires_grad_(False)  # it is never trained
    index = {name: i for i, name in enumerate(theirs)}
    return Teacher(loaded, [index[name] for name in ours])


def check_same_preprocessing(
    teacher: Teacher, preprocess: ImagePreprocess | TextPreprocess, field: str = "distill.teacher"
) -> None:
    """Refuse a teacher that cannot run on the student's batches: where training batches are
    augmented at random the teacher sees the student's own inputs, preprocessed the student's
    way."""
    theirs, ours = teacher.preprocess.to_dict(), preprocess.to_dict()
    if theirs != ours:
        differing = ", ".join(
            f"{k} {theirs.get(k)} (teacher) vs {ours.get(k)} (student)"
            for k in sorted(set(theirs) | set(ours))
            if theirs.get(k) != ours.get(k)
        )
        raise UsageError(
            f"{field}: training batches are augmented at random (data.augment, data.mixup_alpha, "
            "data.cutmix_alpha), so the teacher runs on the student's inputs, but their "
            f"preprocessing differs: {differing}",
            hint="give the student the teacher's preprocessing (data.image_size), or train "
            "without random augmentation (then the teacher preprocesses its own inputs)",
        )


class TeacherBatches(torch.utils.data.Dataset[Batch]):
    """A training dataset whose batches also carry their rows of the teacher's logits
    (``batch["teacher"]``); ``logits`` are in the dataset's order."""

    def __init__(self, data: Any, logits: Tensor) -> None:
        if len(data) != len(logits):
            raise ValueError(f"{len(logits)} teacher logits for {len(data)} examples")
        self.data, self.logits = data, logits

    def __len__(self) -> int:
        return len(self.logits)

    @property
    def random(self) -> bool:
        """Whether the wrapped batches are augmented at random (then the logits do not fit)."""
        return bool(getattr(self.data, "random", False))

    def __getitems__(self, index: list[int]) -> Batch:
        batch: Batch = self.data.__getitems__(index)
        batch["teacher"] = self.logits[torch.as_tensor(index, dtype=torch.long)]
        return batch

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])


def with_teacher_logits(loader: DataLoader[Batch], logits: Tensor) -> DataLoader[Batch]:
    """``loader``'s batches (the same sampler, so the same shuffle, and the same workers), each
    with its rows of ``logits`` as ``batch["teacher"]``."""
    return same_batches(TeacherBatches(loader.dataset, logits), loader, workers=True)


@dataclass
class Distillation:
    """The distillation term of a run's objective. ``teacher``: runs on each training batch's
    own inputs (under ``precision``), for batches augmented at random; None: every batch carries
    its precomputed logits (``batch["teacher"]``)."""

    alpha: float
    temperature: float
    teacher: Teacher | None = None
    precision: Precision = "fp32"

    def teacher_logits(self, batch: Batch) -> Tensor:
        """The teacher's logits of one training batch (in the student's label order)."""
        if "teacher" in batch:
            return batch["teacher"]  # type: ignore[no-any-return]
        if self.teacher is None:
            raise ValueError("a distillation batch carries no teacher logits and no teacher runs")
        device = next(self.teacher.model.parameters()).device
        # no_grad, not inference mode: the KL term keeps the logits for its backward pass.
        with torch.no_grad(), autocast(device, self.precision):
            return self.teacher.logits_of(batch["inputs"])

    def loss(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        hard_loss: Callable[[Tensor, Tensor], Tensor],
    ) -> Tensor:
        return distillation_loss(
            student_logits,
            teacher_logits,
            targets,
            alpha=self.alpha,
            temperature=self.temperature,
            hard_loss=hard_loss,
        )


def join_examples(labeled: Examples, unlabeled: Examples, field: str) -> Examples:
    """The training set with the unlabeled transfer set after it, so one loader serves both (the
    targets tell them apart). Images join only when stored alike: both files, or both arrays of
    one image size."""
    if unlabeled.modality != labeled.modality:
        raise UsageError(
            f"{field}: {unlabeled.origin} holds {unlabeled.modality} examples, but the training "
            f"data {labeled.origin} holds {labeled.modality}"
        )
    a, b = labeled.inputs, unlabeled.inputs
    inputs: np.ndarray | list[Any]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape[1:] != b.shape[1:]:
            raise UsageError(
                f"{field}: its images are arrays of shape {b.shape[1:]}, the training images of "
                f"shape {a.shape[1:]}",
                hint="give unlabeled images of the training images' size and channels",
            )
        inputs = np.concatenate([a, b.astype(a.dtype, copy=False)])
    elif isinstance(a, list) and isinstance(b, list):
        inputs = [*a, *b]
    else:
        raise UsageError(
            f"{field}: the training images are "
            + ("arrays in memory" if isinstance(a, np.ndarray) else "files")
            + ", the unlabeled ones not: they cannot be served together",
            hint="give both as image folders, or both as in-memory sets of one image size",
        )
    origin = f"{labeled.origin} + {unlabeled.origin} (unlabeled)"
    return Examples(labeled.modality, inputs, [*labeled.labels, *unlabeled.labels], origin)
