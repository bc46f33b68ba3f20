"""Data: the user's own files and named real datasets, as :class:`Examples`, split into
:class:`Splits` with a :class:`LabelMap` fixed by the training set."""

from graft.data.images import MAX_IMAGE_PIXELS, load_image
from graft.data.named import (
    DatasetInfo,
    get_dataset,
    list_datasets,
    load_named,
    register_dataset,
)
from graft.data.sources import read_idx, read_image_folder, read_table
from graft.data.splits import load_examples, make_splits
from graft.data.types import Examples, LabelMap, Splits

__all__ = [
    "MAX_IMAGE_PIXELS",
    "DatasetInfo",
    "Examples",
    "LabelMap",
    "Splits",
    "get_dataset",
    "list_datasets",
    "load_examples",
    "load_image",
    "load_named",
    "make_splits",
    "read_idx",
    "read_image_folder",
    "read_table",
    "register_dataset",
]
