"""How the config's validation speaks: each bad field named with what it got, and the keys that
moved to another section named with their new place. Torch-free, as :mod:`graft.config`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def format_errors(err: ValidationError, origin: str) -> str:
    """A validation error as lines naming each bad field (and what it got, cut short)."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif "input" in e and not isinstance(e["input"], dict):
            got = repr(e["input"])  # cut: a value may be a whole pasted file
            msg = f"{msg} (got {got if len(got) <= 80 else got[:80] + f'... ({len(got):,} chars)'})"
        lines.append(f"  {field}: {msg}")
    return f"{origin}: invalid config\n" + "\n".join(lines)


# Keys that moved to a section of their own; an old config gets an error naming the new place.
MOVED_KEYS = {
    "train.device": "hardware.device",
    "train.threads": "hardware.threads",
    "train.num_workers": "hardware.num_workers",
    "train.channels_last": "hardware.channels_last",
    "train.checkpoint_every": "checkpoint.every",
    "train.checkpoint_minutes": "checkpoint.minutes",
    "train.keep_checkpoint": "checkpoint.keep",
    "train.progress": "output.progress",
    "train.tensorboard": "output.tensorboard",
    "train.mlflow": "output.mlflow",
}


def moved_keys(data: dict[str, Any]) -> list[str]:
    """A line for each key of ``data`` that moved, naming its new place."""
    found = []
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            found.append(f"  {old}: moved to {new}")
    return found
