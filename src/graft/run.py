"""``graft fit``: data → backbone → plan → training → evaluation → saved model and report.

This is the one place that reads the config; every component below it is called with plain
arguments. Everything that can fail on user input (config, data, backbone, plan) is checked
before the run directory is created, so a mistake leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as safetensors_load
from safetensors.torch import save as safetensors_save

from graft.artifact import save_model
from graft.checkpoint import (
    CHECKPOINT,
    atomic_write,
    atomic_write_text,
    config_hash,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from graft.config import DataConfig, RunConfig, SourceConfig, dump_config, load_config
from graft.console import EpochProgress, RunLog
from graft.data import Splits, get_dataset, load_examples, make_splits
from graft.data.types import Examples
from graft.errors import DataError, UsageError
from graft.metrics import classification_metrics, summary_line
from graft.models import Backbone, build_backbone
from graft.pipeline import Loaders
from graft.runtime import environment, peak_rss_mb, select_device, set_threads
from graft.strategies import build_plan
from graft.strategies.plan import Plan
from graft.train import Hooks, LoopSettings, TrainState, apply_phase, evaluate, train

RESULTS = "results.json"


@dataclass
class FitResult:
    """What :func:`fit` returns: where the run is, and its measured results."""

    run_dir: Path
    results: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    @property
    def test_accuracy(self) -> float | None:
        test = self.results.get("test")
        return None if test is None else float(test["accuracy"])


def _examples(source: SourceConfig) -> Examples:
    return load_examples(**source.model_dump())


def load_splits(data: DataConfig) -> Splits:
    """Read every set the config names and split/subsample them (seeded, stratified)."""
    train = _examples(data.train)
    validation = _examples(data.validation) if data.validation else None
    test = _examples(data.test) if data.test else None
    label_order = None
    if data.train.dataset is not None:
        info = get_dataset(data.train.dataset)
        label_order = info.label_order
        # A named set's own test split is used when the config names none.
        if test is None and "test" in info.splits and data.train.split in (None, "train"):
            test = load_examples(dataset=data.train.dataset, split="test")
    extra = {name: _examples(src) for name, src in data.extra_eval.items()}
    return make_splits(
        train,
        validation,
        test,
        extra,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        train_size=data.train_size,
        val_size=data.val_size,
        test_size=data.test_size,
        extra_size=data.extra_size,
        seed=data.seed,
        label_order=label_order,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _trainable_in_plan(backbone: Backbone, plan: Plan) -> int:
    """Parameters that train in at least one phase of the plan."""
    ids: set[int] = set()
    for phase in plan.phases:
        apply_phase(backbone.groups, phase)
        ids |= {id(p) for p in backbone.model.parameters() if p.requires_grad}
    return sum(p.numel() for p in backbone.model.parameters() if id(p) in ids)


def _new_run_dir(config: RunConfig) -> Path:
    root = Path(config.output.dir)
    if config.output.name:
        run_dir = root / config.output.name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(
                f"{run_dir}: run directory already exists",
                hint="use --resume to continue it, or choose another output.name",
            )
        return run_dir
    backbone = config.backbone.name.replace("/", "_").replace(":", "_")
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}-{config.strategy.name}"
    run_dir, n = root / stem, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{stem}-{n}"
    return run_dir


def find_resumable(config: RunConfig, digest: str) -> Path:
    """The newest unfinished run under ``output.dir`` (or ``output.name``) with this config."""
    root = Path(config.output.dir)
    candidates = (
        [root / config.output.name]
        if config.output.name
        else sorted(
            (p for p in root.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
    )
    for run_dir in candidates:
        meta = run_dir / "run.json"
        unfinished = (run_dir / CHECKPOINT).is_file() and not (run_dir / RESULTS).is_file()
        if unfinished and meta.is_file() and json.loads(meta.read_text())["config_hash"] == digest:
            return run_dir
    raise DataError(
        f"{root}: no unfinished run with this config to resume",
        hint="start it without --resume, or give the run directory: --resume RUN_DIR",
    )


def _check_modality(backbone: Backbone, splits: Splits, name: str) -> None:
    if backbone.modality != splits.train.modality:
        raise UsageError(
            f"backbone.name: {name} takes {backbone.modality} input, "
            f"but data.train ({splits.train.origin}) holds {splits.train.modality}"
        )


def fit(
    config: RunConfig | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: bool | str | Path = False,
    quiet: bool = False,
) -> FitResult:
    """Fine-tune as the config says; return the run directory and results.

    ``config`` is a :class:`RunConfig` or a YAML path (with dotted ``overrides``). ``resume``:
    ``True`` continues the newest unfinished run with the same config, a path continues that run.
    """
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    log = RunLog(quiet=quiet)
    digest = config_hash(config.to_dict())
    checkpoint: dict[str, Any] | None = None
    run_dir: Path | None = None
    if resume:
        run_dir = Path(resume) if not isinstance(resume, bool) else find_resumable(config, digest)
        checkpoint = load_checkpoint(run_dir)
        if checkpoint["config_hash"] != digest:
            raise UsageError(
                f"{run_dir}: the run was started with a different config",
                hint=f"compare with {run_dir / 'config.yaml'}",
            )

    threads = set_threads(config.train.threads)
    device = select_device(config.train.device)
    seed_everything(config.train.seed)
    started = time.perf_counter()

    splits = load_splits(config.data)
    log(
        f"data: train {len(splits.train)}, validation {len(splits.validation)}, "
        f"test {len(splits.test) if splits.test else 0}"
        + "".join(f", {k} {len(v)}" for k, v in splits.extra.items())
        + f"; {len(splits.label_map)} classes"
    )
    backbone = build_backbone(
        config.backbone.name,
        num_classes=len(splits.label_map),
        source=config.backbone.source,
        pretrained=config.backbone.pretrained,
        head_dropout=config.backbone.head_dropout,
        pooling=config.backbone.pooling,
        image_size=config.data.image_size,
        max_length=config.data.max_length,
    )
    _check_modality(backbone, splits, config.backbone.name)
    plan = build_plan(
        config.strategy.name,
        config.strategy.params(),
        groups=backbone.group_names(),
        epochs=config.train.epochs,
    )
    trainable = _trainable_in_plan(backbone, plan)
    channels_last = (
        backbone.is_cnn if config.train.channels_last is None else config.train.channels_last
    )
    model = backbone.model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    labels = list(splits.label_map.names)
    loaders = Loaders(
        backbone.preprocess,
        backbone.tokenizer,
        channels_last,
        config.train.num_workers,
        config.train.seed,
    )
    encode = splits.label_map.encode
    eval_bs = config.train.eval_batch_size or 2 * config.train.batch_size
    train_loader = loaders.loader(
        splits.train,
        encode(splits.train.labels, splits.train.origin),
        config.train.batch_size,
        shuffle=True,
        by_length=True,
    )

    def eval_loader(ex: Examples) -> Any:
        return loaders.loader(
            ex, encode(ex.labels, ex.origin), eval_bs, shuffle=False, by_length=True
        )

    val_loader = eval_loader(splits.validation)

    # Everything the user could get wrong has been checked: now the run directory may exist.
    fresh = run_dir is None
    if run_dir is None:
        run_dir = _new_run_dir(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
        atomic_write_text(run_dir / "run.json", json.dumps({"config_hash": digest}))
        (run_dir / "metrics.jsonl").write_text("")
    log.attach(run_dir / "log.txt")
    log(f"run directory: {run_dir}")
    log(
        f"device {device}, {threads} threads, fp32"
        + (", channels_last" if channels_last else "")
        + f"; plan {plan.strategy}: "
        + ", ".join(f"{p.name} ({p.epochs} ep)" for p in plan.phases)
    )

    state = TrainState()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        state = TrainState(**checkpoint["state"])
        restore_rng_states(checkpoint["rng"])
        log(f"resuming at epoch {state.epoch + 1} (phase {state.phase}, step {state.step})")

    progress = EpochProgress(log.console, config.train.progress and not quiet)
    best_path = run_dir / "best.safetensors"

    def phase_start(index: int, phase: Any, table: list[dict[str, Any]]) -> None:
        rows = [
            [r["group"], f"{r['params']:,}", r["state"], f"{r['lr']:.2e}" if r["lr"] else "-"]
            for r in table
        ]
        log.table(f"phase {index}: {phase.name}", ["group", "params", "state", "lr"], rows)

    def epoch_start(st: TrainState, n_batches: int) -> None:
        progress.start(f"epoch {st.epoch + 1}/{plan.epochs}", n_batches)

    def epoch_end(
        st: TrainState, record: dict[str, Any], is_best: bool, opt: Any, sched: Any
    ) -> None:
        progress.stop()
        with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if is_best:
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            atomic_write(best_path, lambda fh: fh.write(safetensors_save(weights)))
        save_checkpoint(
            run_dir,
            model=model,
            optimizer=opt,
            scheduler=sched,
            state=st.to_dict(),
            plan=plan.to_dict(),
            config_digest=digest,
        )
        log(
            f"epoch {record['epoch']}/{plan.epochs} [{record['phase']}] "
            f"loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.4f}  "
            f"val loss {record['val_loss']:.4f}  val acc {record['val_accuracy']:.4f}  "
            f"val F1 {record['val_macro_f1']:.4f}  {record['samples_per_s']:.1f} samples/s"
            + ("  *best*" if is_best else "")
        )

    settings = LoopSettings(
        optimizer=config.optim.name,
        lr=config.optim.lr,
        weight_decay=config.optim.weight_decay,
        momentum=config.optim.momentum,
        schedule=config.schedule.name,
        warmup_ratio=config.schedule.warmup_ratio,
        grad_accum=config.train.grad_accum,
        max_grad_norm=config.train.max_grad_norm,
        metric=config.train.metric,
        patience=config.train.early_stopping_patience,
        device=device,
    )
    hooks = Hooks(
        phase_start=phase_start, epoch_start=epoch_start, step=progress.step, epoch_end=epoch_end
    )
    try:
        state = train(
            model,
            backbone.groups,
            plan,
            train_loader,
            val_loader,
            labels,
            settings,
            hooks,
            state,
            resume=checkpoint,
        )
    except BaseException:
        progress.stop()
        if fresh and not (run_dir / CHECKPOINT).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth resuming: leave no trace
        raise

    # Evaluate the best epoch's weights, then save them as the model.
    model.load_state_dict(safetensors_load(str(best_path)))
    results = _final_results(model, splits, labels, eval_loader, device)
    results.update(
        run=run_dir.name,
        backbone=config.backbone.name,
        strategy=plan.strategy,
        plan=plan.to_dict(),
        best_epoch=state.best_epoch,
        wall_time_s=time.perf_counter() - started,
        trainable_params=trainable,
        total_params=sum(p.numel() for p in model.parameters()),
        peak_rss_mb=peak_rss_mb(),
        environment=environment(),
        date=time.strftime("%Y-%m-%d %H:%M"),
        config_hash=digest,
    )
    model.to("cpu").to(memory_format=torch.contiguous_format)
    save_model(
        run_dir / "model",
        backbone,
        splits.label_map,
        plan=plan.to_dict(),
        metrics={k: results[k] for k in ("validation", "test", "extra")},
    )
    atomic_write_text(run_dir / RESULTS, json.dumps(results, indent=1))
    best_path.unlink(missing_ok=True)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    from graft.report import write_run_report

    report = write_run_report(run_dir)
    _summary(log, results, run_dir, report)
    return FitResult(run_dir, results)


def _final_results(
    model: torch.nn.Module,
    splits: Splits,
    labels: list[str],
    eval_loader: Any,
    device: torch.device,
) -> dict[str, Any]:
    def measure(ex: Examples) -> dict[str, Any]:
        out = evaluate(model, eval_loader(ex), device)
        return classification_metrics(
            out["targets"], out["logits"].argmax(1).numpy(), labels, loss=out["loss"]
        )

    return {
        "validation": measure(splits.validation),
        "test": measure(splits.test) if splits.test is not None else None,
        "extra": {name: measure(ex) for name, ex in splits.extra.items()},
    }


def _summary(log: RunLog, results: dict[str, Any], run_dir: Path, report: Path) -> None:
    rows = [["validation", summary_line(results["validation"])]]
    if results["test"] is not None:
        rows.append(["test", summary_line(results["test"])])
    rows += [[f"{k} (extra)", summary_line(v)] for k, v in results["extra"].items()]
    log.table(
        f"{results['backbone']} · {results['strategy']} · best epoch {results['best_epoch']}",
        ["set", "result"],
        rows,
    )
    log(
        f"wall time {results['wall_time_s']:.1f}s, peak memory {results['peak_rss_mb']:.0f} MiB, "
        f"trainable {results['trainable_params']:,} of {results['total_params']:,} parameters"
    )
    log(f"model: {run_dir / 'model'}   report: {report}")
