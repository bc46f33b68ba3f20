"""``graft fit``: prepared run → run directory → training with checkpoints → evaluation → saved
model, results and report; and ``--resume``, which continues exactly where a run stopped.

What the run needs is built and checked first by :func:`graft.prepare.prepare` (every user
mistake surfaces there), so the run directory is only created for a run that can start. The
loop's hooks are :class:`graft.recorder.Recorder`; what a resume checks is :mod:`graft.resume`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file as safetensors_load

from graft.artifact import save_model
from graft.atomic import atomic_write_text, check_writable_dir, saving
from graft.checkpoint import config_hash, data_fingerprint
from graft.config import RunConfig, dump_config
from graft.console import RunLog
from graft.data.memory import supplied
from graft.data.types import Examples
from graft.distributed import (
    PeerLost,
    active,
    check_same,
    finish_together,
    from_main,
    ranks_from_environment,
    start,
    stop,
)
from graft.errors import DataError, TrainingDiverged
from graft.features.body import compute_features, head_only
from graft.inmemory import config_with_data, convert, given_data
from graft.metrics import summary_line
from graft.notebook import InlineReport, fit_html, history_frame
from graft.pipeline import same_batches
from graft.prepare import Prepared, prepare
from graft.recorder import Recorder
from graft.resume import (
    check_config,
    check_data,
    finish_pending,
    last_checkpoint,
    read_resume,
    resume_state,
)
from graft.rundir import (
    BEST_WEIGHTS,
    CHECKPOINT,
    CONFIG,
    LOG,
    METRICS,
    MODEL_DIR,
    REPORT,
    RESULTS,
    RUN_META,
    STEPS,
    find_resumable,
    new_run_dir,
    read_results,
    read_run_meta,
)
from graft.runtime import (
    deterministic_mode,
    environment,
    peak_rss_mb,
    select_device,
    stop_on_signals,
)
from graft.safe_load import weights_only_loading
from graft.tasks import MultiLabel
from graft.tracking import tracked, tracker
from graft.train import TrainState, evaluate, train


@dataclass
class FitResult:
    """What :func:`fit` returns: where the run is, and its measured results."""

    run_dir: Path
    results: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.run_dir / MODEL_DIR

    @property
    def test_accuracy(self) -> float | None:
        test = self.results.get("test")
        return None if test is None or "accuracy" not in test else float(test["accuracy"])

    @property
    def history(self) -> Any:
        """The per-epoch metrics as a pandas DataFrame, one row per epoch."""
        return history_frame(self.run_dir)

    def report(self) -> InlineReport:
        """The run's HTML report, shown inline in a notebook."""
        return InlineReport(self.run_dir / REPORT)

    def _repr_html_(self) -> str:  # Jupyter shows a result as this compact summary
        return fit_html(self.run_dir, self.results)


def _write_run_meta(run_dir: Path, config: RunConfig, digests: tuple[str, str]) -> None:
    atomic_write_text(run_dir / CONFIG, dump_config(config))
    meta = {"config_hash": digests[0], "data_fingerprint": digests[1]}
    atomic_write_text(run_dir / RUN_META, json.dumps(meta))


def _open_run_dir(config: RunConfig, digests: tuple[str, str]) -> Path:
    run_dir = new_run_dir(
        Path(config.output.dir), config.output.name, config.backbone.name, config.strategy.name
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    with saving(run_dir, "run directory"):
        _write_run_meta(run_dir, config, digests)
        (run_dir / METRICS).write_text("")
        (run_dir / STEPS).write_text("")
    return run_dir


def fit(
    config: RunConfig | Mapping[str, Any] | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: bool | str | Path = False,
    force: bool = False,
    quiet: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    extra_eval: Mapping[str, Any] | None = None,
    target_unlabeled: Any = None,
    target_labeled: Any = None,
) -> FitResult:
    """Fine-tune as the config says; return the run directory and results.

    ``config`` is a :class:`RunConfig`, a mapping of config sections, or a YAML path; dotted
    ``overrides`` apply to any of them. ``train``, ``validation``, ``test``, ``extra_eval``
    (a mapping of names to sets) and the ``target_*`` sets take data held in memory in place
    of the config's sources: a pandas DataFrame, ``(inputs, labels)`` arrays or lists, a list of
    ``(input, label)`` pairs, a Hugging Face ``Dataset`` (a ``DatasetDict`` as ``train``: its
    splits by name) or a torch ``Dataset`` (:mod:`graft.inmemory`). ``resume``:
    ``True`` continues the newest unfinished run with the same config, a path continues that run;
    a different config or different data is refused unless ``force``.
    ``on_epoch(record)`` is called after each epoch's checkpoint with that epoch's metrics
    (``epoch``, ``val_accuracy``, ``val_loss``, ...); an exception it raises stops the run
    (hyperparameter search uses it to prune a trial).

    Raises :class:`~graft.errors.Interrupted` after SIGTERM or SIGINT (with a checkpoint),
    :class:`~graft.errors.TrainingDiverged` on a NaN/Inf loss (the last good checkpoint kept),
    :class:`~graft.errors.SaveError` when a file cannot be written.
    """
    given = given_data(
        extra_eval,
        train=train,
        validation=validation,
        test=test,
        target_unlabeled=target_unlabeled,
        target_labeled=target_labeled,
    )
    config = config_with_data(config, overrides, given)
    in_memory = supplied(convert(config, given))  # converted once, checked before any file
    with in_memory, weights_only_loading(), deterministic_mode(config.train.deterministic):
        ranks = ranks_from_environment()
        name = config.output.name or f"{config.backbone.name}-{config.strategy.name}"
        track = tracker(config.output.mlflow, config.to_dict(), name)  # None when off
        if ranks is None:
            return tracked(track, lambda then: _fit(config, resume, force, quiet, then), on_epoch)
        # Started by torchrun (graft fit --nproc N): one rank of a data-parallel run.
        start(ranks, select_device(config.hardware.device))
        try:
            quiet = quiet or not ranks.main
            result = tracked(
                track if ranks.main else None,
                lambda then: _fit(config, resume, force, quiet, then),
                on_epoch,
            )
            finish_together()  # rank 0 writes for longer: the others wait, then all leave
            return result
        except dist.DistError as e:
            raise PeerLost(
                f"rank {ranks.rank}: another rank of this job stopped or cannot be reached "
                f"({str(e).strip().splitlines()[0][:200]})",
                hint="the job's last checkpoint is in its run directory: continue with "
                "--resume RUN_DIR",
            ) from None
        finally:
            stop()


def _fit(
    config: RunConfig,
    resume: bool | str | Path,
    force: bool,
    quiet: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> FitResult:
    log = RunLog(quiet=quiet)
    ranks = active()  # distributed: rank 0 alone reads and writes the run directory
    main = ranks is None or ranks.main
    digest = config_hash(config.to_dict())
    check_same(digest, "config")
    if main:
        check_writable_dir(Path(config.output.dir), "output.dir")  # before the data is read
    run_dir: Path | None = None
    if resume:
        run_dir, pending, checkpoint = from_main(
            lambda: _read_resume(config, resume, digest, force, log)
        )
        if pending:
            # Killed after results.json: only the clean-up and the report are left.
            log.attach(run_dir / LOG)
            log(f"resuming {run_dir}: the run is finished but for its clean-up and report")
            results = read_results(run_dir / RESULTS)
            if not main:
                return FitResult(run_dir, results)
            return _close(run_dir, results, config.checkpoint.keep, log)
    else:
        checkpoint = None
    started = time.perf_counter()
    prep = prepare(config, log)
    fingerprint = data_fingerprint(prep.splits, prep.unlabeled)
    check_same(fingerprint, "data fingerprint")
    digests = (digest, fingerprint)
    if run_dir is not None and main:
        check_data(run_dir, checkpoint, fingerprint, force, log)

    # Everything the user could get wrong has been checked: now the run directory may exist.
    fresh = run_dir is None
    run_dir = run_dir or from_main(lambda: _open_run_dir(config, digests))
    if main:
        log.attach(run_dir / LOG)
    log(f"run directory: {run_dir}")
    if ranks is not None:
        log(f"data parallel: {ranks.world} processes, global batch {config.train.batch_size}")
    log(
        f"device {prep.device}, {prep.threads} threads, "
        + ("bf16 autocast" if prep.settings.precision == "bf16" else "fp32")
        + (", channels_last" if prep.channels_last else "")
        + ("" if not config.train.deterministic else ", deterministic algorithms")
        + f"; plan {prep.plan.strategy}: "
        + ", ".join(f"{p.name} ({p.epochs} ep)" for p in prep.plan.phases)
    )
    if config.train.feature_cache and prep.loaders.random:
        log("feature cache off: training batches are augmented at random")
    elif config.train.feature_cache and prep.objective.distill is not None:
        log("feature cache off: distillation needs each batch's teacher logits")

    model = prep.backbone.model
    state = resume_state(run_dir, checkpoint, model, log, files=main) if not fresh else TrainState()
    adapt = prep.objective.adapt
    if adapt is not None and checkpoint is not None:  # DANN's classifier, the λ schedule
        adapt.load_state_dict(checkpoint.get("extra", {}).get("adapt", {}), state.step)
    if not fresh and force and main:
        with saving(run_dir, "run record"):
            _write_run_meta(run_dir, config, digests)

    recorder = Recorder(run_dir, prep, log, digests, quiet, on_epoch)
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
                recorder,
                state,
                resume=checkpoint,
                objective=prep.objective,
            )
    except TrainingDiverged as e:
        recorder.progress.stop()
        if not main:
            raise
        if not (run_dir / CHECKPOINT).exists():  # nothing to resume from: leave nothing behind
            if fresh:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise TrainingDiverged(
                f"{e.message}; it diverged before its first checkpoint, so nothing was kept",
                hint="lower optim.lr, set train.max_grad_norm, or check the data for extreme "
                "values",
            ) from None
        kept = last_checkpoint(run_dir)
        log.to_file(f"error: {e.message}; {kept}")  # the caller reports it (the CLI prints it)
        raise TrainingDiverged(f"{e.message}; {kept}", hint=e.hint) from None
    except BaseException:
        recorder.progress.stop()
        if fresh and main and not (run_dir / CHECKPOINT).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth resuming: leave no trace
        raise
    return _finish(prep, recorder, state, digests, started)


def _read_resume(
    config: RunConfig, resume: bool | str | Path, digest: str, force: bool, log: RunLog
) -> tuple[Path, bool, dict[str, Any] | None]:
    """The run to continue, whether only its clean-up is left (killed after results.json), and
    the checkpoint to continue from."""
    run_dir = (
        Path(resume)
        if not isinstance(resume, bool)
        else find_resumable(Path(config.output.dir), config.output.name, digest)
    )
    if finish_pending(run_dir, config.checkpoint.keep):
        check_config(run_dir, read_run_meta(run_dir).get("config_hash"), digest, force, log)
        return run_dir, True, None
    return run_dir, False, read_resume(run_dir, digest, force, log)


def _finish(
    prep: Prepared,
    recorder: Recorder,
    state: TrainState,
    digests: tuple[str, str],
    started: float,
) -> FitResult:
    """Evaluate the saved epoch's weights, save the model, results and report."""
    config, run_dir, log = prep.config, recorder.run_dir, recorder.log
    model = prep.backbone.model
    if config.train.restore_best:  # evaluate and save the best epoch's weights
        model.load_state_dict(from_main(lambda: _best_weights(recorder.best_path)))
    results = _final_results(prep)  # distributed: every rank evaluates its part
    ranks = active()
    if ranks is not None and not ranks.main:
        return FitResult(run_dir, results)
    results.update(
        run=run_dir.name,
        task=config.task,
        backbone=config.backbone.name,
        strategy=prep.plan.strategy,
        plan=prep.plan.to_dict(),
        best_epoch=state.best_epoch,
        saved_epoch=state.best_epoch if config.train.restore_best else state.epoch,
        wall_time_s=time.perf_counter() - started,
        trainable_params=prep.trainable,
        total_params=sum(p.numel() for p in model.parameters()),
        peak_rss_mb=peak_rss_mb(),
        precision=prep.settings.precision,
        environment=environment(),
        date=time.strftime("%Y-%m-%d %H:%M"),
        config_hash=digests[0],
        data_fingerprint=digests[1],
        # Without the unlabeled sets: what a report compares (a source-only run beside runs
        # adapted to an unlabeled target learned from the same labeled examples).
        labeled_fingerprint=data_fingerprint(prep.splits) if prep.unlabeled else digests[1],
    )
    model.to("cpu").to(memory_format=torch.contiguous_format)
    with saving(run_dir / MODEL_DIR, "model"):
        save_model(
            run_dir / MODEL_DIR,
            prep.backbone,
            prep.splits.label_map,
            plan=prep.plan.to_dict(),
            metrics={k: results[k] for k in ("validation", "test", "extra")},
            provenance={"config_hash": digests[0], "data_fingerprint": digests[1]},
            task=prep.task,
        )
    # results.json is the commit point: from here on, what is left (clean-up, report) is
    # redone by --resume if the process dies.
    with saving(run_dir / RESULTS, "results"):
        atomic_write_text(run_dir / RESULTS, json.dumps(results, indent=1))
    return _close(run_dir, results, config.checkpoint.keep, log)


def _close(run_dir: Path, results: dict[str, Any], keep_checkpoint: bool, log: RunLog) -> FitResult:
    """What follows results.json: drop the best-epoch weights (and the checkpoint, unless kept),
    write the report, print the summary. Safe to do again after a kill."""
    (run_dir / BEST_WEIGHTS).unlink(missing_ok=True)
    if not keep_checkpoint:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    from graft.reports.run import write_run_report

    report = write_run_report(run_dir)
    _summary(log, results, run_dir, report)
    return FitResult(run_dir, results)


def _best_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    try:
        return safetensors_load(str(path))
    except (SafetensorError, OSError) as e:
        raise DataError(
            f"{path}: the best epoch's weights are unreadable ({e})",
            hint="start the run again, or resume with train.restore_best=false to save the "
            "last epoch's weights instead",
        ) from None


def _final_results(prep: Prepared) -> dict[str, Any]:
    model, splits, settings = prep.backbone.model, prep.splits, prep.settings
    # A body that no phase trained (a linear probe) gives features that the store may already
    # hold (every seed's probe has the same pretrained body): evaluate the head on them. With
    # or without a store, so that the two give the same results.
    store = settings.feature_store
    frozen_body = settings.feature_cache and not settings.frozen_bn_updates
    frozen_body = frozen_body and all(head_only(p) for p in prep.plan.phases)

    def outputs(ex: Examples) -> dict[str, Any]:
        loader = prep.eval_loader(ex)
        if frozen_body:
            features = compute_features(model, loader, prep.device, settings.precision, store)
            head_loader = same_batches(features, loader)
            return evaluate(model.head, head_loader, prep.device, settings.precision, prep.task)
        return evaluate(model, loader, prep.device, settings.precision, prep.task)

    validation = outputs(splits.validation)
    if isinstance(prep.task, MultiLabel):  # each label's threshold: from validation, only
        prep.settings.task = prep.task.fit_thresholds(validation["logits"], validation["targets"])

    def measure(ex: Examples) -> dict[str, Any]:
        out = validation if ex is splits.validation else outputs(ex)
        return prep.task.metrics(out["logits"], out["targets"], out["loss"])

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
    log(f"model: {run_dir / MODEL_DIR}   report: {report}")
