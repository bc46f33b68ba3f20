"""B2 — text fine-tuning: ``graft.fit`` against the Hugging Face ``Trainer`` set up as an expert
would, in the same run, alternating, repeated (time, accuracy).

The recipe (the speed issue's): all-MiniLM-L6-v2 (the offline folder ``graft.assets.minilm_dir()``)
fully fine-tuned on VADER movie snippets split by graft's seeded stratified splitter (4,000 train
/ 1,000 validation / 2,000 test), batch 16, AdamW lr 2e-5, weight decay 0.01, linear decay
without warm-up, 3 epochs, max length 128, validation every epoch, then test and the shifted sets
(tweets, Amazon, NYT editorials: ``--extra-size`` examples each). 2 threads, each side a fresh
subprocess.

* ``graft``: ``graft.fit(config)`` with that recipe, graft's defaults otherwise — the whole run
  as a user gets it (checkpoints, best-epoch restore, the model folder and the HTML report).
* ``hf_expert``: ``Trainer`` as someone who cares about CPU time sets it up: tokenised once
  without padding, ``DataCollatorWithPadding`` (each batch padded to its longest text),
  ``train_sampling_strategy="group_by_length"``, ``optim="adamw_torch_fused"``, eval batch 64,
  ``bf16=True`` where the CPU has fast bf16 (AMX / AVX512-BF16: ``graft.runtime.fast_bf16``),
  no checkpoints; ``trainer.evaluate`` on test and each shifted set.
* ``graft_recipe`` (``--recipe``): graft's own recipe for this task (default batch 32, lr 1e-4,
  10 % warm-up, 1 epoch; ``--recipe-epochs/-batch/-lr``), for the time to the Trainer's final
  test accuracy.

Reported per side: the whole run (child's work, imports done, to the last accuracy), the training
epochs alone (the sum of per-epoch training times, validation excluded: graft's
``epoch_time_s``, the Trainer's ``on_epoch_begin`` → ``on_epoch_end``) and the test accuracy.
The sides alternate (A B, B A, ...) and ratios are of medians.

    .venv/bin/python benchmarks/b2_text.py [--quick] [--repeats 3] [--recipe]
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import base_parser, child_main, median, run_child, save, table, wait_for_quiet

EXTRA = {"tweets": "vader_tweets", "amazon": "vader_amazon", "news": "vader_nyt"}


RECIPE = {"epochs": 1, "batch": 32, "lr": 1e-4}  # graft_recipe's defaults (--recipe-*)


def _config(spec: dict[str, Any], out: str, recipe: bool = False) -> Any:
    from graft.config import RunConfig

    own = {**RECIPE, **spec.get("recipe", {})}

    return RunConfig.model_validate(
        {
            "backbone": {"name": "minilm"},
            "data": {
                "train": {"dataset": "vader_movies"},
                "train_size": spec["n"],
                "val_size": spec["n_val"],
                "test_size": spec["n_test"],
                "extra_size": spec["n_extra"],
                "extra_eval": {k: {"dataset": v} for k, v in EXTRA.items()},
                "max_length": 128,
            },
            "strategy": {"name": "full"},
            "optim": {"name": "adamw", "lr": own["lr"] if recipe else 2e-5, "weight_decay": 0.01},
            "schedule": {"name": "linear", "warmup_ratio": 0.1 if recipe else 0.0},
            "train": {
                "epochs": own["epochs"] if recipe else spec["epochs"],
                "batch_size": own["batch"] if recipe else 16,
                "precision": spec.get("precision", "auto"),
            },
            "hardware": {"threads": 2},
            "output": {"dir": out, "progress": False},
        }
    )


def run_graft(spec: dict[str, Any], recipe: bool) -> dict[str, Any]:
    import torch

    import graft
    from graft.runtime import fast_bf16

    with tempfile.TemporaryDirectory() as out:
        config = _config(spec, out, recipe)
        started = time.perf_counter()
        result = graft.fit(config, quiet=True)
        wall = time.perf_counter() - started
        lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
        epochs = [json.loads(x)["epoch_time_s"] for x in lines]
        precision = json.loads((result.run_dir / "results.json").read_text())["precision"]
    return {
        "wall_s": wall,
        "train_epochs_s": sum(epochs),
        "test_accuracy": result.test_accuracy,
        "precision": precision,
        "fast_bf16": fast_bf16(torch.device("cpu")),
    }


class _Encoded:
    """Tokenised examples without padding (what ``datasets.map`` would give the Trainer)."""

    def __init__(self, enc: dict[str, list[Any]], labels: np.ndarray) -> None:
        self.enc, self.labels = enc, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = int(self.labels[i])
        return item


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from graft.assets import minilm_dir
    from graft.prepare import load_splits
    from graft.runtime import fast_bf16

    class EpochClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []
            self.begun = 0.0

        def on_epoch_begin(self, *args: Any, **kwargs: Any) -> None:
            self.begun = time.perf_counter()

        def on_epoch_end(self, *args: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self.begun)

    bf16 = fast_bf16(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as out:
        config = _config(spec, out)
        started = time.perf_counter()
        splits = load_splits(config.data)  # the very splits graft.fit uses
        folder = str(minilm_dir())
        tok = AutoTokenizer.from_pretrained(folder)

        def encode(ex: Any) -> _Encoded:
            enc = tok(list(ex.inputs), truncation=True, max_length=128)
            return _Encoded(dict(enc), splits.label_map.encode(ex.labels, ex.origin))

        train, val = encode(splits.train), encode(splits.validation)
        assert splits.test is not None
        test = encode(splits.test)
        extra = {name: encode(ex) for name, ex in splits.extra.items()}
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=len(splits.label_map)
        )

        def metrics(p: Any) -> dict[str, float]:
            return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            learning_rate=2e-5,
            weight_decay=0.01,
            num_train_epochs=spec["epochs"],
            lr_scheduler_type="linear",
            optim="adamw_torch_fused",
            train_sampling_strategy="group_by_length",
            bf16=bf16,
            eval_strategy="epoch",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        clock = EpochClock()
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=val,
            data_collator=DataCollatorWithPadding(tok),
            processing_class=tok,
            compute_metrics=metrics,
            callbacks=[clock],
        )
        trainer.train()
        acc = trainer.evaluate(test)["eval_accuracy"]
        shifted = {k: trainer.evaluate(v)["eval_accuracy"] for k, v in extra.items()}
        wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "train_epochs_s": sum(clock.times),
        "test_accuracy": float(acc),
        "extra_accuracy": shifted,
        "precision": "bf16" if bf16 else "fp32",
        "fast_bf16": bf16,
    }


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["impl"] == "hf_expert":
        return run_hf(spec)
    return run_graft(spec, recipe=spec["impl"] == "graft_recipe")


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--recipe", action="store_true", help="also graft's own recipe (1 epoch)")
    p.add_argument("--sides", help="which sides, e.g. graft_recipe (default: all of them)")
    p.add_argument("--recipe-epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--recipe-batch", type=int, default=RECIPE["batch"])
    p.add_argument("--recipe-lr", type=float, default=RECIPE["lr"])
    p.add_argument("--precision", default="auto", help="graft's train.precision (auto|fp32|bf16)")
    p.add_argument("--extra-size", type=int, default=1000, help="examples per shifted set")
    args = p.parse_args()
    quick = args.quick
    repeats = args.repeats or 3
    spec = {
        "n": 96 if quick else 4000,
        "n_val": 64 if quick else 1000,
        "n_test": 128 if quick else 2000,
        "n_extra": 32 if quick else args.extra_size,
        "epochs": 1 if quick else 3,
        "recipe": {"epochs": args.recipe_epochs, "batch": args.recipe_batch, "lr": args.recipe_lr},
        "precision": args.precision,
    }
    sides = ["graft", "hf_expert"] + (["graft_recipe"] if args.recipe else [])
    sides = args.sides.split(",") if args.sides else sides
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    loads = []
    for r in range(repeats):
        for impl in sides if r % 2 == 0 else sides[::-1]:
            loads.append(wait_for_quiet(args.max_load, args.max_wait))
            res = run_child(__file__, {"impl": impl, **spec}, timeout=7200)
            runs[impl].append(res)
            print(
                f"  {impl} repeat {r + 1}: whole {res['wall_s']:.1f} s, training epochs "
                f"{res['train_epochs_s']:.1f} s, test acc {res['test_accuracy']:.4f}",
                flush=True,
            )
    med = {
        k: {m: median([x[m] for x in v]) for m in ("wall_s", "train_epochs_s", "test_accuracy")}
        for k, v in runs.items()
    }
    hf = med.get("hf_expert") or {"wall_s": math.nan, "train_epochs_s": math.nan}
    table(
        f"B2 MiniLM on VADER movies, {spec['n']} train, {spec['epochs']} epochs, medians of "
        f"{repeats}",
        ["side", "whole s", "training epochs s", "test acc", "× HF whole", "× HF epochs"],
        [
            [k, m["wall_s"], m["train_epochs_s"], m["test_accuracy"],
             m["wall_s"] / hf["wall_s"], m["train_epochs_s"] / hf["train_epochs_s"]]
            for k, m in med.items()
        ],
    )  # fmt: skip
    save(
        "b2_text",
        {
            **spec,
            "repeats": repeats,
            "runs": runs,
            "medians": med,
            "ratio_whole_over_hf": {k: m["wall_s"] / hf["wall_s"] for k, m in med.items()},
            "ratio_epochs_over_hf": {
                k: m["train_epochs_s"] / hf["train_epochs_s"] for k, m in med.items()
            },
            "load1": loads,
        },
        quick,
        args.no_save,
    )
    print(f"  (results in {Path(__file__).parent / 'results'})")


if __name__ == "__main__" and not child_main(child):
    main()
