"""One planned run of a compare, trained (or continued) as a child ``graft fit`` or in process.

Shared by the serial loop (:mod:`graft.compare.runner`) and the workers that claim runs from a
study (:mod:`graft.compare.workers`): whoever runs a run, it is the same ``graft fit`` with the
same config, resumed by the state of its run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from graft.atomic import atomic_write_text
from graft.compare.records import record_of
from graft.compare.spec import PlannedRun
from graft.compare.stats import RunRecord, ranking_of
from graft.config import dump_config
from graft.console import RunLog
from graft.errors import DataError, GraftError, UsageError
from graft.rundir import run_state

ISOLATION = "isolation.json"  # which runs ran in a child process
CONFIGS = "configs"

# The child ``graft fit``: on Linux it asks for SIGTERM when the process that started it dies
# (PR_SET_PDEATHSIG), so a killed compare worker does not leave an orphan training on in a run
# directory that another worker then takes over; SIGTERM makes fit commit a checkpoint and stop.
# argv[1] is the parent's pid: a parent gone before prctl took effect is noticed at once.
CHILD_CODE = """\
import os, sys
if sys.platform == "linux":
    import ctypes, signal
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(130)
from graft.cli.app import main
sys.exit(main(sys.argv[2:]))
"""

_isolation_lock = threading.Lock()  # worker threads of one process update isolation.json


def in_process(run: PlannedRun, resume: Path | None, quiet: bool) -> None:
    """``fit`` in this process (faster start; peak memory is then not the run's own)."""
    from graft import run as run_module  # looked up at call time: tests count the calls

    run_module.fit(run.config, resume=resume if resume is not None else False, quiet=quiet)


def in_child(
    run: PlannedRun,
    config_path: Path,
    resume: Path | None,
    quiet: bool,
    *,
    threads: int | None = None,
    passive: bool = False,
) -> None:
    """``graft fit`` in a fresh interpreter: its peak RSS and wall time are the run's own.

    ``threads`` sets ``hardware.threads`` on the command line (the config file stays the one a
    serial compare writes); ``passive`` sets ``OMP_WAIT_POLICY=PASSIVE``, for when several runs
    compute on this machine at once (spinning waits slow each other down)."""
    cmd = [sys.executable, "-c", CHILD_CODE, str(os.getpid()), "fit", str(config_path)]
    if threads is not None:
        cmd.append(f"hardware.threads={threads}")
    if resume is not None:
        cmd += ["--resume", str(resume)]
    if quiet:
        cmd.append("--quiet")
    env = None
    if passive:
        env = {**os.environ}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    code = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False, env=env).returncode
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        error = UsageError if code == 2 else DataError if code == 3 else GraftError
        raise error(
            f"run {run.name} failed (exit code {code}; its error is printed above)",
            hint=f"rerun it alone: graft fit {config_path}; `graft compare` again resumes the rest",
        )


def isolation_record(compare_dir: Path) -> dict[str, bool]:
    """Which runs ran in a child process (read back on resume)."""
    path = compare_dir / ISOLATION
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): bool(v) for k, v in data.items()} if isinstance(data, dict) else {}


def note_isolation(compare_dir: Path, name: str, isolated: bool) -> None:
    """Record how ``name`` ran: read, update and write back, so that concurrent workers of this
    process keep each other's entries (a missing entry reads as a child process)."""
    with _isolation_lock:
        record = isolation_record(compare_dir)
        record[name] = isolated
        atomic_write_text(compare_dir / ISOLATION, json.dumps(record))


def load_record(run: PlannedRun, isolated: bool = True) -> RunRecord:
    """A finished run as a :class:`RunRecord` (with its label and seed)."""
    return record_of(run.run_dir, run.label, run.seed, isolated)


def run_one(
    run: PlannedRun,
    compare_dir: Path,
    *,
    log: RunLog,
    position: str,
    isolate: bool = True,
    verbose: bool = False,
    threads: int | None = None,
    passive: bool = False,
) -> RunRecord | None:
    """Train one planned run, or continue it from its checkpoint; ``None`` if it was finished
    already. ``position`` prefixes its log lines (``[2/6]``, ``[worker 1] [2/6]``)."""
    state = run_state(run.run_dir)
    if state == "done":
        return None
    if state == "stale":  # killed before its first checkpoint: nothing to keep
        shutil.rmtree(run.run_dir)
    config_path = compare_dir / CONFIGS / f"{run.name}.yaml"
    config_path.parent.mkdir(exist_ok=True)
    atomic_write_text(config_path, dump_config(run.config))
    resume_dir = run.run_dir if state == "partial" else None
    log(f"{position} {run.label} seed {run.seed}" + (" (resuming)" if resume_dir else ""))
    started = time.perf_counter()
    if isolate:
        # A config that names its threads keeps them (its results are then those of a serial
        # compare, bit for bit); otherwise the workers split the cores.
        own = threads if run.config.hardware.threads is None else None
        in_child(run, config_path, resume_dir, quiet=not verbose, threads=own, passive=passive)
    else:
        in_process(run, resume_dir, quiet=not verbose)
    note_isolation(compare_dir, run.name, isolate)
    record = load_record(run)
    ranking = ranking_of([record])
    value = record.score(ranking.metric, "test")
    value = record.score(ranking.metric, "validation") if value is None else value
    log(
        f"{position} {run.label} seed {run.seed}: {ranking.name} "
        + ("–" if value is None else f"{value:.4f}")
        + f" in {time.perf_counter() - started:.1f}s"
    )
    return record
