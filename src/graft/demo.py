"""``graft demo``: two real fine-tunes of real pretrained models, with reports.

MiniLM (all-MiniLM-L6-v2) on VADER movie-review sentiment, also evaluated on tweets and Amazon
snippets (shifted domains); EfficientNet-Lite0 (ImageNet weights) on Fashion-MNIST. Subsets are
sized so that both finish in a few minutes on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

from graft.errors import UsageError

DEMO_CONFIGS = ("vader_minilm.yaml", "fashion_mnist_lite0.yaml")


def run_demo(config_dir: str | Path = "configs", output_dir: str = "runs/demo") -> list[dict]:
    """Run each demo config; return one summary row per run."""
    from graft.config import load_config
    from graft.run import fit

    folder = Path(config_dir)
    missing = [name for name in DEMO_CONFIGS if not (folder / name).is_file()]
    if missing:
        raise UsageError(
            f"{folder}: demo configs not found: {', '.join(missing)}",
            hint="run `graft demo` from the repository root, or pass --configs DIR",
        )
    rows = []
    for name in DEMO_CONFIGS:
        config = load_config(folder / name, [f"output.dir={output_dir}"])
        result = fit(config)
        res = result.results
        rows.append(
            {
                "backbone": res["backbone"],
                "data": f"{config.data.train.dataset}: {config.data.train_size} train examples, "
                f"{len(_history(result.run_dir))} epochs",
                "test_accuracy": res["test"]["accuracy"],
                "shifted": {k: v["accuracy"] for k, v in res["extra"].items()},
                "wall_time_s": res["wall_time_s"],
                "run_dir": str(result.run_dir),
            }
        )
    return rows


def _history(run_dir: Path) -> list[str]:
    return [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def print_summary(rows: list[dict]) -> None:
    print("\ngraft demo — test accuracy of each fine-tuned model")
    for r in rows:
        shifted = "".join(f", {k} {v:.3f}" for k, v in r["shifted"].items())
        print(
            f"  {r['backbone']:22s} {r['data']:45s} test acc {r['test_accuracy']:.3f}{shifted}"
            f"  ({r['wall_time_s']:.0f}s)\n    run directory: {r['run_dir']}"
            f"  (report: {r['run_dir']}/report.html)"
        )
