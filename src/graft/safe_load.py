"""Reading weight files that may come from anyone: no code runs, damage is named.

``torch.load`` is only ever called with ``weights_only=True`` (tensors and plain data: a planted
pickle cannot execute), and loaded tensors are checked for NaN/Inf, so a damaged or hostile file
is a :class:`DataError` naming it instead of a crash (or worse) further on.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from graft.errors import DataError


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
