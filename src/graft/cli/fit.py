"""Fine-tune a pretrained backbone as a YAML config says.

Fine-tune: load data and backbone, run the strategy's plan with evaluation each epoch, keep the
best epoch, evaluate on test and extra sets, save the model, and write a report. Overrides are
dotted key=value pairs, e.g. optim.lr=3e-4.
"""

from __future__ import annotations

import argparse

from graft.cli.options import add_config, add_quiet
from graft.errors import UsageError

NAME = "fit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue an interrupted run (default: the newest unfinished one with this config)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even if the config or the data changed since the run began",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (same as train.deterministic=true)",
    )
    add_quiet(p)
    d = p.add_argument_group("data parallel (torch.distributed; docs/distributed.md)")
    d.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="N processes on this machine, each with a shard of every batch (gloo on a CPU, "
        "NCCL with one GPU each); same as torchrun --nproc-per-node N -m graft fit",
    )
    d.add_argument(
        "--nnodes", type=int, default=1, metavar="M", help="with --nproc: M machines (1)"
    )
    d.add_argument(
        "--rendezvous",
        metavar="HOST:PORT",
        help="with --nnodes: where the machines meet (the first machine's address)",
    )
    d.add_argument(
        "--rendezvous-timeout",
        type=int,
        default=120,
        metavar="S",
        help="give up when the machines have not met within S seconds (120)",
    )
    d.add_argument("--job-id", help="with --nnodes: the same id on every machine")


def run(args: argparse.Namespace) -> int:
    from graft.distributed import is_main_process
    from graft.run import fit

    if args.force and not (args.resume or args.nproc):
        raise UsageError("--force applies to --resume (and to --nproc above the core count)")
    if args.nproc is not None:
        return _launch(args)
    if args.nnodes != 1 or args.rendezvous or args.job_id:
        raise UsageError("--nnodes, --rendezvous and --job-id go with --nproc")
    overrides = [*args.overrides, *(["train.deterministic=true"] if args.deterministic else [])]
    result = fit(args.config, overrides, resume=args.resume, force=args.force, quiet=args.quiet)
    if not is_main_process():  # a data-parallel rank > 0: rank 0 prints the result
        return 0
    acc = result.test_accuracy
    print(f"{result.run_dir}\ttest accuracy {acc:.4f}" if acc is not None else str(result.run_dir))
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: the config is checked here, then torchrun's launcher starts the ranks,
    each a ``graft fit`` with the same arguments (but --nproc)."""
    import os

    # c10d's C++ warnings (a retried connection, with a stack of 30 frames) drown graft's
    # own one-line errors; set before torch is loaded, inherited by the ranks.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from graft.config import load_config
    from graft.launch import check_processes, launch

    overrides = [*args.overrides, *(["train.deterministic=true"] if args.deterministic else [])]
    config = load_config(args.config, overrides)  # a bad config fails before any process
    check_processes(args.nproc, config.hardware.device, config.optim.name, args.force)
    forwarded = [str(args.config), *overrides]
    if args.resume:
        forwarded += ["--resume"] + ([] if args.resume is True else [str(args.resume)])
        forwarded += ["--force"] if args.force else []
    forwarded += ["--quiet"] if args.quiet else []
    launch(
        forwarded,
        nproc=args.nproc,
        nnodes=args.nnodes,
        rendezvous=args.rendezvous,
        rendezvous_timeout=args.rendezvous_timeout,
        job_id=args.job_id,
    )
    return 0
