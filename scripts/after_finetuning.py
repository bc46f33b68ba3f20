"""The measurements of graft's after-fine-tuning tools on real data, one command each; each
writes its tables and the comparison report into ``--out`` (committed under docs/results/).

    .venv/bin/python scripts/after_finetuning.py wise_ft configs/wise_ft_vader_minilm.yaml \
        --out docs/results/wise_ft_vader_minilm
    .venv/bin/python scripts/after_finetuning.py wise_ft configs/wise_ft_fashion_lite0.yaml \
        --out docs/results/wise_ft_fashion_lite0
    .venv/bin/python scripts/after_finetuning.py distill configs/distill_vader_minilm.yaml \
        --teacher runs/compare-wise_ft_vader/full_from_probe-seed0 \
        --out docs/results/distill_vader_minilm

``wise_ft``: the config's compare (its fine-tuning strategies and the linear probe × seeds) and
LP-FT × the same seeds (a second compare); then ``graft interpolate`` of every fine-tuned run
(``--base pretrained``; an LP-FT run with its own probe phase as the base), greedy and uniform
soups of each fine-tuning strategy's seeds, and ``graft report`` over all of it. ``distill``:
the student with and without the teacher × seeds (a compare), then the inference time of teacher
and student on the test set, measured here, alternating, in one process. Finished runs and merged
models are reused: a second call only rebuilds the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GRAFT = [sys.executable, "-m", "graft.cli"]


def _graft(*args: str) -> None:
    print("$ graft " + " ".join(args), flush=True)
    subprocess.run([*GRAFT, *args], check=True)


def _compare_dir(config: str, extra: list[str]) -> Path:
    from graft.compare.spec import compare_dir_for, load_compare

    base, spec = load_compare(config, extra)
    assert spec is not None, f"{config} has no compare: block"
    return compare_dir_for(base, spec, Path(config).stem)


def _results(path: Path) -> dict[str, Any]:
    return json.loads((path / "results.json").read_text(encoding="utf-8"))


def _sets(results: dict[str, Any]) -> dict[str, float]:
    out = {"validation": results["validation"]["accuracy"]}
    if results.get("test"):
        out["test"] = results["test"]["accuracy"]
    out |= {n: m["accuracy"] for n, m in (results.get("extra") or {}).items()}
    return out


def _row(label: str, dirs: list[Path]) -> dict[str, Any]:
    """Mean ± std of each set's accuracy over the runs of one label."""
    per_set: dict[str, list[float]] = {}
    for d in dirs:
        for name, acc in _sets(_results(d)).items():
            per_set.setdefault(name, []).append(100 * acc)
    row: dict[str, Any] = {"label": label, "runs": len(dirs)}
    for name, values in per_set.items():
        row[name] = statistics.mean(values)
        row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    extra = [n for n in per_set if n not in ("validation", "test")]
    if extra:  # per run: the mean over the shifted sets, then over runs
        means = [statistics.mean(100 * _sets(_results(d))[n] for n in extra) for d in dirs]
        row["shifted_mean"] = statistics.mean(means)
        row["shifted_mean_std"] = statistics.stdev(means) if len(means) > 1 else 0.0
    return row


def _write_tables(out: Path, rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        )
    keys = list(dict.fromkeys(k for r in runs for k in r))
    with (out / "runs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(runs)
    sets = [k for k in rows[0] if k not in ("label", "runs") and not k.endswith("_std")]
    lines = ["| model | runs | " + " | ".join(f"{s} acc. %" for s in sets) + " |"]
    lines.append("|---|---|" + "---|" * len(sets))
    for r in rows:
        cells = [f"{r[s]:.2f} ± {r[s + '_std']:.2f}" if s in r else "–" for s in sets]
        lines.append(f"| {r['label']} | {r['runs']} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def wise_ft(args: argparse.Namespace) -> None:
    from graft.compare.spec import read_manifest
    from graft.merging.interpolate import interpolate
    from graft.merging.soup import soup

    _graft("compare", args.config, "--quiet", *args.overrides)
    cdir = _compare_dir(args.config, args.overrides)
    # LP-FT in a compare of its own (same data and seeds): its probe phase is its own base.
    lp_ft_dir = cdir.parent / f"{cdir.name}_lp_ft"
    _graft(
        "compare",
        args.config,
        "--quiet",
        "--strategies",
        "lp_ft",
        "--name",
        lp_ft_dir.name.removeprefix("compare-"),
        *args.overrides,
    )
    by_label: dict[str, list[Path]] = {}
    for directory in (cdir, lp_ft_dir):
        for entry in read_manifest(directory)["runs"]:
            by_label.setdefault(entry["label"], []).append(directory / entry["name"])
    tuned = [
        label for label, runs in by_label.items() if _results(runs[0])["strategy"] != "linear_probe"
    ]
    merged: dict[str, list[Path]] = {}
    runs_table: list[dict[str, Any]] = []
    # BatchNorm statistics mixed like the weights, and (--bn-stats both) measured again.
    variants = [("mix", "")] + ([("recompute", "_bn")] if args.bn_stats == "both" else [])
    for bn_stats, suffix in variants:
        for label in tuned:
            for run in by_label[label]:
                target = cdir / f"{run.name}-wise_ft{suffix}"
                name = f"wise_ft{suffix}_{label}"
                if not (target / "results.json").is_file():
                    base = str(run) if label == "lp_ft" else "pretrained"
                    interpolate(run, base=base, alphas=args.alphas, output=target, label=name,
                                bn_stats=bn_stats, force=True)  # fmt: skip
                merged.setdefault(name, []).append(target)
                info = _results(target)["interpolation"]
                sets = {s: round(100 * a, 2) for s, a in _sets(_results(target)).items()}
                runs_table.append({"run": f"{run.name}{suffix}", "alpha": info["alpha"], **sets})
            for method in ("greedy", "uniform"):
                target = cdir / f"soup-{label}-{method}{suffix}"
                name = f"{method}_soup{suffix}_{label}"
                if not (target / "results.json").is_file():
                    soup(by_label[label], method=method, output=target, label=name,
                         bn_stats=bn_stats, force=True)  # fmt: skip
                merged[name] = [target]
    everything = {**by_label, **merged}
    rows = [_row(label, dirs) for label, dirs in everything.items()]
    _write_tables(Path(args.out), rows, runs_table)
    _graft(
        "report",
        str(cdir),
        str(lp_ft_dir),
        *[str(d) for ds in merged.values() for d in ds],
        "-o",
        str(Path(args.out) / "report.html"),
        "--title",
        f"WiSE-FT and soups: {cdir.name}",
    )
    curves = {
        str(d.name): _results(d)["interpolation"]
        for ds in merged.values()
        for d in ds
        if "interpolation" in _results(d)
    }
    (Path(args.out) / "curves.json").write_text(json.dumps(curves, indent=1), encoding="utf-8")


def _time_inference(model: Any, examples: Any, batch_size: int, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        model.logits(examples, batch_size=batch_size)
        times.append(time.perf_counter() - began)
    return times


def distill(args: argparse.Namespace) -> None:
    from graft.artifact import load_model
    from graft.compare.spec import read_manifest
    from graft.config import load_config
    from graft.prepare import load_splits
    from graft.runtime import environment, set_threads

    overrides = [f"distill.teacher={args.teacher}", *args.overrides]
    _graft("compare", args.config, "--quiet", *overrides)
    cdir = _compare_dir(args.config, overrides)
    manifest = read_manifest(cdir)
    by_label: dict[str, list[Path]] = {}
    for entry in manifest["runs"]:
        by_label.setdefault(entry["label"], []).append(cdir / entry["name"])
    teacher_dir = Path(args.teacher)
    rows = [_row("teacher (6 layers)", [teacher_dir])] + [_row(k, d) for k, d in by_label.items()]
    runs_table = [
        {"run": d.name, **{s: round(100 * a, 2) for s, a in _sets(_results(d)).items()}}
        for ds in by_label.values()
        for d in ds
    ]
    _write_tables(Path(args.out), rows, runs_table)
    # Inference: the teacher and the first student, alternating, on the test set.
    set_threads(None)
    first = next(iter(by_label.values()))[0]
    splits = load_splits(load_config(first / "config.yaml").data)
    assert splits.test is not None
    models = {"teacher": load_model(teacher_dir), "student": load_model(first)}
    timing: dict[str, Any] = {"environment": environment(), "examples": len(splits.test)}
    for batch_size, examples in ((64, splits.test), (1, splits.test.subset(range(200)))):
        for m in models.values():
            m.logits(examples.subset(range(32)), batch_size=batch_size)  # warm-up
        measured: dict[str, list[float]] = {n: [] for n in models}
        for _ in range(args.repeats):
            for name, m in models.items():
                measured[name] += _time_inference(m, examples, batch_size, 1)
        medians = {n: statistics.median(t) for n, t in measured.items()}
        timing[f"batch{batch_size}"] = {
            "examples": len(examples),
            "seconds": measured,
            "median_s": medians,
            "speedup": medians["teacher"] / medians["student"],
        }
        speedup = timing[f"batch{batch_size}"]["speedup"]
        print(
            f"batch {batch_size}: teacher {medians['teacher']:.2f}s, "
            f"student {medians['student']:.2f}s, speed-up {speedup:.2f}x"
        )
    (Path(args.out) / "inference.json").write_text(json.dumps(timing, indent=1), encoding="utf-8")
    _graft(
        "report",
        str(cdir),
        "-o",
        str(Path(args.out) / "report.html"),
        "--title",
        f"Distillation: {cdir.name}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wise_ft")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--alphas", default="0:1:0.1")
    p.add_argument("--bn-stats", choices=["mix", "both"], default="mix")
    p.add_argument("--out", required=True)
    p.set_defaults(run=wise_ft)
    p = sub.add_parser("distill")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--teacher", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True)
    p.set_defaults(run=distill)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
