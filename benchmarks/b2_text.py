"""B2 — text fine-tuning: ``graft.fit`` vs the Hugging Face ``Trainer`` recipe (time, accuracy).

Both fully fine-tune all-MiniLM-L6-v2 (the offline folder ``graft.assets.minilm_dir()``) on the
same VADER movie-snippet splits (graft's seeded stratified splitter: ``--train-size`` training
examples, a 500-example validation split, a 1,000-example test split), batch 32, AdamW lr 5e-5,
weight decay 0.01, linear schedule with 10% warm-up, 3 epochs, 2 threads, fresh subprocesses.

* graft: ``graft.fit(config)`` — the whole run as a user gets it (validation every epoch,
  checkpoints, best-epoch restore, final evaluation, model + report); its defaults: dynamic
  padding to each batch's longest text, length-grouped training batches, max_length 128.
* HF: the documented text-classification recipe — ``AutoModelForSequenceClassification``,
  tokenizer ``padding="max_length", max_length=128, truncation=True``, ``Trainer`` with
  ``TrainingArguments`` (same lr / epochs / batch size / schedule, ``eval_strategy="epoch"`` on
  the validation split, no checkpoints saved), then ``trainer.evaluate`` on the test split.

Wall time runs from the start of the child's work (imports done) to the test accuracy.
The full size is long on a 2-core CPU (graft ≈ 6 min, Trainer ≈ 15 min): one repeat.

    .venv-bench/bin/python benchmarks/b2_text.py [--quick] [--train-size 4000] [--repeats 1]
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
from common import base_parser, child_main, median, run_child, save, table, verdict, wait_for_quiet

LR, BATCH, MAX_LEN = 5e-5, 32, 128


def _config(spec: dict[str, Any], out: str) -> Any:
    from graft.config import RunConfig

    return RunConfig.model_validate(
        {
            "backbone": {"name": "minilm"},
            "data": {
                "train": {"dataset": "vader_movies"},
                "train_size": spec["n"],
                "val_size": spec["n_val"],
                "test_size": spec["n_test"],
                "max_length": MAX_LEN,
            },
            "strategy": {"name": "full"},
            "optim": {"name": "adamw", "lr": LR, "weight_decay": 0.01},
            "schedule": {"name": "linear", "warmup_ratio": 0.1},
            "train": {"epochs": spec["epochs"], "batch_size": BATCH},
            "output": {"dir": out, "progress": False},
        }
    )


def run_graft(spec: dict[str, Any]) -> dict[str, Any]:
    import graft

    with tempfile.TemporaryDirectory() as out:
        config = _config(spec, out)
        started = time.perf_counter()
        result = graft.fit(config, quiet=True)
        wall = time.perf_counter() - started
        return {"wall_s": wall, "test_accuracy": result.test_accuracy}


class _Encoded:
    """A list-backed dataset of tokenised examples (what ``datasets.map`` would give Trainer)."""

    def __init__(self, enc: dict[str, list], labels: np.ndarray) -> None:
        self.enc, self.labels = enc, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = int(self.labels[i])
        return item


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from graft.assets import minilm_dir
    from graft.prepare import load_splits

    with tempfile.TemporaryDirectory() as out:
        config = _config(spec, out)
        started = time.perf_counter()
        splits = load_splits(config.data)  # the very splits graft.fit uses
        enc_labels = splits.label_map.encode
        folder = str(minilm_dir())
        tok = AutoTokenizer.from_pretrained(folder)

        def encode(ex: Any) -> _Encoded:
            e = tok(list(ex.inputs), padding="max_length", max_length=MAX_LEN, truncation=True)
            return _Encoded(dict(e), enc_labels(ex.labels, ex.origin))

        train, val = encode(splits.train), encode(splits.validation)
        assert splits.test is not None
        test = encode(splits.test)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=len(splits.label_map)
        )

        def metrics(p: Any) -> dict[str, float]:
            return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=2 * BATCH,
            learning_rate=LR,
            weight_decay=0.01,
            num_train_epochs=spec["epochs"],
            lr_scheduler_type="linear",
            warmup_steps=0.1,  # transformers 5: a float < 1 is a ratio of the total steps
            eval_strategy="epoch",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=val,
            compute_metrics=metrics,
        )
        trainer.train()
        acc = trainer.evaluate(test)["eval_accuracy"]
        wall = time.perf_counter() - started
    return {"wall_s": wall, "test_accuracy": float(acc)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    return run_graft(spec) if spec["impl"] == "graft" else run_hf(spec)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, default=None, help="training examples (full: 4000)")
    args = p.parse_args()
    quick = args.quick
    repeats = args.repeats or 1
    spec = {
        "n": args.train_size or (96 if quick else 4000),
        "n_val": 64 if quick else 500,
        "n_test": 128 if quick else 1000,
        "epochs": 1 if quick else 3,
    }
    runs: dict[str, list[dict[str, Any]]] = {"graft": [], "hf_trainer": []}
    loads = []
    for r in range(repeats):
        for impl in ["graft", "hf_trainer"] if r % 2 == 0 else ["hf_trainer", "graft"]:
            loads.append(wait_for_quiet(args.max_load, args.max_wait))
            res = run_child(__file__, {"impl": impl, **spec}, timeout=7200)
            runs[impl].append(res)
            print(f"  {impl} repeat {r + 1}: {res['wall_s']:.1f} s, acc {res['test_accuracy']:.4f}")
    wall = {k: median([x["wall_s"] for x in v]) for k, v in runs.items()}
    acc = {k: median([x["test_accuracy"] for x in v]) for k, v in runs.items()}
    rss = {k: median([x["peak_rss_mb"] for x in v]) for k, v in runs.items()}
    ratio = wall["graft"] / wall["hf_trainer"]
    gap = 100 * (acc["graft"] - acc["hf_trainer"])
    table(
        f"B2 MiniLM on VADER movies, {spec['n']} train, {spec['epochs']} epochs ({repeats} repeat)",
        ["impl", "wall s", "test acc", "RSS MiB"],
        [[k, wall[k], acc[k], rss[k]] for k in runs],
    )
    print(f"  wall graft/Trainer = {ratio:.3f} {verdict(ratio, 0.3, True)}")
    print(f"  accuracy graft − Trainer = {gap:+.2f} points (target within ±0.5)")
    save(
        "b2_text",
        {
            **spec,
            "repeats": repeats,
            "wall_s": {k: [x["wall_s"] for x in v] for k, v in runs.items()},
            "test_accuracy": {k: [x["test_accuracy"] for x in v] for k, v in runs.items()},
            "ratio_wall_graft_over_trainer": ratio,
            "accuracy_gap_points": gap,
            "peak_rss_mb": rss,
            "load1": loads,
        },
        quick,
        args.no_save,
    )


if __name__ == "__main__" and not child_main(child):
    main()
