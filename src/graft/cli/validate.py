"""Check a config: build its data, backbone, plan and optimizer; write nothing.

Build everything `graft fit` would (data and splits, backbone, plan, loaders, optimizer,
schedule, loss) and print the plan table of each phase; a compare: or search: block is checked
too. Exits 0 if a run could start, with the error a run would give if not. Writes nothing.
"""

from __future__ import annotations

import argparse

from graft.cli.options import add_config, add_quiet

NAME = "validate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from graft.check import check_config
    from graft.console import RunLog

    checked = check_config(args.config, args.overrides, RunLog(quiet=args.quiet))
    prep = checked.prepared
    print(
        f"{args.config}: ok ({len(prep.splits.train)} training examples, "
        f"{prep.trainable:,} trainable parameters, plan {prep.plan.strategy})"
    )
    return 0
