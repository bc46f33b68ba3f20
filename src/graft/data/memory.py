"""Data held in memory (a notebook's DataFrame, arrays, a Hugging Face dataset, a torch
``Dataset``, plain lists) turned into :class:`~graft.data.types.Examples`, once, with the same
checks as files: an error is one line that names the set, the column or the index.

What each kind becomes (exactly what the file readers make of the same data, so a run on it is
the same run, bit for bit, as on the data written out as files):

- texts: a list of ``str`` (as a CSV/JSONL table gives them);
- images: one ``uint8`` array (N, H, W) or (N, H, W, C) (as an IDX pair gives them), or a list
  of image file paths (as an image folder gives them);
- labels: names, ``str``: an integer label 3 (or 3.0) is "3", a string is stripped.

The conversion is content only, so the run's data fingerprint (and the feature caches' keys)
see an example that changed; nothing refers to the Python object itself.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from graft.data.images import decode_image
from graft.data.types import Examples
from graft.errors import DataError, UsageError

#: The image column of a table or a Hugging Face dataset when the source names none.
IMAGE_COLUMN = "image"

_SUPPLIED: ContextVar[Mapping[str, Examples] | None] = ContextVar("graft_memory", default=None)

KINDS = (
    "a pandas DataFrame, a (inputs, labels) pair of arrays or lists, a list of (input, label) "
    "pairs, a Hugging Face Dataset or DatasetDict, or a torch Dataset yielding (input, label)"
)


# --------------------------------------------------------------------------- the fit call's data


@contextmanager
def supplied(examples: Mapping[str, Examples]) -> Iterator[None]:
    """While inside, a config source ``{memory: NAME}`` reads ``examples[NAME]``."""
    token = _SUPPLIED.set(dict(examples))
    try:
        yield
    finally:
        _SUPPLIED.reset(token)


def supplied_examples(name: str, field: str) -> Examples:
    """The in-memory examples a config source ``{memory: name}`` stands for; outside the Python
    call that gave them (``graft fit --resume`` on the command line, a merge rebuilding a run's
    data) a :class:`UsageError` says how to give them again."""
    given = _SUPPLIED.get()
    if given is None or name not in given:
        arg = f"extra_eval={{{name.split('.', 1)[1]!r}: ...}}" if "." in name else f"{name}=..."
        raise UsageError(
            f"{field}: in-memory data (memory: {name}) that was given to graft.fit({arg}) in "
            "Python, and is not here",
            hint=f"call graft.fit(config, {arg}) again with the same data (the run's data "
            "fingerprint checks it is the same), or write the data to a file and name it in "
            f"{field}",
        )
    return given[name]


# --------------------------------------------------------------------------- conversion


def to_examples(
    data: Any,
    name: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    image_column: str | None = None,
    labeled: bool = True,
) -> Examples:
    """``data`` (see :data:`KINDS`) as examples; ``name`` ("train", "extra_eval.shifted") names it
    in errors. Table-like data (a DataFrame, a Hugging Face ``Dataset``) is read from
    ``text_column`` (or ``image_column``, "image" by default, for images) and ``label_column``.
    Not ``labeled`` (a set whose labels are never read): inputs alone will do (a table without
    the label column, a list of inputs, an image array), their labels empty."""
    kind = type(data).__module__.split(".")[0]
    columns = (text_column, label_column, image_column, labeled)
    if kind == "pandas" and hasattr(data, "columns"):
        return _from_table(_DataFrameTable(data), f"{name} DataFrame", *columns)
    if kind == "datasets" and type(data).__name__ == "Dataset":
        return _from_table(_HFTable(data), f"{name} Dataset", *columns)
    if not labeled and _inputs_only(data):
        return _from_pair(data, None, name)
    if kind == "datasets" and type(data).__name__ == "DatasetDict":
        raise UsageError(
            f"{name}: a DatasetDict holds several splits ({', '.join(data)}); give one split",
            hint=f"e.g. {name}=dataset_dict['train'] (graft.fit(train=a DatasetDict) takes its "
            "train, validation and test splits by name)",
        )
    if isinstance(data, tuple) and len(data) == 2:
        return _from_pair(data[0], data[1], name)
    if isinstance(data, list):
        return _from_pairs(data, f"{name} list")
    if _is_torch_dataset(data):
        return _from_pairs(_torch_items(data), f"{name} torch Dataset")
    if isinstance(data, np.ndarray):
        raise UsageError(
            f"{name}: an array without labels",
            hint=f"give the images and their labels as a pair: {name}=(images, labels)",
        )
    raise UsageError(
        f"{name}: cannot read data of type {type(data).__name__}", hint=f"give {KINDS}"
    )


def _inputs_only(data: Any) -> bool:
    """Inputs without labels: an image array or tensor, or a list that is not of pairs."""
    if isinstance(data, np.ndarray) or _is_tensor(data):
        return True
    if not isinstance(data, list):
        return False
    return not (data and isinstance(data[0], tuple | list) and len(data[0]) == 2)


def _is_torch_dataset(data: Any) -> bool:
    try:
        from torch.utils.data import Dataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(data, Dataset)


def _torch_items(dataset: Any) -> list[Any]:
    try:
        n = len(dataset)
    except TypeError:
        raise UsageError(
            f"a torch Dataset without a length ({type(dataset).__name__})",
            hint="give a map-style Dataset (with __len__ and __getitem__)",
        ) from None
    return [dataset[i] for i in range(n)]


class _DataFrameTable:
    def __init__(self, frame: Any) -> None:
        self.frame = frame

    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def column(self, name: str) -> list[Any]:
        return list(self.frame[name].tolist())

    def label_names(self, name: str) -> list[str] | None:
        # A pandas Categorical's values are the labels themselves, no table needed.
        return None


class _HFTable:
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def column(self, name: str) -> list[Any]:
        return list(self.dataset[name])

    def label_names(self, name: str) -> list[str] | None:
        # A ClassLabel column holds indexes into its names: the names are the labels.
        feature = self.dataset.features.get(name)
        names = getattr(feature, "names", None)
        return list(names) if names else None


def _no_column(origin: str, kind: str, column: str, present: Sequence[str], option: str) -> str:
    close = difflib.get_close_matches(column, list(present), n=1)
    shown = ", ".join(repr(c) for c in present[:12]) or "none"
    return (
        f"{origin}: no {kind} column {column!r} (columns: {shown})"
        + (f"; did you mean {close[0]!r}?" if close else "")
        + f"; name it with {option}"
    )


def _from_table(
    table: _DataFrameTable | _HFTable,
    origin: str,
    text_column: str,
    label_column: str,
    image_column: str | None,
    labeled: bool = True,
) -> Examples:
    present = table.columns()
    if image_column is not None or text_column not in present:
        column = image_column or IMAGE_COLUMN
        if column not in present:
            raise DataError(
                _no_column(origin, "text", text_column, present, "text_column")
                if image_column is None
                else _no_column(origin, "image", column, present, "image_column")
            )
        modality = "image"
    else:
        column, modality = text_column, "text"
    values = table.column(column)
    if label_column in present:
        labels = _labels(
            table.column(label_column), origin, label_column, table.label_names(label_column)
        )
    elif labeled:
        raise DataError(_no_column(origin, "label", label_column, present, "label_column"))
    else:
        labels = [""] * len(values)
    if not values:
        raise DataError(f"{origin}: no rows", hint="expected one labeled example per row")
    if modality == "text":
        return Examples("text", _texts(values, origin, f"column {column!r}"), labels, origin)
    return Examples("image", _images(values, origin, f"column {column!r}"), labels, origin)


def _from_pair(inputs: Any, labels: Any, name: str) -> Examples:
    """``labels`` None: inputs alone (their labels empty: a set whose labels are never read)."""
    origin = name
    n_in = _length(inputs, f"{name} inputs")
    if n_in == 0:
        raise DataError(f"{name}: no examples")
    if labels is None:
        names = [""] * n_in
    else:
        n_lab = _length(labels, f"{name} labels")
        if n_in != n_lab:
            raise DataError(
                f"{name}: {n_in:,} inputs but {n_lab:,} labels",
                hint="the inputs and the labels must be the same length, one label per input",
            )
        names = _labels(_as_list(labels), origin, "labels", None)
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "OUS":
        inputs = inputs.tolist()
    if isinstance(inputs, np.ndarray) or _is_tensor(inputs):
        return Examples("image", _image_array(inputs, f"{name} images"), names, origin)
    items = list(inputs)
    if isinstance(items[0], str):
        return Examples("text", _texts(items, origin, "inputs"), names, origin)
    return Examples("image", _images(items, origin, "inputs"), names, origin)


def _from_pairs(pairs: Sequence[Any], origin: str) -> Examples:
    if not pairs:
        raise DataError(f"{origin}: no examples")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise DataError(
                f"{origin}: index {i}: expected an (input, label) pair, got {type(pair).__name__}",
                hint="each item must be (input, label); give arrays as a pair: (inputs, labels)",
            )
    inputs = [p[0] for p in pairs]
    labels = _labels([p[1] for p in pairs], origin, "labels", None)
    if isinstance(inputs[0], str):
        return Examples("text", _texts(inputs, origin, "inputs"), labels, origin)
    return Examples("image", _images(inputs, origin, "inputs"), labels, origin)


def _length(values: Any, what: str) -> int:
    try:
        return len(values)
    except TypeError:
        raise UsageError(f"{what}: {type(values).__name__} has no length") from None


def _as_list(values: Any) -> list[Any]:
    if _is_tensor(values):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise DataError(f"labels: shape {values.shape}, expected one label per example (N,)")
        return list(values.tolist())
    return list(values)


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


# --------------------------------------------------------------------------- labels


def _label_kind(value: Any) -> str | None:
    """The kind of one label ("str", "number", "bool"), or None for a missing one."""
    if _is_tensor(value) or isinstance(value, np.ndarray):
        value = value.item() if getattr(value, "ndim", 0) == 0 else value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, str):
        return "str"
    if isinstance(value, numbers.Real):
        return "number"
    return type(value).__name__


def _label_name(value: Any) -> str:
    if _is_tensor(value) or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1 and 1.0 name the same class, as in a JSON table
    return str(value).strip()


def _labels(values: list[Any], origin: str, column: str, names: list[str] | None) -> list[str]:
    """Label names from a column: one kind throughout (strings, or numbers), none missing."""
    where = f"column {column!r}" if column != "labels" else "labels"
    first: tuple[str, int] | None = None
    for i, v in enumerate(values):
        kind = _label_kind(v)
        if kind is None:
            raise DataError(
                f"{origin}: {where}, index {i}: missing label ({v!r})",
                hint="give every example its class, or drop the ones without one",
            )
        if kind not in ("str", "number", "bool"):
            raise DataError(f"{origin}: {where}, index {i}: a {kind} is not a class label")
        if first is None:
            first = (kind, i)
        elif kind != first[0]:
            raise DataError(
                f"{origin}: {where} mixes types: {first[0]} at index {first[1]}, {kind} at "
                f"index {i} ({v!r})",
                hint="give every label as the same type (all strings, or all integers)",
            )
        if kind == "number" and not math.isfinite(float(v)):
            raise DataError(f"{origin}: {where}, index {i}: the label {v} is not a class")
    if names is not None:
        for i, v in enumerate(values):
            if not 0 <= int(v) < len(names):  # -1: a split without labels
                raise DataError(
                    f"{origin}: {where}, index {i}: label {v} is none of its ClassLabel names"
                )
        return [names[int(v)] for v in values]
    out = [_label_name(v) for v in values]
    for i, label in enumerate(out):
        if not label:
            raise DataError(f"{origin}: {where}, index {i}: empty label")
    return out


# --------------------------------------------------------------------------- inputs


def _texts(values: list[Any], origin: str, where: str) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(
                f"{origin}: {where}, index {i}: got {type(v).__name__}, expected a text (str)"
            )
        if not v.strip():
            raise DataError(f"{origin}: {where}, index {i}: empty text")
    return list(values)


def _image_array(array: Any, what: str) -> np.ndarray:
    """A stack of images: ``uint8`` (N, H, W) or (N, H, W, C) with C of 1, 3 or 4 (4: RGBA,
    alpha dropped as from a file; 1: grey)."""
    if _is_tensor(array):
        array = array.detach().cpu().numpy()
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise DataError(
            f"{what}: dtype {a.dtype}, expected uint8 pixels (0..255)",
            hint="e.g. (images * 255).round().astype(np.uint8) for floats in 0..1",
        )
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] not in (1, 3, 4)):
        raise DataError(
            f"{what}: shape {a.shape}, expected N×H×W (grey) or N×H×W×C (C = 1, 3 or 4)",
            hint="channels go last (N, H, W, C); a single image needs a leading N axis",
        )
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 4 and a.shape[-1] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def _images(values: list[Any], origin: str, where: str) -> np.ndarray | list[Path]:
    """Images given one by one: file paths stay paths (read lazily, as from an image folder);
    bytes, arrays and PIL images are decoded and stacked (they must be of one size)."""
    if all(isinstance(v, str | Path) for v in values):
        paths = [Path(v) for v in values]
        for i, p in enumerate(paths):
            if not p.is_file():
                raise DataError(f"{origin}: {where}, index {i}: image file not found: {p}")
        return paths
    arrays = [_one_image(v, origin, f"{where}, index {i}") for i, v in enumerate(values)]
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise DataError(
                f"{origin}: {where}, index {i}: image of shape {a.shape}, index 0 is {shape}",
                hint="images held in memory must share one size: resize them, or give file paths",
            )
    return np.stack(arrays)


def _one_image(value: Any, origin: str, where: str) -> np.ndarray:
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        # A Hugging Face Image column read without decoding: {"bytes": ..., "path": ...}.
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        return decode_image(bytes(value), f"{origin}: {where}")
    if type(value).__module__.split(".")[0] == "PIL":
        from graft.data.images import pil_to_array

        return pil_to_array(value)
    if _is_tensor(value):
        t = value.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)  # torchvision's C×H×W
        value = t.numpy()
    if isinstance(value, np.ndarray):
        if value.ndim == 3 and value.shape[-1] == 1:
            value = value[..., 0]
        return _image_array(value[None], f"{origin}: {where}")[0]
    raise DataError(
        f"{origin}: {where}: a {type(value).__name__} is not an image",
        hint="give image file paths, encoded bytes (PNG, JPEG ...), PIL images or uint8 arrays",
    )


def unlabeled_examples(data: Any, name: str, modality: str) -> Examples:
    """Inputs without labels, for a ``modality`` model's predictions: a DataFrame's or a Hugging
    Face ``Dataset``'s "text" (or "image") column, an image array or tensor (N×H×W[×C]), or a
    list of images held in memory. Their labels are "?" (never read)."""
    kind = type(data).__module__.split(".")[0]
    column = "text" if modality == "text" else IMAGE_COLUMN
    if (kind == "pandas" and hasattr(data, "columns")) or kind == "datasets":
        table = _DataFrameTable(data) if kind == "pandas" else _HFTable(data)
        if column not in table.columns():
            kind_name = "text" if modality == "text" else "image"
            raise DataError(
                _no_column(
                    f"{name} {type(data).__name__}",
                    kind_name,
                    column,
                    table.columns(),
                    "a column of that name",
                )
            )
        values: Any = table.column(column)
    elif isinstance(data, np.ndarray) and data.dtype.kind in "OUS":
        values = data.tolist()
    elif isinstance(data, np.ndarray) or _is_tensor(data):
        images = _image_array(data, f"{name} images")
        return Examples("image", images, ["?"] * len(images), name)
    else:
        values = list(data)
    if not values:
        raise UsageError("nothing to predict: no inputs were given")
    if modality == "text":
        texts = _texts(values, name, "inputs")
        return Examples("text", texts, ["?"] * len(texts), name)
    images_or_paths = _images(values, name, "inputs")
    return Examples("image", images_or_paths, ["?"] * len(images_or_paths), name)
