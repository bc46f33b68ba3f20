"""``graft fit --nproc N``: a data-parallel ``graft fit`` started through torchrun's own launcher
(``torch.distributed.launcher``: the elastic agent, its c10d rendezvous, its worker monitor).

The wrapper adds what torchrun leaves to the user: the device and process count are checked
before any process starts, a rendezvous that cannot be reached fails within a stated timeout,
and a failed job ends in one line naming the rank that failed and how (its own error, if it had
one, is printed above by that rank), with graft's exit code. The same job runs as
``torchrun --nproc-per-node N -m graft fit CONFIG``; several machines: docs/distributed.md.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from graft.errors import DataError, GraftError, Interrupted, UsageError

# What a failed rank's exit code says, when it is graft's own (errors.py).
PEER_LOST_EXIT = 6


class LaunchFailed(GraftError):
    """A rank of a data-parallel job failed; the job was stopped."""

    def __init__(self, message: str, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


def check_processes(
    nproc: int, device: str, optimizer: str, force: bool, field: str = "--nproc"
) -> None:
    """``nproc`` processes fit the machine: one per GPU on a GPU, at most one per core on a CPU
    (more would time-share the cores; ``force`` allows it); the optimizer can be split."""
    import torch

    if optimizer == "lbfgs":
        raise UsageError(
            "optim.name: lbfgs takes full-batch steps in one process; a data-parallel run "
            "cannot split its line search",
            hint="run it without --nproc, or choose another optimizer",
        )
    if nproc < 1:
        raise UsageError(f"{field} must be at least 1, not {nproc}")
    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if gpu:
        count = torch.cuda.device_count()
        if nproc > count:
            raise UsageError(
                f"{field} {nproc}: this machine has {count} GPU(s); NCCL needs one per process"
            )
        return
    cores = len(os.sched_getaffinity(0))
    if nproc > cores and not force:
        raise UsageError(
            f"{field} {nproc}: more processes than this machine's {cores} cores",
            hint="each process needs at least one core; --force starts them anyway",
        )


def launch(
    fit_args: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    rendezvous: str | None = None,
    rendezvous_timeout: int = 120,
    job_id: str | None = None,
) -> None:
    """Run ``graft fit FIT_ARGS`` as ``nproc`` processes on this machine (× ``nnodes`` machines
    meeting at ``rendezvous`` HOST:PORT, each started with the same command and ``job_id``).
    Raises :class:`LaunchFailed` when a rank fails, :class:`~graft.errors.Interrupted` when
    the job was stopped by a signal (the ranks commit a checkpoint first)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nnodes > 1 and rendezvous is None:
        raise UsageError("--nnodes > 1 needs --rendezvous HOST:PORT (the first machine's)")
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=job_id or uuid.uuid4().hex[:12],
        rdzv_backend="c10d",
        rdzv_endpoint=rendezvous or "localhost:0",  # one machine: a free port
        rdzv_configs={"join_timeout": rendezvous_timeout, "read_timeout": rendezvous_timeout},
        max_restarts=0,  # a failed rank fails the job; --resume continues it
        monitor_interval=0.1,
        start_method="spawn",
    )
    where = f"the rendezvous at {rendezvous}" if rendezvous else "the local rendezvous"
    # The agent logs each failure at length; the one line below says it. (Its loggers set
    # their own levels, so each is quietened, not just their parent.)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "graft", "fit", *fit_args)
    except ChildFailedError as e:
        raise _failed(e.failures) from None
    except RendezvousError as e:
        raise LaunchFailed(
            f"{where} could not be joined within {rendezvous_timeout}s "
            f"({str(e).strip() or type(e).__name__})",
            PEER_LOST_EXIT,
            hint="start the same command on every machine, with the first machine's address; "
            "check that its port is open",
        ) from None
    except Exception as e:  # the agent's SignalException: the job was asked to stop
        number = getattr(e, "sigval", None)
        if number is None:
            raise
        raise Interrupted(
            f"{signal.Signals(number).name}: the ranks stopped with a checkpoint",
            signal_number=int(number),
            hint="continue with the same command and --resume",
        ) from None


def _failed(failures: dict[int, Any]) -> LaunchFailed:
    """One line for a failed job, the cause first: a rank killed from outside (not by the
    launcher's own SIGTERM to the survivors), else a rank's own error exit, before the ranks
    that only lost a peer (exit 6) or were stopped by the launcher."""

    def how(f: Any) -> str:
        if f.exitcode < 0:
            return f"was killed by {signal.Signals(-f.exitcode).name}"
        return f"exited with {f.exitcode}"

    def cause_first(item: tuple[int, Any]) -> tuple[int, int]:
        rank, f = item
        if f.exitcode < 0:
            return (3 if -f.exitcode == signal.SIGTERM else 0, rank)
        return (2 if f.exitcode == PEER_LOST_EXIT else 1, rank)

    ordered = sorted(failures.items(), key=cause_first)
    rank, first = ordered[0]
    others = "".join(f"; rank {r} {how(f)}" for r, f in ordered[1:])
    code = first.exitcode if first.exitcode > 0 else PEER_LOST_EXIT
    user_error = code in (UsageError.exit_code, DataError.exit_code)
    return LaunchFailed(
        f"the data-parallel job failed: rank {rank} (pid {first.pid}) {how(first)}{others}",
        code,
        hint="its error is printed above"
        if user_error
        else "the last checkpoint is in the run directory: continue with --resume",
    )
