"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Write to a temporary file in the same folder, fsync it, rename it over the target (atomic on
POSIX within one file system), fsync the folder so the rename itself is durable. A process killed
mid-write (SIGKILL, power loss) leaves the previous file and at most a stray temporary file, which
:func:`remove_stale_temporaries` clears.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from graft.errors import SaveError, UsageError

# mkstemp creates files readable by their owner only; give results the usual mode (0644 with the
# common umask 022). Reading the umask means setting it, so do it once.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words: "a folder", "a FIFO", "a character device", ..."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def writable_target(path: Path) -> Path:
    """The file a write of ``path`` replaces: ``path`` itself, or the file a symbolic link at
    ``path`` points to (the link stays a link). Anything that exists and is not a regular file
    (a folder, a FIFO, a device such as /dev/full, a socket) is refused: a rename would replace
    it by a regular file."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as e:
        raise SaveError(f"{path}: cannot be written ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"{path}: is {file_kind(mode)}; graft writes regular files only",
            hint="give the path of a file to create or replace",
        )
    return target


def check_writable_dir(path: Path, field: str) -> None:
    """Refuse, before any work, an output folder that cannot be made or written: a part of the
    path that is a file, a folder without write permission, a file system that refuses (/proc).
    The probe (a temporary folder, removed at once) leaves nothing behind."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{field}: {path}: {existing} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".graft-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as e:
        raise SaveError(
            f"{field}: {path}: cannot write in {existing} ({e.strerror or e})",
            hint="choose a folder you can write to",
        ) from None


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file in the same folder, fsync it,
    then rename it into place (rename is atomic on POSIX within one file system). Only a
    regular file (or a link to one) is replaced: see :func:`writable_target`."""
    path = writable_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files that writes of ``path`` killed mid-way left behind; return them.
    Call it only while no other process writes ``path``."""
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def saving(path: Path, what: str) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (disk full, I/O error, permissions), also one
    wrapped by another error, into a :class:`SaveError` that names the file and says the previous
    version is intact."""
    try:
        yield
    except Exception as e:
        cause = _os_error(e)
        if cause is None:
            raise
        raise SaveError(
            f"{path}: could not write the {what} ({cause.strerror or cause})",
            hint="free disk space or fix the folder, then continue with `graft fit --resume`; "
            "the previous version of the file is intact (files are replaced atomically)",
        ) from e


def _os_error(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error``, if any: writers in C++ (``torch.save`` into a file)
    report a failed write as a ``RuntimeError`` raised while handling the ``OSError``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def check_target(target: Path, force: bool, option: str = "--output") -> None:
    """Refuse an existing, non-empty output folder unless ``force``; its parent must be
    writable. Call it before any work, so that a mistake costs nothing."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise UsageError(
            f"{option} {target}: already exists",
            hint=f"choose another {option}, or give --force to replace it",
        )
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    check_writable_dir(parent, option)


@contextlib.contextmanager
def staged_dir(target: Path, what: str) -> Iterator[Path]:
    """A temporary folder beside ``target`` to write a whole output into; renamed to ``target``
    (replacing what was there) when the block ends without an error, removed otherwise. An
    error or a kill leaves nothing half-written at ``target``. OSErrors become a
    :class:`SaveError` naming ``target`` (see :func:`saving`)."""
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with saving(target, what):
            tmp.mkdir(parents=True)
            yield tmp
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
