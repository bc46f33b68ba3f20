"""What a run prints: a log mirrored into the run directory, progress bars, summary tables."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class RunLog:
    """Lines for the terminal and for ``log.txt`` in the run directory."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False, quiet=quiet, soft_wrap=True)
        self.file: Path | None = None
        self._pending: list[str] = []

    def attach(self, path: Path) -> None:
        """Start mirroring into ``path``; lines logged before the run directory existed go first."""
        self.file = path
        with path.open("a", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in self._pending)
        self._pending.clear()

    def __call__(self, message: str) -> None:
        self.console.print(message, markup=False)
        self.to_file(message)

    def to_file(self, message: str) -> None:
        """A line for ``log.txt`` only (the terminal gets it another way, e.g. as the error)."""
        line = f"{time.strftime('%H:%M:%S')} {message}"
        if self.file is None:
            self._pending.append(line)
        else:
            with self.file.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    def table(self, title: str, headers: list[str], rows: list[list[Any]]) -> None:
        """A table on the terminal, and as aligned text in the log file."""
        table = Table(title=title, title_justify="left")
        for h in headers:
            table.add_column(h, justify="left" if h in {headers[0], "state"} else "right")
        for r in rows:
            table.add_row(*[str(c) for c in r])
        self.console.print(table)
        if self.file is not None:
            widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
            lines = [title] + [
                "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True))
                for r in [headers, *rows]
            ]
            with self.file.open("a", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)

    def phase_table(self, index: int, phase_name: str, table: list[dict[str, Any]]) -> None:
        """A phase's layer groups: size, state (train / frozen / partial) and learning rate."""
        rows = [
            [r["group"], f"{r['params']:,}", r["state"], f"{r['lr']:.2e}" if r["lr"] else "-"]
            for r in table
        ]
        self.table(f"phase {index}: {phase_name}", ["group", "params", "state", "lr"], rows)


class EpochProgress:
    """A progress bar over one epoch's batches: loss, throughput and ETA. Silent when the output
    is neither a terminal nor a Jupyter notebook (CI logs get one line per epoch from the run
    log instead); in a notebook, rich draws it as a widget (ipywidgets)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.enabled = enabled and (sys.stderr.isatty() or console.is_jupyter)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} samples/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None
        self.seen = 0
        self.started = 0.0

    def start(self, description: str, total: int) -> None:
        if not self.enabled:
            return
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, loss=0.0, rate=0.0)
        self.seen, self.started = 0, time.perf_counter()

    def step(self, _index: int, loss: float, batch_size: int) -> None:
        if self.task is None:
            return
        self.seen += batch_size
        rate = self.seen / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, advance=1, loss=loss, rate=rate)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.progress.stop()
            self.task = None
