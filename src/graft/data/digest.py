"""Content hashes of examples: what a run's data fingerprint and the feature store's keys hash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from graft.data.types import Examples
from graft.errors import DataError


def hash_examples(h: Any, examples: Examples, labels: bool = True) -> None:
    """Feed ``examples`` to the hash object ``h``: the text itself, the pixels of in-memory
    images, the bytes of image files (not their names or dates: a copied dataset still matches),
    and, with ``labels``, every label in order."""
    inputs = examples.inputs
    if isinstance(inputs, np.ndarray):
        h.update(f"{inputs.dtype}{inputs.shape}".encode())
        h.update(np.ascontiguousarray(inputs).data)
    else:
        for item in inputs:
            if isinstance(item, str):
                data = item.encode("utf-8", "surrogatepass")
            else:  # an image file
                data = _file_bytes(Path(item))
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    if labels:
        h.update(json.dumps(list(examples.labels)).encode())


def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
