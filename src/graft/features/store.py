"""The shared feature store: frozen-body outputs kept on disk, for every run that asks again.

The runs of a ``compare``, a ``search`` or an ``auto`` (and a rerun of one config) compute the
same frozen-body forward passes over and over: the linear probe of every seed, the probe phase of
LP-FT, the first phases of gradual unfreezing, ``partial``'s frozen layers. Each such output is a
function of the frozen weights, the examples as the model receives them, the precision and the
device, and nothing else. Its key is a hash of exactly those (:mod:`graft.features.keys`), so an
entry can only be found by a computation that would give the same tensors, and whatever changes
(a weight, an example, a label, the tokenizer, max_length, the image size, an augmentation)
changes the key. The stored tensors are the ones computed, byte for byte: a run that finds them
trains exactly as the run that computed them.

One entry is one safetensors file, ``<root>/<key[:2]>/<key>.safetensors``, its metadata the key
and the format version. It is written to a temporary file in the same folder and renamed into
place: readers see a whole entry or none, and two processes writing the same entry at once each
rename a complete file (the same bytes) over the other. An entry that does not read back, or
names another key, is deleted and computed again. After a write, the least recently used entries
go until the store is within its size limit; a single entry larger than half the limit is not
stored.

Settings (environment, since they belong to the machine rather than to a run):
``GRAFT_FEATURE_CACHE`` (folder; default ``$GRAFT_CACHE/features``) and
``GRAFT_FEATURE_CACHE_SIZE`` (default ``4GB``; ``0`` turns the store off).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.assets import cache_dir
from graft.units import parse_size

FORMAT = "graft-features/1"
DEFAULT_SIZE = "4GB"
# Temporary files older than this were left by a killed writer.
STALE_TMP_S = 3600.0


@dataclass(frozen=True)
class FeatureStore:
    """Entries of named tensors on disk, by key, within ``limit`` bytes."""

    root: Path
    limit: int

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when there is none (or it did not read back whole)."""
        from safetensors import safe_open

        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        except FileNotFoundError:
            return None
        except Exception:  # a damaged file (safetensors raises its own errors): compute again
            _unlink(path)
            return None
        if meta.get("format") != FORMAT or meta.get("key") != key:
            _unlink(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be evicted
        return tensors

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> bool:
        """Store an entry (whole or not at all); False if it was not stored: too large for the
        limit, or the folder is not writable (the run goes on without it)."""
        from safetensors.torch import save_file

        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.limit // 2:
            return False
        path = self.path(key)
        tmp = path.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            contiguous = {k: v.detach().contiguous() for k, v in tensors.items()}
            save_file(contiguous, str(tmp), metadata={"format": FORMAT, "key": key})
            os.replace(tmp, path)
        except OSError:
            _unlink(tmp)
            return False
        self.evict()
        return True

    def entries(self) -> list[tuple[Path, os.stat_result]]:
        """Every stored entry and its stat, least recently used first."""
        found = []
        for path in self.root.glob("*/*.safetensors"):
            with contextlib.suppress(OSError):  # another process may evict it meanwhile
                found.append((path, path.stat()))
        return sorted(found, key=lambda e: e[1].st_mtime)

    def evict(self) -> None:
        """Delete the least recently used entries until the store is within its limit, and
        temporary files that a killed writer left."""
        entries = self.entries()
        total = sum(st.st_size for _, st in entries)
        for path, st in entries:
            if total <= self.limit:
                break
            _unlink(path)
            total -= st.st_size
        now = time.time()
        for tmp in self.root.glob("*/.*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink()

    def clear(self) -> int:
        """Delete every entry; how many there were."""
        entries = self.entries()
        for path, _ in entries:
            _unlink(path)
        return len(entries)


def origin(read: Sequence[bool]) -> str:
    """For the run log: where a phase's caches (train, validation) came from."""
    if all(read):
        return "read from the feature store"
    if not any(read):
        return "computed"
    return "computed (" + ("train" if read[0] else "validation") + " read from the feature store)"


def shared_store() -> FeatureStore | None:
    """The store this machine's settings describe, or None when ``GRAFT_FEATURE_CACHE_SIZE`` is
    0."""
    limit = parse_size(
        os.environ.get("GRAFT_FEATURE_CACHE_SIZE", DEFAULT_SIZE), "GRAFT_FEATURE_CACHE_SIZE"
    )
    if limit == 0:
        return None
    folder = os.environ.get("GRAFT_FEATURE_CACHE")
    return FeatureStore(Path(folder).expanduser() if folder else cache_dir() / "features", limit)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
