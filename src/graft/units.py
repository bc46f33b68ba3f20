"""Quantities a user writes in human units: durations (``90s``, ``15m``, ``1h30m``) and sizes
(``500MB``, ``4GB``)."""

from __future__ import annotations

import math
import re
from typing import Any

from graft.errors import UsageError

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|m|s)")


def parse_duration(value: Any, field: str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1h"`` or ``"1h30m"``; a clear error else."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d*)?", text):
            seconds = float(text)
        elif text and re.fullmatch(rf"(?:{_DURATION.pattern})+", text):
            unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
            seconds = sum(float(n) * unit[u] for n, u in _DURATION.findall(text))
        else:
            raise UsageError(
                f"{field}: not a duration: {value!r}",
                hint="write seconds or a number with a unit: 90s, 15m, 1h, 1h30m",
            )
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"{field}: the duration must be positive (got {value!r})")
    return seconds


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:([kmgt])(i)?)?b?")


def parse_size(value: Any, field: str) -> int:
    """Bytes from ``0``, ``"500MB"``, ``"4GB"``, ``"2GiB"`` (decimal or binary units); a clear
    error else."""
    text = str(value).strip().lower().replace(" ", "")
    match = None if isinstance(value, bool) else _SIZE.fullmatch(text)
    if match is None:
        raise UsageError(
            f"{field}: not a size: {value!r}",
            hint="write bytes or a number with a unit: 0 (off), 500MB, 4GB, 2GiB",
        )
    number, prefix, binary = match.groups()
    power = "kmgt".index(prefix) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)
