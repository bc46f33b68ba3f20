"""The saved model: ``model.safetensors`` + ``graft_model.json`` (+ tokenizer files for text).

Never a pickle of the training objects: weights through safetensors, everything else as JSON
(label map, preprocessing, backbone spec, plan, metrics). A model folder is self-contained, so
``graft eval`` and ``graft predict`` need neither the hub nor the original config.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft.atomic import atomic_write, atomic_write_text
from graft.data.memory import to_examples, unlabeled_examples
from graft.data.targets import Standardizer
from graft.data.types import Examples, LabelMap
from graft.errors import DataError, GraftError, UsageError
from graft.models import Backbone, rebuild
from graft.models.base import ImagePreprocess, TextPreprocess
from graft.models.hf_backbone import save_tokenizer
from graft.models.shapes import apply_shapes
from graft.runtime import Precision
from graft.safe_load import require_finite, weights_mismatch, weights_only_loading
from graft.tasks import Classification, MultiLabel, Regression, Task

WEIGHTS = "model.safetensors"
META = "graft_model.json"
FORMAT_VERSION = 1


def save_model(
    folder: Path,
    backbone: Backbone,
    label_map: LabelMap,
    *,
    plan: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    task: Task | None = None,
) -> None:
    """Write the model folder; the JSON is written last, so a folder with a JSON is complete.
    ``provenance``: the run's ``config_hash`` and ``data_fingerprint`` (and, for a merged
    model, how it was made: its α curve, its soup's ingredients), stored in the JSON.
    ``task``: what the outputs mean, kept beside them (a regression's target standardisation,
    a multi-label model's thresholds); a classifier's needs nothing more than its labels."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.model.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda f: f.write(save(state)))
    if backbone.tokenizer is not None:
        save_tokenizer(backbone.tokenizer, folder / "tokenizer")
    meta = {
        "format_version": FORMAT_VERSION,
        "labels": list(label_map.names),
        "backbone": backbone.spec,
        "preprocess": backbone.preprocess.to_dict(),
        "plan": plan,
        "metrics": metrics or {},
        **({"shapes": backbone.shapes} if backbone.shapes else {}),
        **task_meta(task),
        **(provenance or {}),
    }
    atomic_write_text(folder / META, json.dumps(meta, indent=1))


class Predictor(ABC):
    """A saved model that maps inputs to class logits: graft's own PyTorch model
    (:class:`LoadedModel`), or an exported or quantized one that another engine runs
    (:mod:`graft.deploy`). Evaluation and prediction are the same for every kind; each kind
    says how it computes logits."""

    label_map: LabelMap
    meta: dict[str, Any]
    folder: Path

    @property
    @abstractmethod
    def modality(self) -> str:
        """``"image"`` or ``"text"``."""

    @property
    @abstractmethod
    def preprocess(self) -> ImagePreprocess | TextPreprocess:
        """How raw inputs become model inputs (graft's pipeline applies it)."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer of a text model (``None`` for an image model)."""

    @abstractmethod
    def logits(
        self,
        examples: Examples,
        batch_size: int = 64,
        *,
        device: torch.device | None = None,
        precision: Precision = "fp32",
    ) -> torch.Tensor:
        """The logits of ``examples``, in their order (float32, on the CPU)."""

    @property
    def task(self) -> Task:
        """What the outputs mean: classes, a regression's standardised value, or labels each
        present or not (with the thresholds chosen on the run's validation set)."""
        if self.meta.get("task") == "regression":
            return Regression(self.label_map, Standardizer.from_dict(self.meta["target"]))
        if self.meta.get("task") == "multilabel":
            return MultiLabel(self.label_map, tuple(self.meta["thresholds"]))
        return Classification(self.label_map)

    def loader(self, examples: Examples, batch_size: int) -> Any:
        """Batches of ``examples`` from graft's pipeline with this model's preprocessing; texts
        are grouped by length (padding is masked, so it only costs time), and each batch
        carries the indices of its examples."""
        from graft.pipeline import Loaders

        loaders = Loaders(self.preprocess, self.tokenizer, False, 0, 0)
        return loaders.loader(examples, None, batch_size, shuffle=False, by_length=True)

    def batches(
        self, examples: Examples, batch_size: int, device: torch.device | None = None
    ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """(indices of its examples, model inputs) of each batch of :meth:`loader`, on
        ``device`` (default: the CPU)."""
        from graft.pipeline import batches_once

        loader = self.loader(examples, batch_size)
        for index, batch in batches_once(loader, device or torch.device("cpu")):
            yield index, batch["inputs"]

    def examples(self, inputs: Examples | Sequence[str | Path]) -> Examples:
        """``inputs`` as unlabeled examples of this model's kind: texts for a text model, image
        paths for an image model (or labeled :class:`Examples`, checked to be of its kind)."""
        if isinstance(inputs, Examples):
            if inputs.modality != self.modality:
                kind = "images" if inputs.modality == "image" else "texts"
                article = "an" if self.modality == "image" else "a"
                raise DataError(
                    f"{inputs.origin}: this is {article} {self.modality} model; the data holds "
                    f"{kind}",
                    hint=f"give {self.modality} data, or a {inputs.modality} model",
                )
            return inputs
        held = not isinstance(inputs, str | Path | Sequence)  # an array, a DataFrame, ...
        if held or (
            self.modality == "image" and not all(isinstance(x, str | Path) for x in inputs)
        ):
            return unlabeled_examples(inputs, "inputs", self.modality)  # images held in memory
        if isinstance(inputs, str | Path) or not isinstance(inputs, Sequence):
            raise UsageError(
                "predict takes a list of inputs (texts or image paths) or Examples, "
                f"not {type(inputs).__name__}",
                hint='e.g. model.predict(["a quietly devastating film"])',
            )
        items = list(inputs)
        if not items:
            raise UsageError("nothing to predict: no inputs were given")
        if self.modality == "text":
            texts = [x for x in items if isinstance(x, str) and x.strip()]
            if len(texts) != len(items):
                bad = next(
                    i for i, x in enumerate(items) if not isinstance(x, str) or not x.strip()
                )
                raise UsageError(f"input {bad + 1}: a text model needs non-empty texts")
            return Examples("text", texts, ["?"] * len(texts), "inputs")
        return Examples("image", [Path(x) for x in items], ["?"] * len(items), "inputs")

    def evaluate(self, examples: Examples | Any, batch_size: int = 64) -> dict[str, Any]:
        """The task's metrics on labeled examples (labels must be among the model's classes;
        a regression's must be numbers): :class:`Examples`, or data held in memory as
        ``graft.fit(train=...)`` takes it."""
        if not isinstance(examples, Examples):  # a DataFrame, (images, labels), a Dataset ...
            examples = to_examples(examples, "evaluate")
        examples = self.examples(examples)  # of this model's kind
        task = self.task
        targets = task.targets(examples)
        logits = self.logits(examples, batch_size)
        loss = task.eval_loss(logits, torch.from_numpy(targets))
        return task.metrics(logits, targets, loss)

    def predict(
        self, examples: Examples | Sequence[str | Path] | Any, precision: Precision = "fp32"
    ) -> list[dict[str, Any]]:
        """Per input (texts or image paths, images held in memory: an array N×H×W[×C], a
        DataFrame's "text" or "image" column, or :class:`Examples`): the predicted label, its
        probability, and all class probabilities; computed under ``precision``. A regression
        model's: ``{"value": number}`` in the targets' units."""
        task = self.task
        if isinstance(task, Regression):
            outputs = self.logits(self.examples(examples), precision=precision)
            return [{"value": float(v)} for v in task.predict(outputs)]
        if isinstance(task, MultiLabel):
            probs = task.probabilities(self.logits(self.examples(examples), precision=precision))
            names = self.label_map.names
            limits = task.thresholds or (0.5,) * len(names)
            return [
                {
                    "labels": [n for n, p, t in zip(names, row, limits, strict=True) if p >= t],
                    "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)},
                }
                for row in probs
            ]
        probs = self.logits(self.examples(examples), precision=precision).softmax(1).numpy()
        best = probs.argmax(1)
        return [
            {
                "label": self.label_map.names[int(b)],
                "probability": float(p[b]),
                "probabilities": {
                    n: float(x) for n, x in zip(self.label_map.names, p, strict=True)
                },
            }
            for b, p in zip(best, probs, strict=True)
        ]


@dataclass
class LoadedModel(Predictor):
    """A saved graft model in PyTorch, ready for evaluation and prediction."""

    backbone: Backbone
    label_map: LabelMap
    meta: dict[str, Any]
    folder: Path

    @property
    def modality(self) -> str:
        return self.backbone.modality

    @property
    def preprocess(self) -> ImagePreprocess | TextPreprocess:
        return self.backbone.preprocess

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    def logits(
        self,
        examples: Examples,
        batch_size: int = 64,
        *,
        device: torch.device | None = None,
        precision: Precision = "fp32",
    ) -> torch.Tensor:
        """The model's logits of ``examples``, in their order (float32, on the CPU), computed
        on ``device`` (default: the CPU) under ``precision``, in eval mode without autograd."""
        from graft.runtime import autocast, no_grad_eval

        examples = self.examples(examples)
        device = device or torch.device("cpu")
        out = torch.empty((len(examples), len(self.label_map)), dtype=torch.float32)
        model = self.backbone.model
        if next(model.parameters()).device != device:  # .to() walks every module: not per call
            model.to(device)
        with no_grad_eval(model), autocast(device, precision):
            for index, inputs in self.batches(examples, batch_size, device):
                out[torch.as_tensor(index)] = model(**inputs).float().cpu()
        return out


def load_model(folder: str | Path) -> LoadedModel:
    """Load a model folder written by :func:`save_model` (or a run folder containing ``model/``).
    Every ``torch.load`` on the way is weights-only (see :mod:`graft.safe_load`)."""
    with weights_only_loading():
        return _load_model(Path(folder))


def task_meta(task: Task | None) -> dict[str, Any]:
    """What ``graft_model.json`` keeps of a task beyond the labels."""
    if isinstance(task, Regression):
        return {"task": "regression", "target": task.scale.to_dict()}
    if isinstance(task, MultiLabel):
        return {"task": "multilabel", "thresholds": list(task.thresholds or ())}
    return {}


def require_classifier(model: Predictor, command: str) -> None:
    """Refuse a regression model where only classifiers are handled yet (say which command)."""
    if model.task.kind != "classification":
        raise UsageError(
            f"{model.folder}: a {model.task.kind} model; {command} handles classifiers only "
            "(not yet regression)",
            hint="graft eval and graft predict take regression models",
        )


def not_a_model_folder(folder: Path) -> DataError:
    """The error for a folder without a model description."""
    return DataError(
        f"{folder}: not a graft model folder (no {META})",
        hint="give a run directory or its model/ folder written by `graft fit`",
    )


def _load_model(folder: Path) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "model" / META).is_file():
        folder = folder / "model"
    meta_path = folder / META
    if not meta_path.is_file():
        raise not_a_model_folder(folder)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        labels, spec, prep = meta["labels"], meta["backbone"], meta["preprocess"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError("labels must be a list of class names")
        label_map = LabelMap(tuple(labels))
        if spec["num_classes"] != len(label_map):
            raise ValueError(f"{len(label_map)} labels for {spec['num_classes']} model outputs")
    except KeyError as e:
        raise DataError(
            f"{meta_path}: malformed model description: it has no {e.args[0]!r}"
        ) from None
    except (json.JSONDecodeError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path}: malformed model description ({e})") from None
    tokenizer_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else None
    try:
        backbone = rebuild(spec, prep, tokenizer_dir)
    except DataError:
        raise
    except (GraftError, KeyError, TypeError, ValueError) as e:
        # A hand-edited or foreign description: still the file's problem, not a usage mistake.
        detail = f"{type(e).__name__}: {e.message if isinstance(e, GraftError) else e}"
        raise DataError(f"{meta_path}: malformed model description ({detail})") from None
    if meta.get("shapes") is not None:  # a structurally pruned model: smaller layers
        try:
            apply_shapes(backbone.model, meta["shapes"])
            backbone.shapes = meta["shapes"]
        except (TypeError, ValueError) as e:
            raise DataError(f"{meta_path}: malformed model description ({e})") from None
    try:
        # safetensors: a header of names/shapes and raw tensor bytes, nothing that can execute.
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, FileNotFoundError, OSError) as e:
        raise DataError(
            f"{folder / WEIGHTS}: unreadable weights ({e})",
            hint="the file is truncated or not a safetensors file; copy the model folder again",
        ) from None
    require_finite(
        folder / WEIGHTS,
        state,
        "the model is damaged (or its training diverged); it cannot predict",
    )
    mismatch = weights_mismatch(backbone.model.state_dict(), state)
    if mismatch:  # torch's own message lists every tensor: pages for a swapped file
        raise DataError(f"{folder / WEIGHTS}: the weights do not fit the architecture: {mismatch}")
    backbone.model.load_state_dict(state, strict=True)
    backbone.model.eval()
    return LoadedModel(backbone, label_map, meta, folder)
