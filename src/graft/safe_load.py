"""Reading weight files that may come from anyone: no code runs, damage is named.

``torch.load`` is only ever called with ``weights_only=True`` (tensors and plain data: a planted
pickle cannot execute), and loaded tensors are checked for NaN/Inf, so a damaged or hostile file
is a :class:`DataError` naming it instead of a crash (or worse) further on.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from graft.errors import DataError

# torch reads these at every torch.load: FORCE makes weights_only=False loads weights-only too.
_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_OPT_OUT = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Inside the block every ``torch.load`` in the process reads tensors and plain data only,
    also a library's that asks for ``weights_only=False`` (torchvision's hub weights): a pickle
    from elsewhere cannot run code. The environment is as it was afterwards; a user's explicit
    opt-out (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) is respected. ``graft.fit``, ``load_model``
    and every command run inside it."""
    if _OPT_OUT in os.environ or os.environ.get(_FORCE) == "1":
        yield
        return
    previous = os.environ.get(_FORCE)
    os.environ[_FORCE] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE, None)
        else:
            os.environ[_FORCE] = previous


def load_weights_only(path: Path, what: str, hint: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a refused pickle or an unreadable file is
    a :class:`DataError` that names ``path`` (``what``: "checkpoint", "weights", ...)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message ends by suggesting weights_only=False: the one thing not to do
        # with a file from elsewhere, so it is not passed on.
        raise DataError(
            f"{path}: refused: the file holds Python objects other than tensors and plain data "
            "(it was not loaded, none of its code ran)",
            hint=hint,
        ) from None
    except Exception as e:  # truncated, or not a torch file at all
        raise DataError(f"{path}: unreadable {what} ({type(e).__name__}: {e})", hint=hint) from None


def non_finite(tensors: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in a (nested) state dict that hold NaN or Inf."""
    bad: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(prefix)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    walk("", tensors)
    return bad


def require_finite(path: Path, tensors: dict[str, Any], hint: str) -> None:
    """A :class:`DataError` naming ``path`` and the first bad tensors if any holds NaN or Inf."""
    bad = non_finite(tensors)
    if bad:
        raise DataError(
            f"{path}: NaN or Inf in the weights: {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""),
            hint=hint,
        )


def weights_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """How a state dict differs from what a model expects, in one line ("" if it fits)."""
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} for {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    parts = [
        f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
        f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
        f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else "",
    ]
    return "; ".join(p for p in parts if p)
