"""The ``graft`` command: one entry point, subcommands.

Exit codes: 0 success, 1 an internal error (a bug: a traceback is shown), 2 a usage mistake (bad
command line, config field, unknown name), 3 a data problem (missing, corrupt or malformed file),
4 training diverged (NaN/Inf loss; the last good checkpoint is kept), 5 a file could not be
written (disk full, I/O error; the previous checkpoint is intact), 130 interrupted by Ctrl-C
(SIGINT), 143 stopped by SIGTERM. ``graft fit`` stopped by the first SIGTERM or Ctrl-C finishes
its step, commits a checkpoint and exits with 143 or 130 (``--resume`` continues it exactly); a
second Ctrl-C aborts at once (130, no checkpoint), a second SIGTERM ends the process as SIGTERM
does by default. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from graft.cli import (
    auto,
    benchmark,
    compare,
    demo,
    evaluate,
    export,
    fit,
    interpolate,
    listing,
    lr_find,
    predict,
    prune,
    quantize,
    report,
    search,
    serve,
    soup,
    validate,
)
from graft.cli.options import Parser
from graft.errors import GraftError, Interrupted
from graft.safe_load import weights_only_loading

EXAMPLES = """\
examples:
  graft fit configs/fashion_mnist_lite0.yaml
  graft fit configs/vader_minilm.yaml strategy.name=linear_probe optim.lr=3e-3 train.epochs=2
  graft fit configs/vader_minilm.yaml --resume
  graft validate configs/vader_minilm.yaml train.batch_size=64
  graft eval runs/RUN --dataset vader_tweets
  graft predict runs/RUN "a moving, beautifully shot film" "two hours I will never get back"
  graft predict runs/RUN shoe.png shirt.png --json
  graft search configs/search_vader_minilm.yaml --workers 2
  graft auto fashion_mnist --budget 15m
  graft list strategies
  graft compare configs/vader_minilm.yaml --strategies full,linear_probe,lp_ft --seeds 3
  graft report runs/compare-vader_minilm --output report.html
  graft interpolate runs/RUN --base pretrained --alphas 0:1:0.1
  graft soup runs/compare-vader_minilm --greedy
  graft export runs/RUN --format onnx -o runs/RUN-onnx
  graft quantize runs/RUN -o runs/RUN-int8
  graft prune runs/RUN --method structured --amount 0.3 --finetune-epochs 1 -o runs/RUN-pruned
  graft benchmark runs/RUN runs/RUN-onnx runs/RUN-int8 --batch 1,32
  graft serve runs/RUN --port 8000 --max-batch 32
"""


# In the order `graft --help` lists them. Each module declares NAME, add_arguments(parser) and
# run(args) -> exit code; its docstring's first line is the command's help, the rest its
# description.
COMMAND_MODULES = (
    fit,
    validate,
    evaluate,
    predict,
    lr_find,
    demo,
    compare,
    report,
    search,
    auto,
    interpolate,
    soup,
    export,
    quantize,
    prune,
    benchmark,
    serve,
    listing,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: ``graft COMMAND …``."""
    parser = Parser(
        prog="graft",
        description="Fine-tune pretrained models on your data; measure which strategy works best.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMAND_MODULES:
        summary, _, details = (module.__doc__ or "").partition("\n\n")
        help_ = summary.strip().rstrip(".")
        help_ = help_[0].lower() + help_[1:]
        description = " ".join(details.split()) or summary.strip()
        p = sub.add_parser(module.NAME, help=help_, description=description)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by the console script)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OMP_WAIT_POLICY is left to OpenMP for one process: PASSIVE cost a MiniLM training step
    # 15-18% here (benchmarks/b6_step.py). Where graft runs several torch processes at once
    # (search --workers N) it sets PASSIVE for them: spinning waits made two such processes on
    # 2 cores slow each other down 5-75x.
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        # `graft fit c.yaml --quiet optim.lr=1e-3`: overrides may also follow an option.
        if getattr(args, "takes_overrides", False):
            args.overrides += [e for e in extras if "=" in e and not e.startswith("-")]
            extras = [e for e in extras if e not in args.overrides]
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        # `--resume key=value`: the optional RUN_DIR swallowed an override.
        resume = getattr(args, "resume", False)
        if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
            args.overrides.append(resume)
            args.resume = True
        if args.command is None:
            parser.print_help()
            return 2
        handler: Callable[[argparse.Namespace], int] = args.handler
        # Every torch.load while the command runs is weights-only (graft.safe_load).
        with weights_only_loading():
            return handler(args)
    except Interrupted as e:  # not an error: the run stopped as asked, with a checkpoint
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except GraftError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except pickle.UnpicklingError:  # a library's torch.load met a pickle: refused, not run
        print(
            "error: refused to load a file that holds Python objects other than tensors (it was "
            "not loaded, none of its code ran)\n  hint: use weights from a source you trust, "
            "saved as safetensors",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
