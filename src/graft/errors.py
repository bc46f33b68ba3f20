"""Errors that graft reports to the user as a short message and an exit code.

A user mistake never ends in a bare traceback: the CLI catches :class:`GraftError`, prints
``error: <message>`` (plus a hint on what to do) and exits with :attr:`GraftError.exit_code`.
"""

from __future__ import annotations


class GraftError(Exception):
    """Base class of every error that is the user's to fix."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class UsageError(GraftError):
    """A bad command line, config field, override or unknown name (exit code 2)."""

    exit_code = 2


class DataError(GraftError):
    """A missing, unreadable or malformed data or model file (exit code 3)."""

    exit_code = 3


class TrainingDiverged(GraftError):
    """The training loss became NaN or Inf (exit code 4). The last checkpoint, written before,
    holds finite weights."""

    exit_code = 4


class SaveError(GraftError):
    """A file of the run could not be written: disk full, I/O error, no permission (exit code 5).
    Files are replaced atomically, so the previous version of the file is still intact."""

    exit_code = 5


class Interrupted(GraftError):
    """Training stopped on SIGTERM or SIGINT after committing a checkpoint; the exit code is the
    shell's for that signal (128 + its number: 143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, *, signal_number: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number
