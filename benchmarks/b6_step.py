"""B6: one MiniLM training step, the settings graft chooses for it: the OpenMP wait policy of a
single process (PASSIVE, what the `graft` command set by default, against ACTIVE) and the AdamW
implementation (torch's default ``foreach`` against ``fused``).

Each configuration runs in a fresh subprocess (OMP_WAIT_POLICY is read when torch loads), in an
order that alternates over the repeats; the measure is training samples per second over
``--steps`` steps of batch 16 on VADER movie snippets (dynamic padding, ~30 tokens), after
``--warmup`` steps. The model, data, batches and optimizer settings are the same everywhere.

    .venv/bin/python benchmarks/b6_step.py [--repeats 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from graft.data import load_examples
    from graft.models import build_backbone
    from graft.pipeline import Loaders

    torch.set_num_threads(2)
    torch.manual_seed(0)
    backbone = build_backbone("minilm", num_classes=2)
    examples = load_examples(dataset="vader_movies").subset(range(16 * (spec["steps"] + 8)))
    codes = {"negative": 0, "positive": 1}
    targets = torch.tensor([codes[y] for y in examples.labels]).numpy()
    loaders = Loaders(backbone.preprocess, backbone.tokenizer, False, 0, 0)
    loader = loaders.loader(examples, targets, 16, shuffle=True, by_length=True, train=True)
    model = backbone.model.train()
    kind = {"fused": True} if spec["adamw"] == "fused" else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, **kind)
    seen, started = 0, 0.0
    for i, batch in enumerate(loader):
        if i == spec["warmup"]:
            seen, started = 0, time.perf_counter()
        if i == spec["warmup"] + spec["steps"]:
            break
        loss = torch.nn.functional.cross_entropy(model(**batch["inputs"]), batch["targets"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += len(batch["targets"])
    return {"samples_per_s": seen / (time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--omp", default="PASSIVE,ACTIVE", help="policies; unset: not set")
    parser.add_argument("--adamw", default="foreach,fused", help="AdamW implementations")
    parser.add_argument("--child")
    args = parser.parse_args()
    configs = [
        {"omp": omp, "adamw": kind} for kind in args.adamw.split(",") for omp in args.omp.split(",")
    ]
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from benchmarks.common import machine

    results: dict[str, list[float]] = {}
    for r in range(args.repeats):
        order = configs if r % 2 == 0 else configs[::-1]  # A B C D, then D C B A, ...
        for spec in order:
            key = f"{spec['omp']}/{spec['adamw']}"
            full = {**spec, "steps": args.steps, "warmup": args.warmup}
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            env.pop("OMP_WAIT_POLICY", None)
            if spec["omp"] != "unset":
                env["OMP_WAIT_POLICY"] = spec["omp"]
            out = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(full)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            rate = json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"]
            results.setdefault(key, []).append(rate)
            print(f"repeat {r + 1} {key}: {rate:.1f} samples/s", flush=True)
    first = f"{configs[0]['omp']}/{configs[0]['adamw']}"
    base = statistics.median(results[first])
    summary = {
        k: {
            "median": statistics.median(v),
            "runs": v,
            "vs_first": statistics.median(v) / base,
        }
        for k, v in results.items()
    }
    for k, s in summary.items():
        print(f"{k:18s} median {s['median']:.1f} samples/s  ×{s['vs_first']:.3f} (vs {first})")
    line = {"bench": "b6_step", "machine": machine(), "steps": args.steps, "results": summary}
    with open(HERE / "results" / "b6_step.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
