"""In-memory data for a compare (``run_compare(base, spec, train=df, ...)``): each run of a
compare is a ``graft fit`` of its own config (a child process by default, resumable from the
compare directory alone), so the data given is written once into the compare directory, in
graft's own file formats, and the configs name those files: texts as JSON Lines, images held
in an array (with integer labels, as MNIST's) as an IDX pair. Reading them back gives the same
examples, so each run is the one ``graft.fit(train=...)`` would make of that data.

A file's name carries the hash of its content: other data is another file, so other configs, and
the compare directory of the first data refuses the second (a different spec) instead of mixing
runs on both.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graft.atomic import atomic_write
from graft.data.digest import hash_examples
from graft.data.types import Examples
from graft.errors import UsageError
from graft.inmemory import config_with_data, convert, replace_sources

DATA_DIR = "data"  # in the compare directory


def _digest(examples: Examples) -> str:
    h = hashlib.blake2b(digest_size=8)
    hash_examples(h, examples)
    return h.hexdigest()


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    # mtime=0: the same data gives the same bytes.
    return gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes(), mtime=0)


def _files(
    name: str, examples: Examples, folder: Path, columns: tuple[str, str]
) -> tuple[dict[str, Any], dict[Path, bytes]]:
    """The config source and the file contents that hold ``examples``."""
    stem = f"{name}-{_digest(examples)}"
    if examples.modality == "text":
        path = folder / f"{stem}.jsonl"
        text_column, label_column = columns
        lines = (
            json.dumps({text_column: t, label_column: y}, ensure_ascii=False)
            for t, y in zip(examples.inputs, examples.labels, strict=True)
        )
        return {"path": str(path), "format": "jsonl"}, {path: ("\n".join(lines) + "\n").encode()}
    labels = examples.labels
    if not isinstance(examples.inputs, np.ndarray) or not all(
        y.isdigit() and int(y) < 256 and str(int(y)) == y for y in labels
    ):
        raise UsageError(
            f"{name}: a compare takes images held in memory as a uint8 array with integer labels "
            "(0..255)",
            hint="write the images to an image folder (one subfolder per class) and name it in "
            "the config's data section",
        )
    images, targets = folder / f"{stem}-images.idx.gz", folder / f"{stem}-labels.idx.gz"
    source = {"path": str(images), "labels_path": str(targets), "format": "idx"}
    ints = np.asarray([int(y) for y in labels], dtype=np.uint8)
    return source, {images: _idx(examples.inputs), targets: _idx(ints)}


def with_files(
    base: Mapping[str, Any], given: Mapping[str, Any], compare_dir: Path
) -> tuple[dict[str, Any], dict[Path, bytes]]:
    """``base`` with each given set's source replaced by its files in ``compare_dir/data``, and
    those files' contents (to write once the compare directory exists). The data is converted
    and checked here, before anything is written."""
    config = config_with_data(base, (), given)
    sources: dict[str, dict[str, Any]] = {}
    files: dict[Path, bytes] = {}
    for name, examples in convert(config, given).items():
        placeholder = config.data.extra_eval[name.split(".", 1)[1]] if "." in name else None
        src = placeholder or getattr(config.data, name)
        source, contents = _files(
            name, examples, compare_dir / DATA_DIR, (src.text_column, src.label_column)
        )
        sources[name], files = source, files | contents
    data = copy.deepcopy(dict(base))
    replace_sources(data, sources, kept=("text_column", "label_column"))
    return data, files


def write_files(files: Mapping[Path, bytes]) -> None:
    """Write the data files that are not there yet (on a resume they are, with this content:
    their names carry its hash)."""
    for path, content in files.items():
        if not path.is_file():
            atomic_write(path, lambda f, c=content: f.write(c))  # type: ignore[misc]
