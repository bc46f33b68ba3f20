"""The hooks of a ``graft fit``: what happens around the loop's steps and epochs.

Progress on the terminal, the run log, ``metrics.jsonl`` and ``steps.jsonl``, the best epoch's
weights, TensorBoard events, and checkpoints (at every epoch end, every
``checkpoint.every`` steps, every ``checkpoint.minutes``, and when a signal asks the run to
stop). :class:`Recorder` implements the loop's :class:`~graft.train.Hooks` protocol.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save as safetensors_save

from graft.atomic import atomic_write, saving
from graft.checkpoint import save_checkpoint
from graft.console import EpochProgress, RunLog
from graft.distributed import active, any_rank
from graft.errors import Interrupted
from graft.features.body import head_only
from graft.prepare import Prepared
from graft.rundir import BEST_WEIGHTS, METRICS, PROBE_HEAD, STEPS
from graft.runtime import StopRequest
from graft.strategies.plan import Phase
from graft.train import TrainState


class Recorder:
    """The hooks of a fit (:class:`~graft.train.LoopHooks`): progress, the run log,
    metrics.jsonl and steps.jsonl, best weights, checkpoints."""

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
        self.progress = EpochProgress(log.console, prep.config.output.progress and not quiet)
        self.best_path = run_dir / BEST_WEIGHTS
        self.stop = StopRequest()  # replaced by fit with the one its signal handlers set
        self.last_save = time.monotonic()
        ranks = active()
        # Distributed: every rank runs the hooks (they agree on when to stop); rank 0 writes.
        self.writes = ranks is None or ranks.main

    def message(self, text: str) -> None:
        self.log(text)

    def step(self, batch_index: int, loss: float, batch_size: int) -> None:
        self.progress.step(batch_index, loss, batch_size)

    def phase_start(self, index: int, phase: Phase, table: list[dict[str, Any]]) -> None:
        self.log.phase_table(index, phase.name, table)

    def epoch_start(self, state: TrainState, n_batches: int) -> None:
        self.progress.start(f"epoch {state.epoch + 1}/{self.prep.plan.epochs}", n_batches)

    def step_end(self, state: TrainState, opt: Any, sched: Any, epoch_done: bool) -> None:
        """Log the step's loss; checkpoint when one is due (not at an epoch's last step: the
        epoch-end checkpoint follows) or when a signal asked to stop, and then stop."""
        path = self.run_dir / STEPS
        if self.writes:
            with saving(path, "step log"), path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.step, "loss": state.losses[-1]}) + "\n")
        # Read the flag once: a signal that arrives between a check and the stop would end the
        # run without the checkpoint of this step (found by the SIGTERM test's random timing).
        # Distributed, the ranks stop together at the first step any of them was asked to.
        stop = any_rank(self.stop.requested)
        if stop or (self._due(state.step) and not epoch_done):
            self.checkpoint(state, opt, sched)
        if stop:
            self._stop(state)

    def _due(self, step: int) -> bool:
        every, minutes = (
            self.prep.config.checkpoint.every,
            self.prep.config.checkpoint.minutes,
        )
        if every is not None and step % every == 0:
            return True
        return minutes is not None and time.monotonic() - self.last_save >= 60 * minutes

    def checkpoint(self, state: TrainState, opt: Any, sched: Any) -> None:
        if not self.writes:
            return
        save_checkpoint(
            self.run_dir,
            model=self.prep.backbone.model,
            optimizer=opt,
            scheduler=sched,
            state=state.to_dict(),
            plan=self.prep.plan.to_dict(),
            config_digest=self.digest,
            data_digest=self.data_digest,
            extra=self._extra_state(),
        )
        self.last_save = time.monotonic()

    def _extra_state(self) -> dict[str, Any] | None:
        """State the objective keeps beside the model (DANN's domain classifier)."""
        adapt = self.prep.objective.adapt
        return None if adapt is None else {"adapt": adapt.state_dict()}

    def _stop(self, state: TrainState) -> None:
        """End the run after a signal, its checkpoint written: raise :class:`Interrupted`."""
        self.progress.stop()
        # A distributed rank may stop because another rank was signalled: as if by SIGTERM.
        number = self.stop.signal_number or signal.SIGTERM
        where = f"step {state.step}, epoch {state.epoch + (1 if state.batch else 0)}"
        name = signal.Signals(number).name
        message = f"{name}: stopped at {where} with a checkpoint in {self.run_dir}"
        self.log(message)
        raise Interrupted(
            message,
            signal_number=number,
            hint=f"continue with `graft fit CONFIG --resume {self.run_dir}`",
        )

    def _probe_phase_ended(self, state: TrainState, record: dict[str, Any]) -> bool:
        """A head-only phase just ended and a phase that trains the body follows (LP-FT)."""
        phases = self.prep.plan.phases
        index = int(record["phase_index"])
        return (
            state.phase == index + 1
            and index + 1 < len(phases)
            and head_only(phases[index])
            and not head_only(phases[index + 1])
        )

    def _save_probe_head(self) -> None:
        """The probe's head, the linear-probe end of a WiSE-FT interpolation of this run
        (``graft interpolate RUN --base RUN``); the body is the pretrained one."""
        head = self.prep.backbone.model.head
        weights = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        path = self.run_dir / PROBE_HEAD
        with saving(path, "probe head"):
            atomic_write(path, lambda fh: fh.write(safetensors_save(weights)))

    def epoch_end(
        self, state: TrainState, record: dict[str, Any], is_best: bool, opt: Any, sched: Any
    ) -> None:
        self.progress.stop()
        if self.writes:
            self._write_epoch(state, record, is_best)
        self.checkpoint(state, opt, sched)
        self.log(
            f"epoch {record['epoch']}/{self.prep.plan.epochs} [{record['phase']}] "
            f"loss {record['train_loss']:.4f}  {_scores(record)}  "
            f"{record['samples_per_s']:.1f} samples/s" + ("  *best*" if is_best else "")
        )
        if self.on_epoch is not None:  # after the checkpoint: a pruned trial stays resumable
            self.on_epoch(record)
        if any_rank(self.stop.requested):  # the checkpoint above is this epoch's: stop on it
            self._stop(state)

    def _write_epoch(self, state: TrainState, record: dict[str, Any], is_best: bool) -> None:
        """The epoch's line in metrics.jsonl, TensorBoard, the best weights, the probe head."""
        model = self.prep.backbone.model
        metrics = self.run_dir / METRICS
        with saving(metrics, "metrics"), metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.prep.config.output.tensorboard:
            from graft.tensorboard import write_epoch

            write_epoch(self.run_dir, record)
        if is_best:
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            with saving(self.best_path, "best weights"):
                atomic_write(self.best_path, lambda fh: fh.write(safetensors_save(weights)))
        if self._probe_phase_ended(state, record):
            self._save_probe_head()


def _scores(record: dict[str, Any]) -> str:
    """The epoch's scores for the log line: accuracy and F1, or a regression's errors."""
    if "val_map" in record:
        return (
            f"train subset acc {record['train_subset_accuracy']:.4f}  "
            f"val loss {record['val_loss']:.4f}  val mAP {record['val_map']:.4f}  "
            f"val micro-F1 {record['val_micro_f1']:.4f}"
        )
    if "val_rmse" in record:
        return (
            f"train RMSE {record['train_rmse']:.4f}  val loss {record['val_loss']:.4f}  "
            f"val RMSE {record['val_rmse']:.4f}  val ρ {record['val_spearman']:.4f}"
        )
    return (
        f"train acc {record['train_accuracy']:.4f}  val loss {record['val_loss']:.4f}  "
        f"val acc {record['val_accuracy']:.4f}  val F1 {record['val_macro_f1']:.4f}"
    )
