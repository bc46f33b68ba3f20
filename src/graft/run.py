"""``graft fit``: prepared run → run directory → training with checkpoints → evaluation → saved
model, results and report; and ``--resume``, which continues exactly where a run stopped.

What the run needs is built and checked first by :func:`graft.prepare.prepare` (every user
mistake surfaces there), so the run directory is only created for a run that can start.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as safetensors_load
from safetensors.torch import save as safetensors_save

from graft.artifact import save_model
from graft.atomic import atomic_write, atomic_write_text, remove_stale_temporaries, saving
from graft.checkpoint import (
    CHECKPOINT,
    config_hash,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from graft.config import (
    RunConfig,
    dump_config,
    load_config,
)
from graft.console import EpochProgress, RunLog
from graft.data.types import Examples
from graft.errors import DataError, Interrupted, TrainingDiverged, UsageError
from graft.metrics import classification_metrics, summary_line
from graft.prepare import Prepared, prepare
from graft.runtime import (
    StopRequest,
    deterministic_mode,
    environment,
    peak_rss_mb,
    precision,
    stop_on_signals,
)
from graft.train import (
    Hooks,
    TrainState,
    apply_phase,
    evaluate,
    train,
)

RESULTS = "results.json"
RUN_META = "run.json"
METRICS = "metrics.jsonl"  # one line per epoch
STEPS = "steps.jsonl"  # one line per optimizer step: its number and loss


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
        # Unfinished: no results yet (with or without a checkpoint: a run killed before its
        # first one starts over).
        if not (run_dir / RESULTS).is_file() and _run_meta(run_dir).get("config_hash") == digest:
            return run_dir
    raise DataError(
        f"{root}: no unfinished run with this config to resume",
        hint="start it without --resume, or give the run directory: --resume RUN_DIR",
    )


def _run_meta(run_dir: Path) -> dict[str, Any]:
    """The run's ``run.json`` (config hash, data fingerprint); empty if absent or unreadable."""
    try:
        meta = json.loads((run_dir / RUN_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


class _Recorder:
    """The hooks of a fit: progress, the run log, metrics.jsonl and steps.jsonl, best weights,
    checkpoints (at every epoch end, every ``train.checkpoint_every`` steps, every
    ``train.checkpoint_minutes``, and when a signal asks the run to stop)."""

    def __init__(
        self,
        run_dir: Path,
        prep: Prepared,
        log: RunLog,
        digests: tuple[str, str],
        quiet: bool,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.run_dir, self.prep, self.log = run_dir, prep, log
        self.digest, self.data_digest = digests
        self.on_epoch = on_epoch
        self.progress = EpochProgress(log.console, prep.config.train.progress and not quiet)
        self.best_path = run_dir / "best.safetensors"
        self.stop = StopRequest()  # replaced by fit with the one its signal handlers set
        self.last_save = time.monotonic()

    def hooks(self) -> Hooks:
        return Hooks(
            phase_start=self.phase_start,
            message=self.log,
            epoch_start=self.epoch_start,
            step=self.progress.step,
            step_end=self.step_end,
            epoch_end=self.epoch_end,
        )

    def phase_start(self, index: int, phase: Any, table: list[dict[str, Any]]) -> None:
        rows = [
            [r["group"], f"{r['params']:,}", r["state"], f"{r['lr']:.2e}" if r["lr"] else "-"]
            for r in table
        ]
        self.log.table(f"phase {index}: {phase.name}", ["group", "params", "state", "lr"], rows)

    def epoch_start(self, state: TrainState, n_batches: int) -> None:
        self.progress.start(f"epoch {state.epoch + 1}/{self.prep.plan.epochs}", n_batches)

    def step_end(self, state: TrainState, opt: Any, sched: Any, epoch_done: bool) -> None:
        """Log the step's loss; checkpoint when one is due (not at an epoch's last step: the
        epoch-end checkpoint follows) or when a signal asked to stop, and then stop."""
        path = self.run_dir / STEPS
        with saving(path, "step log"), path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state.step, "loss": state.losses[-1]}) + "\n")
        if self.stop.requested or (self._due(state.step) and not epoch_done):
            self.checkpoint(state, opt, sched)
        self._stop_if_asked(state)

    def _due(self, step: int) -> bool:
        every, minutes = (
            self.prep.config.train.checkpoint_every,
            self.prep.config.train.checkpoint_minutes,
        )
        if every is not None and step % every == 0:
            return True
        return minutes is not None and time.monotonic() - self.last_save >= 60 * minutes

    def checkpoint(self, state: TrainState, opt: Any, sched: Any) -> None:
        save_checkpoint(
            self.run_dir,
            model=self.prep.backbone.model,
            optimizer=opt,
            scheduler=sched,
            state=state.to_dict(),
            plan=self.prep.plan.to_dict(),
            config_digest=self.digest,
            data_digest=self.data_digest,
        )
        self.last_save = time.monotonic()

    def _stop_if_asked(self, state: TrainState) -> None:
        if not self.stop.requested:
            return
        self.progress.stop()
        where = f"step {state.step}, epoch {state.epoch + (1 if state.batch else 0)}"
        message = f"{self.stop.signal_name}: stopped at {where} with a checkpoint in {self.run_dir}"
        self.log(message)
        assert self.stop.signal_number is not None
        raise Interrupted(
            message,
            signal_number=self.stop.signal_number,
            hint=f"continue with `graft fit CONFIG --resume {self.run_dir}`",
        )

    def epoch_end(
        self, state: TrainState, record: dict[str, Any], is_best: bool, opt: Any, sched: Any
    ) -> None:
        self.progress.stop()
        model = self.prep.backbone.model
        metrics = self.run_dir / METRICS
        with saving(metrics, "metrics"), metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.prep.config.train.tensorboard:
            from graft.tensorboard import write_epoch

            write_epoch(self.run_dir, record)
        if is_best:
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            with saving(self.best_path, "best weights"):
                atomic_write(self.best_path, lambda fh: fh.write(safetensors_save(weights)))
        self.checkpoint(state, opt, sched)
        self.log(
            f"epoch {record['epoch']}/{self.prep.plan.epochs} [{record['phase']}] "
            f"loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.4f}  "
            f"val loss {record['val_loss']:.4f}  val acc {record['val_accuracy']:.4f}  "
            f"val F1 {record['val_macro_f1']:.4f}  {record['samples_per_s']:.1f} samples/s"
            + ("  *best*" if is_best else "")
        )
        if self.on_epoch is not None:  # after the checkpoint: a pruned trial stays resumable
            self.on_epoch(record)
        self._stop_if_asked(state)


def _write_run_meta(run_dir: Path, config: RunConfig, digests: tuple[str, str]) -> None:
    atomic_write_text(run_dir / "config.yaml", dump_config(config))
    meta = {"config_hash": digests[0], "data_fingerprint": digests[1]}
    atomic_write_text(run_dir / RUN_META, json.dumps(meta))


def _open_run_dir(config: RunConfig, digests: tuple[str, str]) -> Path:
    run_dir = _new_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    with saving(run_dir, "run directory"):
        _write_run_meta(run_dir, config, digests)
        (run_dir / METRICS).write_text("")
        (run_dir / STEPS).write_text("")
    return run_dir


def _rewrite_logs(run_dir: Path, state: TrainState) -> None:
    """On resume, make metrics.jsonl and steps.jsonl say what the checkpoint says: lines a
    killed run wrote after its last checkpoint are dropped (they will be written again)."""
    metrics = "".join(json.dumps(r) + "\n" for r in state.history)
    steps = "".join(
        json.dumps({"step": i + 1, "loss": loss}) + "\n" for i, loss in enumerate(state.losses)
    )
    with saving(run_dir, "run logs"):
        atomic_write_text(run_dir / METRICS, metrics)
        atomic_write_text(run_dir / STEPS, steps)


def _read_resume(run_dir: Path, digest: str, force: bool, log: RunLog) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None when the run was killed before its first one
    (it starts over in its directory). A different config is refused unless ``force``."""
    if (run_dir / RESULTS).is_file():
        raise DataError(
            f"{run_dir}: the run is finished (it has {RESULTS}); nothing to resume",
            hint="start a new run without --resume",
        )
    has_checkpoint, meta = (run_dir / CHECKPOINT).is_file(), _run_meta(run_dir)
    if not has_checkpoint and not meta:
        raise DataError(
            f"{run_dir / CHECKPOINT}: no checkpoint to resume from",
            hint="not a graft run directory; start the run without --resume",
        )
    checkpoint = load_checkpoint(run_dir) if has_checkpoint else None
    recorded = (checkpoint or meta).get("config_hash")
    if recorded != digest:
        if not force:
            raise UsageError(
                f"{run_dir}: the run was started with a different config",
                hint=f"compare with {run_dir / 'config.yaml'}; --force resumes anyway",
            )
        log(f"warning: resuming {run_dir} with a different config (--force)")
    return checkpoint


def _check_data(
    run_dir: Path, checkpoint: dict[str, Any] | None, fingerprint: str, force: bool, log: RunLog
) -> None:
    """Refuse to continue a run on data other than it started with, unless ``force``."""
    recorded = (checkpoint or {}).get("data_fingerprint") or _run_meta(run_dir).get(
        "data_fingerprint"
    )
    if recorded is None or recorded == fingerprint:
        return
    if not force:
        raise DataError(
            f"{run_dir}: the data differ from those the run started with "
            f"(fingerprint {fingerprint}, was {recorded}): a file named by data.* changed",
            hint="restore the original data, or resume anyway with --force",
        )
    log(f"warning: resuming {run_dir} on changed data (--force)")


def fit(
    config: RunConfig | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: bool | str | Path = False,
    force: bool = False,
    quiet: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Fine-tune as the config says; return the run directory and results.

    ``config`` is a :class:`RunConfig` or a YAML path (with dotted ``overrides``). ``resume``:
    ``True`` continues the newest unfinished run with the same config, a path continues that run;
    a different config or different data is refused unless ``force``.
    ``on_epoch(record)`` is called after each epoch's checkpoint with that epoch's metrics
    (``epoch``, ``val_accuracy``, ``val_loss``, ...); an exception it raises stops the run
    (hyperparameter search uses it to prune a trial).

    Raises :class:`~graft.errors.Interrupted` after SIGTERM or SIGINT (with a checkpoint),
    :class:`~graft.errors.TrainingDiverged` on a NaN/Inf loss (the last good checkpoint kept),
    :class:`~graft.errors.SaveError` when a file cannot be written.
    """
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    with deterministic_mode(config.train.deterministic):
        return _fit(config, resume, force, quiet, on_epoch)


def _fit(
    config: RunConfig,
    resume: bool | str | Path,
    force: bool,
    quiet: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> FitResult:
    log = RunLog(quiet=quiet)
    digest = config_hash(config.to_dict())
    checkpoint: dict[str, Any] | None = None
    run_dir: Path | None = None
    if resume:
        run_dir = Path(resume) if not isinstance(resume, bool) else find_resumable(config, digest)
        checkpoint = _read_resume(run_dir, digest, force, log)
    started = time.perf_counter()
    prep = prepare(config, log)
    fingerprint = data_fingerprint(prep.splits)
    digests = (digest, fingerprint)
    if run_dir is not None:
        _check_data(run_dir, checkpoint, fingerprint, force, log)

    # Everything the user could get wrong has been checked: now the run directory may exist.
    fresh = run_dir is None
    run_dir = run_dir or _open_run_dir(config, digests)
    log.attach(run_dir / "log.txt")
    log(f"run directory: {run_dir}")
    log(
        f"device {prep.device}, {prep.threads} threads, {precision(prep.device)}"
        + (", channels_last" if prep.channels_last else "")
        + ("" if not config.train.deterministic else ", deterministic algorithms")
        + f"; plan {prep.plan.strategy}: "
        + ", ".join(f"{p.name} ({p.epochs} ep)" for p in prep.plan.phases)
    )
    if config.train.feature_cache and prep.loaders.random:
        log("feature cache off: training batches are augmented at random")

    model = prep.backbone.model
    state = _resume_state(run_dir, checkpoint, model, log) if not fresh else TrainState()
    if not fresh and force:
        with saving(run_dir, "run record"):
            _write_run_meta(run_dir, config, digests)

    recorder = _Recorder(run_dir, prep, log, digests, quiet, on_epoch)
    try:
        with stop_on_signals() as recorder.stop:
            state = train(
                model,
                prep.backbone.groups,
                prep.plan,
                prep.train_loader,
                prep.val_loader,
                prep.labels,
                prep.settings,
                recorder.hooks(),
                state,
                resume=checkpoint,
                objective=prep.objective,
            )
    except TrainingDiverged as e:
        recorder.progress.stop()
        kept = _last_checkpoint(run_dir)
        log(f"error: {e.message}; {kept}")
        raise TrainingDiverged(f"{e.message}; {kept}", hint=e.hint) from None
    except BaseException:
        recorder.progress.stop()
        if fresh and not (run_dir / CHECKPOINT).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth resuming: leave no trace
        raise
    return _finish(prep, recorder, state, digests, started)


def _last_checkpoint(run_dir: Path) -> str:
    """Where the last good checkpoint is, in words (it is never overwritten by a bad one)."""
    if not (run_dir / CHECKPOINT).is_file():
        return "no checkpoint was written before"
    step = load_checkpoint(run_dir)["state"]["step"]
    return f"the last good checkpoint (step {step}) is kept in {run_dir}"


def _resume_state(
    run_dir: Path, checkpoint: dict[str, Any] | None, model: torch.nn.Module, log: RunLog
) -> TrainState:
    """Load the checkpoint's weights and loop state (RNG states are restored by the loop);
    clear what a killed run left half-done."""
    for stale in remove_stale_temporaries(run_dir / CHECKPOINT):
        log(f"removed {stale.name}: a checkpoint write that was cut off")
    state = TrainState()
    if checkpoint is None:
        log("no checkpoint yet: the run starts over")
    else:
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as e:
            raise DataError(
                f"{run_dir / CHECKPOINT}: the weights do not fit this model ({e})"
            ) from None
        state = TrainState(**checkpoint["state"])
        log(
            f"resuming at epoch {state.epoch + 1}, batch {state.batch} "
            f"(phase {state.phase}, step {state.step})"
        )
    _rewrite_logs(run_dir, state)
    return state


def _finish(
    prep: Prepared,
    recorder: _Recorder,
    state: TrainState,
    digests: tuple[str, str],
    started: float,
) -> FitResult:
    """Evaluate the saved epoch's weights, save the model, results and report."""
    config, run_dir, log = prep.config, recorder.run_dir, recorder.log
    model = prep.backbone.model
    if config.train.restore_best:  # evaluate and save the best epoch's weights
        model.load_state_dict(safetensors_load(str(recorder.best_path)))
    results = _final_results(prep)
    results.update(
        run=run_dir.name,
        backbone=config.backbone.name,
        strategy=prep.plan.strategy,
        plan=prep.plan.to_dict(),
        best_epoch=state.best_epoch,
        saved_epoch=state.best_epoch if config.train.restore_best else state.epoch,
        wall_time_s=time.perf_counter() - started,
        trainable_params=prep.trainable,
        total_params=sum(p.numel() for p in model.parameters()),
        peak_rss_mb=peak_rss_mb(),
        environment=environment(),
        date=time.strftime("%Y-%m-%d %H:%M"),
        config_hash=digests[0],
        data_fingerprint=digests[1],
    )
    model.to("cpu").to(memory_format=torch.contiguous_format)
    with saving(run_dir / "model", "model"):
        save_model(
            run_dir / "model",
            prep.backbone,
            prep.splits.label_map,
            plan=prep.plan.to_dict(),
            metrics={k: results[k] for k in ("validation", "test", "extra")},
            provenance={"config_hash": digests[0], "data_fingerprint": digests[1]},
        )
    with saving(run_dir / RESULTS, "results"):
        atomic_write_text(run_dir / RESULTS, json.dumps(results, indent=1))
    recorder.best_path.unlink(missing_ok=True)
    if not config.train.keep_checkpoint:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    from graft.report import write_run_report

    report = write_run_report(run_dir)
    _summary(log, results, run_dir, report)
    return FitResult(run_dir, results)


def find_lr(
    config: RunConfig, *, steps: int = 100, plot: Path | None = None, quiet: bool = False
) -> dict[str, Any]:
    """``graft lr-find``: an exponential LR sweep over the first phase of the plan (Smith 2017),
    on a copy of nothing: the model and optimizer are restored afterwards. Writes no run."""
    from graft.cache import cached_loaders, head_only
    from graft.lr_find import lr_find, plot_lr_find
    from graft.train import phase_optimizer, set_train_mode

    log = RunLog(quiet=quiet)
    prep = prepare(config, log)
    phase = prep.plan.phases[0]
    apply_phase(prep.backbone.groups, phase)
    model: torch.nn.Module = prep.backbone.model
    loader = prep.train_loader
    if prep.settings.feature_cache and head_only(phase):  # a linear probe sweeps in seconds
        loader = cached_loaders(model, loader, prep.val_loader, prep.device).train
        model = prep.backbone.model.head
    frozen_bn = prep.settings.frozen_bn_updates
    result = lr_find(
        model,
        loader,
        prep.objective.loss,
        lambda: phase_optimizer(prep.backbone.groups, phase, prep.settings),
        num_steps=steps,
        train_mode=lambda m: set_train_mode(m, frozen_bn),
    )
    out = result.to_dict()
    if plot is not None:
        out["plot"] = str(plot_lr_find(result, plot))
    suggestion = f"{result.suggestion:.2e}" if result.suggestion else "none (sweep too short)"
    log(
        f"lr-find over phase {phase.name!r} ({len(result.lrs)} steps): "
        f"suggested optim.lr {suggestion}"
    )
    return out


def _final_results(prep: Prepared) -> dict[str, Any]:
    model, splits = prep.backbone.model, prep.splits

    def measure(ex: Examples) -> dict[str, Any]:
        out = evaluate(model, prep.eval_loader(ex), prep.device)
        return classification_metrics(
            out["targets"], out["logits"].argmax(1).numpy(), prep.labels, loss=out["loss"]
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
