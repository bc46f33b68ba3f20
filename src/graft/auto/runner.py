"""``graft auto DATA --budget 15m``: the fine-tuning loop of the design notes, automated.

Choose a strategy, set hyperparameters, fine-tune, evaluate, go back if not good enough — within
one wall-time budget:

1. **backbone** by data type: images → ``tf_efficientnet_lite0`` (64 px for small images such as
   28×28 Fashion-MNIST, else its own default size), texts → ``minilm``;
2. **linear probe** first: the head trains on features cached once (nearly free), a baseline;
3. **screen** ``full``, ``lp_ft`` and ``discriminative`` on a short budget (one fine-tuning
   epoch on a training subset), each only while the budget allows; the best of them wins (the
   probe is not compared with them: it trained longer on more data);
4. **search** (TPE, median pruning, :mod:`graft.search`) around the winner: learning rate,
   weight decay, and the strategy's own knob, on the screening budget per trial;
5. **final** training of the best config with as many epochs (up to 8) as the remaining time
   allows, on the capped training set grown to what the time left allows, and its report; if
   the linear probe is still better on validation, the probe is the final model.

Budget accounting: every step's wall time is measured; a run's cost is estimated from the
screening runs as seconds per training example-epoch (× a safety factor), and a step whose
estimate does not fit in what is left (keeping the final training's share) is skipped and logged.
The probe and one screening run always run: they are what the estimates come from.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from graft.atomic import atomic_write_text, check_writable_dir
from graft.auto.budget import FINAL_SHARE, SAFETY, Clock, CostModel
from graft.auto.setup import (
    AutoOptions,
    DataInfo,
    base_config,
    describe_data,
    source,
    with_sections,
)
from graft.config import validate
from graft.console import RunLog
from graft.errors import GraftError, UsageError
from graft.rundir import MODEL_DIR, REPORT

SCREEN_TRAIN_CAP = 1000
SCREENED = ("full", "lp_ft", "discriminative")
MAX_FINAL_EPOCHS = 8
PROBE_EPOCHS = 8
AUTO_LOG = "auto.log"
AUTO_JSON = "auto.json"


@dataclass
class Step:
    """One run of the loop, as recorded in auto.json."""

    step: str
    strategy: str
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    wall_s: float = 0.0
    train_examples: int = 0
    epochs: int = 0
    run_dir: str | None = None
    skipped: str | None = None
    config: dict[str, Any] | None = None

    def reused_as_final(self, note: str) -> Step:
        """This step's run delivered as the final model; ``note`` says why."""
        return Step(
            "final",
            self.strategy,
            self.val_accuracy,
            self.test_accuracy,
            epochs=self.epochs,
            run_dir=self.run_dir,
            skipped=note,
        )


class Auto:
    """The state of one ``graft auto`` run."""

    def __init__(self, o: AutoOptions) -> None:
        self.o = o
        self.clock = Clock(o.budget_s)
        self.cost = CostModel()
        self.steps: list[Step] = []
        self.log = RunLog(quiet=o.quiet)
        self.source = source(o)
        self.info: DataInfo = describe_data(o, self.source)  # read once, before any run

    # -- a run

    def fit(self, step: str, data: dict[str, Any], name: str) -> Step:
        from graft.run import fit

        data = with_sections(data, output={"name": name})
        config = validate(data, origin=f"graft auto ({step})")
        started = time.perf_counter()
        record = Step(step, config.strategy.name, epochs=config.train.epochs)
        try:
            result = fit(config, quiet=True)
        except GraftError as e:  # a strategy that does not fit this backbone: note, go on
            record.skipped = f"failed: {e.message}"
            self.log(f"{step} {config.strategy.name}: {record.skipped}")
            self.steps.append(record)
            return record
        r = result.results
        record.val_accuracy = float(r["validation"]["accuracy"])
        record.test_accuracy = result.test_accuracy
        record.wall_s = time.perf_counter() - started
        record.train_examples = self.n_train(config.data.train_size)
        record.run_dir = str(result.run_dir)
        record.config = data
        self.steps.append(record)
        self.log(
            f"{step} {config.strategy.name}: val accuracy {record.val_accuracy:.4f} "
            f"({record.wall_s:.0f}s; {self.clock.elapsed:.0f}s of {self.o.budget_s:.0f}s used)"
        )
        return record

    def n_train(self, cap: int | None) -> int:
        return self.info.n_train(cap)

    def skip(self, step: str, strategy: str, why: str) -> None:
        self.steps.append(Step(step, strategy, skipped=why))
        self.log(f"{step} {strategy}: skipped ({why})")

    def fits(self, estimate_s: float) -> bool:
        """Whether a run of this estimated cost fits, keeping the final training's share."""
        reserve = FINAL_SHARE * self.o.budget_s
        return estimate_s <= self.clock.remaining - reserve

    # -- the loop

    def run(self) -> dict[str, Any]:
        o = self.o
        self.auto_dir = _free_dir(Path(o.output), o.name or f"auto-{Path(o.data).name}")
        check_writable_dir(self.auto_dir, "--output")
        base = base_config(o, self.info, self.auto_dir)  # checked before anything is written
        self.auto_dir.mkdir(parents=True, exist_ok=True)
        self.log.attach(self.auto_dir / AUTO_LOG)
        self.base = base
        self._log_plan(base)
        probe = self.probe(base)
        winner = self.screen(base, probe)
        best_config, search_info = self.search(base, winner)
        if winner.strategy == "linear_probe" and not search_info.get("improved"):
            # The probe already trained on the whole training set: rerunning it changes nothing.
            self.log("final: the probe run is the final model (same config, whole training set)")
            final = winner.reused_as_final(f"reused {winner.run_dir}")
        else:
            final = self.final(best_config, winner)
            final = self.keep_better(final, probe)
        return self.write(base, winner, search_info, final)

    def keep_better(self, final: Step, probe: Step) -> Step:
        """Go back if not good enough: the fine-tuned model is delivered only if it beats the
        linear probe on validation; otherwise the probe (already trained) is the final model."""
        if probe.run_dir is None or final.val_accuracy is None:
            return final
        if (probe.val_accuracy or 0.0) <= final.val_accuracy:
            return final
        self.log(
            f"final: the linear probe ({probe.val_accuracy:.4f}) beats the fine-tuned model "
            f"({final.val_accuracy:.4f}) on validation; the probe is the final model"
        )
        return probe.reused_as_final(f"kept the probe over {final.run_dir}")

    def _log_plan(self, base: dict[str, Any]) -> None:
        d = base["data"]
        self.log(
            f"auto: {self.o.data} ({self.info.modality}, {self.info.n} examples, "
            f"{self.info.classes} classes); backbone {base['backbone']['name']}"
            + (f" at {d['image_size']} px" if d.get("image_size") else "")
            + f"; budget {self.o.budget_s:.0f}s; directory {self.auto_dir}"
        )
        if self.o.train_size is None and self.info.n > d["train_size"]:
            self.log(
                f"training on {d['train_size']} examples (a cap for a small CPU; "
                "--train-size sets it)"
            )

    def probe(self, base: dict[str, Any]) -> Step:
        """Step 1: a linear probe on cached features — the baseline, nearly free."""
        lr = 5.0e-3
        data = with_sections(
            base,
            strategy={"name": "linear_probe"},
            optim={"lr": lr},
            train={"epochs": PROBE_EPOCHS},
        )
        step = self.fit("probe", data, "probe")
        if step.run_dir is not None:
            self.cost.fixed_s = step.wall_s  # set-up, one forward pass, evaluation
        return step

    def screen(self, base: dict[str, Any], probe: Step) -> Step:
        """Step 2: the promising strategies on a short budget (one fine-tuning epoch, subset)."""
        n = min(self.n_train(base["data"]["train_size"]), SCREEN_TRAIN_CAP)
        candidates: list[Step] = []
        for strategy in SCREENED:
            params: dict[str, Any] = {"name": strategy}
            epochs = 1
            if strategy == "lp_ft":  # 1 probe epoch (cached: nearly free) + 1 fine-tuning epoch
                params.update(lp_epochs=1)
                epochs = 2
            if strategy == "discriminative":
                params["decay"] = 0.8
            estimate = self.cost.estimate(1, n)
            if self.cost.per_example_s is not None and not self.fits(estimate):
                self.skip("screen", strategy, f"estimated {estimate:.0f}s does not fit")
                continue
            data = with_sections(
                base,
                strategy=params,
                train={"epochs": epochs},
                data={"train_size": n},
            )
            step = self.fit("screen", data, f"screen-{strategy}")
            if step.run_dir is not None:
                candidates.append(step)
                self._learn_cost(step, n)
        if not candidates:
            if probe.run_dir is None:
                raise GraftError("auto: every screening run failed (see auto.log)")
            self.log("screening: no fine-tuning run finished; the linear probe goes on")
            return probe
        # The probe is not a candidate here: it trained 8 epochs on the whole (capped) set while
        # the screens had one epoch on a subset, so comparing them would always favour it. It
        # stays the baseline that the final fine-tuned model has to beat (see run()).
        winner = max(candidates, key=lambda s: s.val_accuracy or 0.0)
        self.log(f"winner of the screening: {winner.strategy} ({winner.val_accuracy:.4f})")
        return winner

    def _learn_cost(self, step: Step, n: int) -> None:
        """Per example-epoch of fine-tuning, from the screening runs (the largest seen wins: it
        is the conservative estimate). The probe's wall time stands for the fixed part (set-up,
        evaluation), but it also computed every set's features, so it can exceed a short screen:
        at least half of a screen's time is taken as training (measured on Lite0 + Fashion-MNIST:
        this gives 6.5 ms per example-epoch for a true 7.3; a 10% floor gave 1.3)."""
        per = max(step.wall_s - self.cost.fixed_s, 0.5 * step.wall_s) / max(n, 1)
        if step.strategy == "lp_ft":
            return  # its probe epoch is cached: the cost per epoch is not comparable
        self.cost.per_example_s = max(self.cost.per_example_s or 0.0, per)

    def search_space(self, winner: Step) -> dict[str, Any]:
        lr = float((winner.config or self.base)["optim"]["lr"])
        space: dict[str, Any] = {
            "optim.lr": {"type": "float", "low": lr / 5, "high": lr * 5, "log": True},
            "optim.weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        }
        if winner.strategy == "discriminative":
            space["strategy.decay"] = {"type": "float", "low": 0.5, "high": 0.95}
        if winner.strategy == "lp_ft":
            space["strategy.ft_lr_scale"] = {"type": "float", "low": 0.03, "high": 1.0, "log": True}
        return space

    def search(self, base: dict[str, Any], winner: Step) -> tuple[dict[str, Any], dict[str, Any]]:
        """Step 3: a small TPE search around the winner, on the screening budget per trial."""
        from graft.search import search

        config = json.loads(json.dumps(winner.config or base))
        n = int(config["data"].get("train_size") or self.n_train(None))
        epochs = int(config["train"]["epochs"])
        per_trial = (
            SAFETY * winner.wall_s
            if winner.strategy == "linear_probe"
            else self.cost.estimate(epochs, n)
        )
        available = self.clock.remaining - FINAL_SHARE * self.o.budget_s
        n_trials = int(available // per_trial) if per_trial > 0 else 0
        if n_trials < 2:
            self.log(
                f"search: skipped ({available:.0f}s left for it, a trial takes ~{per_trial:.0f}s)"
            )
            return config, {"skipped": True, "available_s": available, "trial_s": per_trial}
        n_trials = min(n_trials, 20)
        config.get("output", {}).pop("name", None)
        config["search"] = {
            "n_trials": n_trials,
            "timeout": max(1.0, available - per_trial),  # no trial starts that cannot finish
            "sampler": {"name": "tpe", "n_startup_trials": min(5, max(1, n_trials // 3))},
            "pruner": {"name": "median", "n_startup_trials": 2},
            "space": self.search_space(winner),
            "enqueue": [{"optim.lr": float(config["optim"]["lr"])}],
        }
        path = self.auto_dir / "search.yaml"
        atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
        self.log(f"search: up to {n_trials} trials of ~{per_trial:.0f}s around {winner.strategy}")
        result = search(path, study_name="auto", quiet=True)
        best = result.summary["best"]
        info: dict[str, Any] = {
            "improved": False,
            "search_dir": str(result.search_dir),
            "states": result.summary["states"],
            "best": None if best is None else {"params": best["params"], "value": best["value"]},
        }
        self.steps.append(
            Step(
                "search",
                winner.strategy,
                val_accuracy=None if best is None else float(best["value"]),
                wall_s=float(result.summary.get("wall_time_s", 0.0)),
                run_dir=str(result.search_dir),
            )
        )
        if best is None or best["value"] <= (winner.val_accuracy or 0.0):
            self.log("search: no trial beat the screening winner; keeping its settings")
            config.pop("search")
            return config, info
        from graft.search.space import apply_params

        config.pop("search")
        info["improved"] = True
        self.log(f"search: best {best['value']:.4f} with {best['params']}")
        return apply_params(config, best["params"]), info

    def final(self, config: dict[str, Any], winner: Step) -> Step:
        """Step 4: the chosen config on the whole (capped) training set, epochs to fit."""
        n = self.n_train(self.base["data"]["train_size"])
        config = with_sections(config, data={"train_size": self.base["data"]["train_size"]})
        if winner.strategy == "linear_probe":
            epochs = PROBE_EPOCHS  # cached features: epochs are nearly free
            estimate = SAFETY * winner.wall_s
        else:
            epochs = MAX_FINAL_EPOCHS
            while epochs > 1 and self.cost.estimate(epochs, n) > self.clock.remaining:
                epochs -= 1
            n = self.grown_train_size(n, epochs)
            config["data"]["train_size"] = n
            estimate = self.cost.estimate(epochs, n)
            if winner.strategy == "lp_ft":
                epochs += 1  # its probe phase is cached
                config["strategy"]["lp_epochs"] = 1
        if estimate > self.clock.remaining:
            self.log(
                f"final: a full run (~{estimate:.0f}s) does not fit in the "
                f"{self.clock.remaining:.0f}s left; the best run so far is the final model"
            )
            done = [s for s in self.steps if s.run_dir and s.step in ("probe", "screen")]
            best = max(done, key=lambda s: s.val_accuracy or 0.0)
            return best.reused_as_final(f"reused {best.run_dir}")
        config = with_sections(config, train={"epochs": epochs})
        self.log(
            f"final: {config['strategy']['name']}, {epochs} epochs on {n} examples "
            f"(~{estimate:.0f}s, {self.clock.remaining:.0f}s left)"
        )
        step = self.fit("final", config, "final")
        if step.run_dir is None:
            raise GraftError(f"auto: the final training failed: {step.skipped}")
        atomic_write_text(
            self.auto_dir / "final_config.yaml", yaml.safe_dump(config, sort_keys=False)
        )
        return step

    def grown_train_size(self, n: int, epochs: int) -> int:
        """The final run's training set: the capped size, grown to what the time left allows
        (more data is the surest gain once the settings are chosen), never past the data there
        is, and never when the user set ``--train-size``."""
        per = self.cost.per_example_s
        if self.o.train_size is not None or per is None:
            return n
        usable = 0.9 * self.clock.remaining / SAFETY - self.cost.fixed_s  # 10% kept in hand
        fits = int(usable / (epochs * per))
        grown = min(self.n_train(None), max(n, fits))
        if grown > n:
            self.log(f"final: training on {grown} examples instead of {n}: the time left allows")
        return grown

    def write(
        self, base: dict[str, Any], winner: Step, search_info: dict[str, Any], final: Step
    ) -> dict[str, Any]:
        out = {
            "auto_dir": str(self.auto_dir),
            "data": self.o.data,
            "modality": self.info.modality,
            "n": self.info.n,
            "classes": self.info.classes,
            "backbone": base["backbone"]["name"],
            "budget_s": self.o.budget_s,
            "elapsed_s": self.clock.elapsed,
            "steps": [_step_dict(s) for s in self.steps],
            "winner": winner.strategy,
            "search": search_info,
            "final": {
                "run_dir": final.run_dir,
                "model_dir": str(Path(final.run_dir) / MODEL_DIR) if final.run_dir else None,
                "report": str(Path(final.run_dir) / REPORT) if final.run_dir else None,
                "strategy": final.strategy,
                "epochs": final.epochs,
                "val_accuracy": final.val_accuracy,
                "test_accuracy": final.test_accuracy,
                "note": final.skipped,
            },
        }
        atomic_write_text(self.auto_dir / AUTO_JSON, json.dumps(out, indent=1))
        self._table()
        self.log(
            f"auto done in {self.clock.elapsed:.0f}s of {self.o.budget_s:.0f}s: "
            f"model {out['final']['model_dir']}   report {out['final']['report']}"
        )
        return out

    def _table(self) -> None:
        rows = [
            [
                s.step,
                s.strategy,
                "-" if s.val_accuracy is None else f"{s.val_accuracy:.4f}",
                "-" if s.test_accuracy is None else f"{s.test_accuracy:.4f}",
                f"{s.wall_s:.0f}s",
                s.skipped or "",
            ]
            for s in self.steps
        ]
        self.log.table(
            "graft auto", ["step", "strategy", "val acc", "test acc", "time", "note"], rows
        )


def _step_dict(s: Step) -> dict[str, Any]:
    d = asdict(s)
    d.pop("config")
    return d


def _free_dir(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name-2``, ``-3``, ... if that holds anything (not created)."""
    path, n = root / name, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = root / f"{name}-{n}"
    return path


def run_auto(options: AutoOptions) -> dict[str, Any]:
    """Run ``graft auto``; return what it wrote to ``auto.json``."""
    if options.budget_s < 10:
        raise UsageError("--budget: at least 10s", hint="e.g. --budget 15m")
    for flag, value in (
        ("--train-size", options.train_size),
        ("--val-size", options.val_size),
        ("--test-size", options.test_size),
        ("--image-size", options.image_size),
        ("--max-length", options.max_length),
    ):
        if value is not None and value < 1:  # 0 would silently mean "the default"
            raise UsageError(f"{flag}: must be at least 1 (got {value})")
    return Auto(options).run()
