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
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from graft.errors import GraftError, Interrupted, UsageError

EXAMPLES = """\
examples:
  graft fit configs/fashion_mnist_lite0.yaml
  graft fit configs/vader_minilm.yaml strategy.name=linear_probe optim.lr=3e-3 train.epochs=2
  graft fit configs/vader_minilm.yaml --resume
  graft eval runs/RUN --dataset vader_tweets
  graft predict runs/RUN "a moving, beautifully shot film" "two hours I will never get back"
  graft predict runs/RUN shoe.png shirt.png --json
  graft search configs/search_vader_minilm.yaml --workers 2
  graft auto fashion_mnist --budget 15m
  graft list strategies
  graft compare configs/vader_minilm.yaml --strategies full,linear_probe,lp_ft --seeds 3
  graft report runs/compare-vader_minilm --output report.html
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 as well; keep our format
        self.print_usage(sys.stderr)
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (a named set, or a file/folder)")
    g.add_argument("--dataset", help="a named real dataset (see `graft list datasets`)")
    g.add_argument("--split", help="the named set's split (default: test if it has one)")
    g.add_argument("--path", help="an image folder, IDX images file, or CSV/TSV/JSONL file")
    g.add_argument("--format", choices=["image_folder", "idx", "csv", "tsv", "jsonl"])
    g.add_argument("--labels-path", help="the IDX labels file")
    g.add_argument("--text-column", default="text")
    g.add_argument("--label-column", default="label")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graft",
        description="Fine-tune pretrained models on your data; measure which strategy works best.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fit = sub.add_parser(
        "fit",
        help="fine-tune a pretrained backbone as a YAML config says",
        description="Fine-tune: load data and backbone, run the strategy's plan with evaluation "
        "each epoch, keep the best epoch, evaluate on test and extra sets, save the model, and "
        "write a report. Overrides are dotted key=value pairs, e.g. optim.lr=3e-4.",
    )
    fit.add_argument("config", help="the run config (YAML); see configs/")
    fit.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    fit.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue an interrupted run (default: the newest unfinished one with this config)",
    )
    fit.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even if the config or the data changed since the run began",
    )
    fit.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (same as train.deterministic=true)",
    )
    fit.add_argument("--quiet", action="store_true", help="print nothing but errors")

    ev = sub.add_parser(
        "eval",
        help="evaluate a saved model on a labeled dataset",
        description="Accuracy, macro-F1, per-class scores and the confusion matrix of a saved "
        "model on labeled data. The data's labels must be among the model's classes.",
    )
    ev.add_argument("model", help="a run directory or its model/ folder")
    _add_data_options(ev)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")

    pr = sub.add_parser(
        "predict",
        help="predict the class of images or texts with a saved model",
        description="Each INPUT is an image file (image models) or a text (text models); for a "
        "text model, `-` reads one text per line from standard input.",
    )
    pr.add_argument("model", help="a run directory or its model/ folder")
    pr.add_argument("inputs", nargs="+", metavar="INPUT")
    pr.add_argument("--json", action="store_true", help="print predictions as JSON lines")

    lrf = sub.add_parser(
        "lr-find",
        help="sweep the learning rate and suggest one (Smith 2017)",
        description="Train the plan's first phase for a few batches at exponentially growing "
        "learning rates, restore the model, plot loss against LR and suggest optim.lr. "
        "Writes no run directory.",
    )
    lrf.add_argument("config", help="the run config (YAML)")
    lrf.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    lrf.add_argument("--steps", type=int, default=100, help="sweep length in batches")
    lrf.add_argument("--plot", default="lr_find.png", help="where to write the plot (PNG)")

    demo = sub.add_parser(
        "demo",
        help="fine-tune MiniLM on VADER sentiment and EfficientNet-Lite0 on Fashion-MNIST",
        description="Two real fine-tunes of real pretrained models on real data (subsets sized "
        "for a few minutes on a 2-core CPU), each with a report. Run from the repository root.",
    )
    demo.add_argument("--configs", default="configs", help="folder with the demo configs")
    demo.add_argument("--output", default="runs/demo", help="where the run directories go")

    _add_compare_parsers(sub)
    _add_search_parsers(sub)

    ls = sub.add_parser("list", help="list backbones families, strategies or datasets")
    ls.add_argument("what", choices=["strategies", "datasets", "backbones"])
    return parser


def _add_compare_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    cmp = sub.add_parser(
        "compare",
        help="run several strategies × seeds on the same splits; leaderboard and report",
        description="Every strategy × seed of a config (its `compare:` block, or --strategies and "
        "--seeds) on the same data splits and budget, each run a `graft fit` in "
        "output.dir/compare-NAME/. Rerunning the same command resumes: finished runs are kept. "
        "Ends with a leaderboard (mean ± std, significance against the best) and report.html.",
    )
    cmp.add_argument("config", help="the base run config (YAML), optionally with compare:")
    cmp.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the base config")
    cmp.add_argument("--strategies", help="comma-separated strategy names (replace compare:'s)")
    cmp.add_argument("--seeds", help="how many seeds (3), or which (0,1,2); varies train.seed")
    cmp.add_argument("--name", help="the compare directory's name (default: the config's)")
    cmp.add_argument("--resume", action="store_true", help="insist on continuing a compare")
    cmp.add_argument(
        "--in-process",
        action="store_true",
        help="run every fit in this process (faster start; peak memory is then not per run)",
    )
    cmp.add_argument("--verbose", action="store_true", help="show each run's own log")
    cmp.add_argument("--quiet", action="store_true", help="print nothing but errors")

    rep = sub.add_parser(
        "report",
        help="one comparison report (HTML) from finished runs or compare directories",
        description="Group the runs by strategy and write the comparison report: leaderboard "
        "over seeds, curves, cost, domain shift, best run, configs, environment.",
    )
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or compare directories")
    rep.add_argument("--output", "-o", default="report.html", help="the HTML file to write")
    rep.add_argument("--title", help="the report's title")


def _cmd_compare(args: argparse.Namespace) -> int:
    from graft.compare import compare

    result = compare(
        args.config,
        args.overrides,
        strategies=args.strategies,
        seeds=args.seeds,
        name=args.name,
        resume=args.resume,
        isolate=not args.in_process,
        quiet=args.quiet,
        verbose=args.verbose,
    )
    print(f"{result.compare_dir}\treport {result.report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from graft.compare_report import report_from_dirs

    print(report_from_dirs(args.runs, args.output, args.title))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from graft.run import fit

    if args.force and not args.resume:
        raise UsageError("--force applies to --resume only")
    overrides = [*args.overrides, *(["train.deterministic=true"] if args.deterministic else [])]
    result = fit(args.config, overrides, resume=args.resume, force=args.force, quiet=args.quiet)
    acc = result.test_accuracy
    print(f"{result.run_dir}\ttest accuracy {acc:.4f}" if acc is not None else str(result.run_dir))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from graft.artifact import load_model
    from graft.data import get_dataset, load_examples
    from graft.metrics import summary_line

    if (args.dataset is None) == (args.path is None):
        raise UsageError(
            "graft eval needs one of --dataset NAME or --path FILE",
            hint="e.g. graft eval runs/RUN --dataset vader_tweets",
        )
    loaded = load_model(args.model)
    split = args.split
    if args.dataset and split is None:
        split = "test" if "test" in get_dataset(args.dataset).splits else None
    examples = load_examples(
        dataset=args.dataset,
        split=split,
        format=args.format,
        path=args.path,
        labels_path=args.labels_path,
        text_column=args.text_column,
        label_column=args.label_column,
    )
    metrics = loaded.evaluate(examples)
    names = list(loaded.label_map.names)
    if args.json:
        print(json.dumps(metrics))
        return 0
    print(f"{examples.origin}: {summary_line(metrics)}")
    width = max(len(n) for n in names)
    print(f"{'class':<{width}}  precision  recall      f1  support")
    for name in names:
        c = metrics["per_class"][name]
        print(
            f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  "
            f"{c['support']:7d}"
        )
    return 0


def _read_inputs(model_modality: str, inputs: Sequence[str]) -> tuple[list[str], object]:
    from graft.data.types import Examples

    if model_modality == "text":
        texts: list[str] = []
        for item in inputs:
            texts += (
                [line.rstrip("\n") for line in sys.stdin if line.strip()] if item == "-" else [item]
            )
        return texts, Examples("text", texts, ["?"] * len(texts), "command line")
    paths = [Path(p) for p in inputs]
    from graft.data.images import load_image

    for p in paths:
        load_image(p)  # a clear error for a missing or corrupt file, before any work
    return [str(p) for p in paths], Examples("image", paths, ["?"] * len(paths), "command line")


def _cmd_predict(args: argparse.Namespace) -> int:
    from graft.artifact import load_model

    loaded = load_model(args.model)
    shown, examples = _read_inputs(loaded.modality, args.inputs)
    for item, pred in zip(shown, loaded.predict(examples), strict=True):  # type: ignore[arg-type]
        if args.json:
            print(json.dumps({"input": item, **pred}))
        else:
            print(f"{pred['label']}\t{pred['probability']:.3f}\t{item}")
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from graft.config import load_config
    from graft.run import find_lr

    if args.steps < 5:
        raise UsageError("--steps must be at least 5")
    result = find_lr(
        load_config(args.config, args.overrides), steps=args.steps, plot=Path(args.plot)
    )
    print(f"suggested optim.lr: {result['suggestion']}\tplot: {result['plot']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from graft.demo import print_summary, run_demo

    print_summary(run_demo(args.configs, args.output))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "strategies":
        from graft.strategies import _STRATEGIES

        for name, fn in sorted(_STRATEGIES.items()):
            print(f"{name:16s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    elif args.what == "datasets":
        from graft.data import list_datasets

        for info in list_datasets():
            splits = ",".join(info.splits)
            print(f"{info.name:16s} {info.modality:6s} splits: {splits:12s} {info.description}")
    else:
        from graft.models import families

        print("families:", ", ".join(families()))
        print("offline pretrained: tf_efficientnet_lite0 (timm), minilm (hf)")
        print(
            "any timm/torchvision model name, or hf:<hub id or folder>, works with pretrained=false"
        )
    return 0


def _add_search_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    se = sub.add_parser(
        "search",
        help="hyperparameter search (grid, random, TPE, CMA-ES; pruning) over any config field",
        description="A config with a `search:` section (space, n_trials/timeout, metric, sampler, "
        "pruner) runs one `graft fit` per trial in output.dir/search-NAME/ with Optuna; weak "
        "trials are pruned from their per-epoch validation metric. Writes best_config.yaml, "
        "search.json and report.html. The study lives in study.db there, or in --storage.",
    )
    se.add_argument("config", help="a run config (YAML) with a search: section")
    se.add_argument("overrides", nargs="*", help="dotted.key=value overrides (search.* too)")
    se.add_argument("--n-trials", type=int, help="total trials (overrides search.n_trials)")
    se.add_argument("--timeout", help="wall-time budget, e.g. 15m (overrides search.timeout)")
    se.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    se.add_argument(
        "--storage",
        help="an Optuna RDB URL, e.g. postgresql://user:pw@host/db, shared by workers on several "
        "machines (default: sqlite study.db in the search directory)",
    )
    se.add_argument("--study-name", help="the study's name (default: the config file's stem)")
    se.add_argument(
        "--resume", action="store_true", help="continue a killed search; finished trials stay"
    )
    se.add_argument(
        "--join", action="store_true", help="add workers to a running search (another machine)"
    )
    se.add_argument("--quiet", action="store_true", help="print nothing but errors")

    au = sub.add_parser(
        "auto",
        help="automated fine-tuning within a wall-time budget: probe, screen, search, train",
        description="DATA is a named dataset (see `graft list datasets`) or a path (image folder, "
        "CSV/TSV/JSONL, IDX). Picks a backbone for the data type, screens strategies cheaply (a "
        "linear probe on cached features first, then short runs), searches around the winner, "
        "trains the final model and writes a report, all within --budget.",
    )
    au.add_argument("data", help="a named dataset or a path")
    au.add_argument(
        "overrides", nargs="*", help="dotted.key=value set on every run, e.g. train.batch_size=64"
    )
    au.add_argument("--budget", default="15m", help="wall-time budget: 90s, 15m, 1h (15m)")
    au.add_argument("--backbone", help="the backbone (default: by data type)")
    au.add_argument("--train-size", type=int, help="cap on training examples")
    au.add_argument("--val-size", type=int, help="cap on validation examples")
    au.add_argument("--test-size", type=int, help="cap on test examples")
    au.add_argument("--image-size", type=int, help="image side in pixels")
    au.add_argument("--max-length", type=int, help="text length in tokens")
    au.add_argument("--format", choices=["image_folder", "idx", "csv", "tsv", "jsonl"])
    au.add_argument("--labels-path", help="the IDX labels file")
    au.add_argument("--text-column", default="text")
    au.add_argument("--label-column", default="label")
    au.add_argument("--output", default="runs", help="where the auto directory goes (runs)")
    au.add_argument("--name", help="the auto directory's name (default: auto-DATA)")
    au.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _cmd_search(args: argparse.Namespace) -> int:
    from graft.search import search
    from graft.search_space import parse_duration

    timeout = parse_duration(args.timeout, "--timeout") if args.timeout is not None else None
    if args.n_trials is not None and args.n_trials < 1:
        raise UsageError("--n-trials must be at least 1")
    result = search(
        args.config,
        args.overrides,
        storage=args.storage,
        study_name=args.study_name,
        workers=args.workers,
        resume=args.resume,
        join=args.join,
        n_trials=args.n_trials,
        timeout=timeout,
        quiet=args.quiet,
    )
    best = result.summary["best"]
    value = f"\tbest {result.summary['metric']} {best['value']:.4f}" if best else ""
    print(f"{result.search_dir}{value}")
    return 0


def _cmd_auto(args: argparse.Namespace) -> int:
    from graft.auto import AutoOptions, run_auto
    from graft.search_space import parse_duration

    options = AutoOptions(
        data=args.data,
        budget_s=parse_duration(args.budget, "--budget"),
        backbone=args.backbone,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        image_size=args.image_size,
        max_length=args.max_length,
        format=args.format,
        labels_path=args.labels_path,
        text_column=args.text_column,
        label_column=args.label_column,
        output=args.output,
        name=args.name,
        quiet=args.quiet,
        overrides=list(args.overrides),
    )
    result = run_auto(options)
    acc = result.get("final", {}).get("test_accuracy")
    shown = f"\ttest accuracy {acc:.4f}" if isinstance(acc, float) else ""
    print(f"{result['auto_dir']}{shown}")
    return 0


COMMANDS = {
    "fit": _cmd_fit,
    "eval": _cmd_eval,
    "predict": _cmd_predict,
    "lr-find": _cmd_lr_find,
    "demo": _cmd_demo,
    "list": _cmd_list,
    "search": _cmd_search,
    "auto": _cmd_auto,
    "compare": _cmd_compare,
    "report": _cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by the console script)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that spin while waiting make two torch processes on few cores slow each
    # other down 5-75x (measured here: 2 cores); sleeping waits cost nothing measurable when the
    # machine is idle (Lite0 training step 0.457 s vs 0.454 s). Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Every torch.load in the process (graft's, and libraries' such as torchvision's hub
    # weights, which pass weights_only=False) reads tensors and plain data only: a pickle from
    # elsewhere cannot run code. torch reads this at each load. An explicit opt-out is respected.
    if "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ:
        os.environ.setdefault("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        # `graft fit c.yaml --quiet optim.lr=1e-3`: overrides may also follow an option.
        if args.command in {"fit", "lr-find", "compare", "search", "auto"}:
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
        return COMMANDS[args.command](args)
    except Interrupted as e:  # not an error: the run stopped as asked, with a checkpoint
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except GraftError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
