"""Run every registered strategy on the two offline pretrained models; write a results table.

    .venv/bin/python scripts/strategy_table.py [--out docs/results] [--only text|image]

MiniLM on VADER movie snippets (tweets and Amazon snippets as shifted domains) and
EfficientNet-Lite0 on Fashion-MNIST, same subsets, seed, budget and base settings for every
strategy; only the strategy changes (its own default parameters). One seed: differences of a
point or two are within noise (see `graft compare` for seeds and significance).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from graft.config import load_config
from graft.run import fit
from graft.runtime import environment
from graft.strategies import strategies

SETUPS: dict[str, dict[str, Any]] = {
    "text": {
        "config": "configs/vader_minilm.yaml",
        "overrides": [
            "data.train_size=800",
            "data.val_size=200",
            "data.test_size=600",
            "data.extra_size=400",
            "train.epochs=3",
        ],
        # The body's LR (5e-5) barely moves a new head in 3 epochs: head-only training gets a
        # head-sized LR, and LP-FT's fine-tuning phase lands on the same 5e-5 as `full`.
        # BitFit trains biases only, at 1e-4..1e-3 in its paper (Ben Zaken et al. 2022).
        "per_strategy": {
            "linear_probe": ["optim.lr=3e-3"],
            "lp_ft": ["optim.lr=1e-3", "strategy.ft_lr_scale=0.05"],
            "bitfit": ["optim.lr=1e-3"],
        },
    },
    "image": {
        "config": "configs/fashion_mnist_lite0.yaml",
        "overrides": [
            "data.train_size=1000",
            "data.val_size=300",
            "data.test_size=1000",
            "train.epochs=3",
        ],
        "per_strategy": {"linear_probe": ["optim.lr=1e-2"], "bitfit": ["optim.lr=1e-2"]},
    },
}
SKIP = {"custom"}  # needs phases written out


def run(setup: str, out: Path, only: list[str] | None = None) -> list[dict[str, Any]]:
    spec = SETUPS[setup]
    rows = []
    for name in only or [s for s in strategies() if s not in SKIP]:
        overrides = [*spec["overrides"], f"strategy.name={name}"]
        overrides += spec["per_strategy"].get(name, [])
        config = load_config(spec["config"], [*overrides, f"output.dir={out}/runs"])
        started = time.perf_counter()
        result = fit(config, quiet=True)
        res = result.results
        rows.append(
            {
                "setup": setup,
                "strategy": name,
                "test_accuracy": res["test"]["accuracy"],
                "test_macro_f1": res["test"]["macro_f1"],
                "extra": {k: v["accuracy"] for k, v in res["extra"].items()},
                "trainable_params": res["trainable_params"],
                "epochs": len((result.run_dir / "metrics.jsonl").read_text().splitlines()),
                "wall_time_s": time.perf_counter() - started,
                "overrides": overrides,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    env = environment()
    lines = [
        "# Every strategy on real data, one seed",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores; torch {env['torch']}; "
        f"{time.strftime('%Y-%m-%d')}. Command: `.venv/bin/python scripts/strategy_table.py`.",
        "",
    ]
    for setup, spec in SETUPS.items():
        sub = [r for r in rows if r["setup"] == setup]
        if not sub:
            continue
        extra_names = sorted({k for r in sub for k in r["extra"]})
        lines += [
            f"## {setup}: `{spec['config']}` with {', '.join(spec['overrides'])}",
            "",
            "Per-strategy settings: "
            + ("; ".join(f"{k}: {', '.join(v)}" for k, v in spec["per_strategy"].items()) or "none")
            + ".",
            "",
            "| strategy | test acc | test macro-F1 | "
            + "".join(f"{k} acc | " for k in extra_names)
            + "trainable params | epochs | wall time |",
            "|---|---:|---:|" + "---:|" * len(extra_names) + "---:|---:|---:|",
        ]
        for r in sorted(sub, key=lambda r: -r["test_accuracy"]):
            extra = "".join(f"{r['extra'][k]:.3f} | " for k in extra_names)
            lines.append(
                f"| {r['strategy']} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | "
                f"{extra}{r['trainable_params']:,} | {r['epochs']} | {r['wall_time_s']:.0f}s |"
            )
        lines.append("")
    reading = out / "strategies_reading.md"  # the humans' reading of the numbers, kept as is
    if reading.is_file():
        lines.append(reading.read_text())
    (out / "strategies.md").write_text("\n".join(lines))
    (out / "strategies.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results", type=Path)
    parser.add_argument("--only", choices=list(SETUPS))
    parser.add_argument(
        "--strategies", help="comma-separated: re-run these and keep the other rows of the table"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = args.strategies.split(",") if args.strategies else None
    rows: list[dict[str, Any]] = []
    previous = args.out / "strategies.json"
    if chosen and previous.is_file():
        rows = json.loads(previous.read_text())
    for setup in [args.only] if args.only else list(SETUPS):
        new = run(setup, args.out, chosen)
        redone = {(r["setup"], r["strategy"]) for r in new}
        rows = [r for r in rows if (r["setup"], r["strategy"]) not in redone] + new
        write_table(rows, args.out)


if __name__ == "__main__":
    main()
