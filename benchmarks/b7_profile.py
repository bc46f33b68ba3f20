"""B7 — where a training step's time goes: torch.profiler on graft's loop and on the expert HF
Trainer, the same MiniLM steps (batch 16 of VADER movie snippets, AdamW 2e-5).

graft: ``graft.prepare`` + ``graft.train.train`` (the loop every command runs) with a step hook
that advances the profiler. HF: the Trainer of ``b2_text.py`` (dynamic padding, length grouping,
fused AdamW, bf16 where the CPU has it fast) with a callback that does the same. Each side in a
fresh subprocess; ``--warmup`` steps, then ``--steps`` profiled steps. Printed per side:
milliseconds per step and the operators with the most self CPU time; appended to
``results/b7_profile.jsonl``.

    .venv/bin/python benchmarks/b7_profile.py [--steps 30] [--sides graft,hf_expert]
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from common import base_parser, child_main, run_child, save

BATCH = 16


def _summary(prof: Any, steps: int, wall: float) -> dict[str, Any]:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:14]
    return {
        "ms_per_step": 1000 * wall / steps,
        "profiled_self_cpu_ms_per_step": total / 1000 / steps,
        "top": [
            {
                "op": e.key,
                "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                "share": e.self_cpu_time_total / total,
                "calls_per_step": e.count / steps,
            }
            for e in top
        ],
    }


def _profiler(spec: dict[str, Any]) -> Any:
    from torch.profiler import ProfilerActivity, profile, schedule

    plan = schedule(wait=0, warmup=spec["warmup"], active=spec["steps"], repeat=1)
    return profile(activities=[ProfilerActivity.CPU], schedule=plan)


def run_graft(spec: dict[str, Any]) -> dict[str, Any]:
    from graft.config import RunConfig
    from graft.console import RunLog
    from graft.prepare import prepare
    from graft.train import Hooks, train

    n = BATCH * (spec["warmup"] + spec["steps"] + 2)
    with tempfile.TemporaryDirectory() as out:
        config = RunConfig.model_validate(
            {
                "backbone": {"name": "minilm"},
                "data": {
                    "train": {"dataset": "vader_movies"},
                    "train_size": n,
                    "val_size": 32,
                    "test_size": 32,
                },
                "strategy": {"name": "full"},
                "optim": {"name": "adamw", "lr": 2e-5, "weight_decay": 0.01},
                "train": {"epochs": 1, "batch_size": BATCH},
                "hardware": {"threads": 2},
                "output": {"dir": out, "progress": False},
            }
        )
        prep = prepare(config, RunLog(quiet=True))
        clock: dict[str, float] = {}
        count = [0]

        with _profiler(spec) as prof:

            def step(*_: Any) -> None:
                count[0] += 1
                if count[0] == spec["warmup"]:
                    clock["start"] = time.perf_counter()
                if count[0] == spec["warmup"] + spec["steps"]:
                    clock["end"] = time.perf_counter()
                prof.step()

            train(
                prep.backbone.model,
                prep.backbone.groups,
                prep.plan,
                prep.train_loader,
                prep.val_loader,
                prep.labels,
                prep.settings,
                Hooks(step=step),
                objective=prep.objective,
            )
    return _summary(prof, spec["steps"], clock["end"] - clock["start"])


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
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
    from graft.data import load_examples
    from graft.runtime import fast_bf16

    n = BATCH * (spec["warmup"] + spec["steps"] + 2)
    ex = load_examples(dataset="vader_movies").subset(range(n))
    folder = str(minilm_dir())
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(list(ex.inputs), truncation=True, max_length=128)
    codes = {"negative": 0, "positive": 1}
    labels = np.array([codes[y] for y in ex.labels])
    data = [{"input_ids": enc["input_ids"][i], "labels": int(labels[i])} for i in range(n)]
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    clock: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out, _profiler(spec) as prof:

        class Step(TrainerCallback):  # type: ignore[misc]
            count = 0

            def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                self.count += 1
                if self.count == spec["warmup"]:
                    clock["start"] = time.perf_counter()
                if self.count == spec["warmup"] + spec["steps"]:
                    clock["end"] = time.perf_counter()
                prof.step()

        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            learning_rate=2e-5,
            weight_decay=0.01,
            num_train_epochs=1,
            optim="adamw_torch_fused",
            train_sampling_strategy="group_by_length",
            bf16=fast_bf16(torch.device("cpu")),  # as the expert of b2_text.py: where it is fast
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=DataCollatorWithPadding(tok),
            processing_class=tok,
            callbacks=[Step()],
        )
        trainer.train()
    return _summary(prof, spec["steps"], clock["end"] - clock["start"])


def child(spec: dict[str, Any]) -> dict[str, Any]:
    return run_hf(spec) if spec["impl"] == "hf_expert" else run_graft(spec)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--sides", default="graft,hf_expert")
    p.add_argument("--label", default="", help="a note stored with the results (e.g. a commit)")
    args = p.parse_args()
    results = {}
    for impl in args.sides.split(","):
        spec = {"impl": impl, "steps": args.steps, "warmup": args.warmup}
        res = run_child(__file__, spec)
        results[impl] = res
        print(f"\n{impl}: {res['ms_per_step']:.1f} ms per step (wall)")
        for t in res["top"]:
            print(
                f"  {t['op'][:44]:44s} {t['self_ms_per_step']:7.2f} ms  {100 * t['share']:5.1f} %"
                f"  {t['calls_per_step']:6.1f} calls"
            )
    save("b7_profile", {"label": args.label, "steps": args.steps, "sides": results}, False,
         args.no_save)  # fmt: skip


if __name__ == "__main__" and not child_main(child):
    main()
