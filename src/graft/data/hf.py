"""A Hugging Face dataset as a data source (``data.train: {hf_dataset: NAME_OR_PATH, split: …}``):
a folder saved with ``save_to_disk`` is read with ``datasets.load_from_disk``, anything else is
a hub name (or a loading script) for ``datasets.load_dataset``. Its rows become examples as an
in-memory ``Dataset`` does (:mod:`graft.data.memory`): the same columns, labels, checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graft.data.memory import to_examples
from graft.data.types import Examples
from graft.errors import DataError, UsageError


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UsageError(
            "hf_dataset needs the `datasets` package", hint="pip install 'graftkit[notebook]'"
        ) from None
    return datasets


def pick_split(data: Any, split: str | None, origin: str) -> Any:
    """One split of a ``DatasetDict`` by name ("train" when none is named); a ``Dataset`` is
    its own single split."""
    if type(data).__name__ != "DatasetDict":
        own = getattr(data, "split", None)
        if split is not None and own is not None and str(own) != split:
            raise DataError(f"{origin}: holds the split {str(own)!r}, not {split!r}")
        return data
    name = split or "train"
    if name not in data:
        raise DataError(
            f"{origin}: no split {name!r} (splits: {', '.join(repr(k) for k in data)})",
            hint="name one of them with split",
        )
    return data[name]


def read_hf_dataset(
    name: str,
    *,
    split: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    image_column: str | None = None,
    field: str = "data.train",
) -> Examples:
    """The examples of one split of a Hugging Face dataset (a saved folder, or a hub name);
    ``field`` names the config field in errors."""
    datasets = _datasets()
    folder = Path(name).expanduser()
    if folder.is_dir():
        try:
            data = datasets.load_from_disk(str(folder))
        except (FileNotFoundError, ValueError) as e:
            raise DataError(
                f"{field}: {folder}: not a dataset saved by save_to_disk ({e})",
                hint="save it with Dataset.save_to_disk(folder), or give a hub name",
            ) from None
        data = pick_split(data, split, f"{field}: {folder}")
    else:
        try:
            data = datasets.load_dataset(name, split=split or "train")
        except ValueError as e:  # an unknown split: datasets says which exist
            raise DataError(f"{field}: {name}: {str(e).splitlines()[0]}") from None
        except Exception as e:  # offline, a wrong name, ...: datasets raises many kinds
            raise DataError(
                f"{field}: cannot load the Hugging Face dataset {name!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                hint="a hub name needs the network; a folder saved with save_to_disk does not",
            ) from None
    where = f"{field} ({name}{'' if split is None else ':' + split})"
    return to_examples(
        data, where, text_column=text_column, label_column=label_column, image_column=image_column
    )
