"""What ``graft auto`` starts from: the options it was given, what it reads from the data, and
the run config every step derives from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.config import apply_override, validate
from graft.errors import UsageError

IMAGE_BACKBONE = "tf_efficientnet_lite0"
TEXT_BACKBONE = "minilm"
DEFAULT_TRAIN_CAP = 3000  # a 2-core CPU: a few thousand examples keep each epoch in a minute
DEFAULT_VAL_CAP = 500
DEFAULT_TEST_CAP = 2000


@dataclass
class AutoOptions:
    """What ``graft auto`` was asked for (the command line's options)."""

    data: str
    budget_s: float
    backbone: str | None = None
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    image_size: int | None = None
    max_length: int | None = None
    format: str | None = None
    labels_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    delimiter: str | None = None
    output: str = "runs"
    name: str | None = None
    quiet: bool = False
    overrides: list[str] = field(default_factory=list)  # dotted key=value on every run


def _is_path(data: str) -> bool:
    return "/" in data or Path(data).exists()


def source(o: AutoOptions) -> dict[str, Any]:
    if not _is_path(o.data):
        from graft.data import get_dataset

        get_dataset(o.data)  # an unknown name: a UsageError listing the known ones
        return {"dataset": o.data}
    if not Path(o.data).exists():
        raise UsageError(f"{o.data}: no such file or folder", hint="give a path or a dataset name")
    src: dict[str, Any] = {"path": o.data}
    if o.format:
        src["format"] = o.format
    if o.labels_path:
        src["labels_path"] = o.labels_path
    if o.format in ("csv", "tsv", "jsonl") or Path(o.data).suffix in (".csv", ".tsv", ".jsonl"):
        src.update(text_column=o.text_column, label_column=o.label_column)
    if o.delimiter is not None:
        src["delimiter"] = o.delimiter
    return src


def _image_side(examples: Any) -> int | None:
    inputs = examples.inputs
    if hasattr(inputs, "shape"):
        return int(max(inputs.shape[1], inputs.shape[2]))
    if inputs:
        from PIL import Image

        with Image.open(inputs[0]) as im:
            return int(max(im.size))
    return None


@dataclass(frozen=True)
class DataInfo:
    """What ``graft auto`` reads from the data once, before the first run."""

    modality: str  # "image" or "text"
    n: int  # examples
    classes: int
    side: int | None  # the longest image side in pixels (images only)
    has_test: bool  # a named set with a test split of its own

    def n_train(self, cap: int | None) -> int:
        """Training examples after the validation (10%) and, without a test split, the test
        (20%) fractions are carved off, at most ``cap``."""
        n = int(self.n * (1 - 0.1 - (0 if self.has_test else 0.2)))
        return min(n, cap) if cap else n


def describe_data(o: AutoOptions, src: dict[str, Any]) -> DataInfo:
    """Modality, size, image side, whether a test split exists: read once from the data."""
    from graft.data import get_dataset, load_examples

    examples = load_examples(**src)
    has_test = False
    if "dataset" in src:
        has_test = "test" in get_dataset(src["dataset"]).splits
    side = _image_side(examples) if examples.modality == "image" else None
    return DataInfo(
        modality=examples.modality,
        n=len(examples),
        classes=len(set(examples.labels)),
        side=side,
        has_test=has_test,
    )


def base_config(o: AutoOptions, info: DataInfo, auto_dir: Path) -> dict[str, Any]:
    """The run config every step starts from."""
    image = info.modality == "image"
    backbone = o.backbone or (IMAGE_BACKBONE if image else TEXT_BACKBONE)
    data: dict[str, Any] = {
        "train": source(o),
        "train_size": o.train_size or DEFAULT_TRAIN_CAP,
        "val_size": o.val_size or DEFAULT_VAL_CAP,
        "test_size": o.test_size or DEFAULT_TEST_CAP,
    }
    if image:
        if o.image_size:
            data["image_size"] = o.image_size
        elif info.side is not None and info.side <= 32 and o.backbone is None:
            data["image_size"] = 64  # upscaled grey 28 px: far cheaper than 224 on a CPU
    elif o.max_length:
        data["max_length"] = o.max_length
    else:
        data["max_length"] = 128
    config: dict[str, Any] = {
        "backbone": {"name": backbone},
        "data": data,
        "strategy": {"name": "full"},
        "optim": {"name": "adamw", "lr": _ft_lr(image), "weight_decay": 0.01},
        "schedule": {"name": "cosine" if image else "linear", "warmup_ratio": 0.1},
        "train": {"epochs": 1, "batch_size": 32},
        "output": {"dir": str(auto_dir), "progress": False},
    }
    for override in o.overrides:
        apply_override(config, override)
    if validate(config, origin="graft auto").task != "classification":
        raise UsageError(
            "graft auto: classification only (not yet regression)",
            hint="graft compare and graft search take task: regression",
        )
    return config


def _ft_lr(image: bool) -> float:
    # The usual fine-tuning rates: 1e-3 for a small CNN with AdamW, 5e-5 for a BERT encoder.
    return 1.0e-3 if image else 5.0e-5


def with_sections(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(base))
    for section, values in sections.items():
        if section == "strategy":
            data["strategy"] = dict(values)  # a strategy's own parameters replace the old ones
        else:
            data.setdefault(section, {}).update(values)
    return data
