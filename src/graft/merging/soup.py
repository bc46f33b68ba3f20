"""Model soups (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned
models improves accuracy without increasing inference time"): the weights of several runs of one
architecture, fine-tuned from the same pretrained start, averaged.

* ``uniform``: the average of every ingredient;
* ``greedy``: the ingredients sorted by validation accuracy, best first; each is added when the
  soup with it is at least as accurate on validation as the soup without it (the paper's ≥).
  The soup starts as the best ingredient, so its validation accuracy is never lower than the
  best ingredient's.

The ingredients are finished runs (run directories, or the runs of compare directories, e.g. a
compare's seeds); they must share backbone, data and classes (the checks of ``graft report``)
and the exact architecture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from graft.artifact import LoadedModel, load_model, require_classifier
from graft.atomic import check_target
from graft.compare.records import collect_runs
from graft.errors import UsageError
from graft.merging.evaluation import VALIDATION, eval_sets
from graft.merging.output import check_label, common_results, write_merged
from graft.merging.weights import BnStats, average_states, check_same_model, cpu_state
from graft.rundir import MODEL_DIR
from graft.runtime import keep_freed_memory, set_threads

Method = Literal["greedy", "uniform"]


def greedy_order(scores: Sequence[float]) -> list[int]:
    """Ingredient indexes by validation accuracy, best first (ties: the order given)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def soup(
    paths: Sequence[str | Path],
    *,
    method: Method = "greedy",
    output: str | Path | None = None,
    label: str | None = None,
    bn_stats: BnStats = "mix",
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Make the ``method`` soup of the finished runs under ``paths``, measure it on their
    evaluation sets, write it like a run (default: ``<best run>-<method>_soup`` beside it) and
    return its directory. ``label`` names its row in ``graft report`` (default: greedy_soup or
    uniform_soup); ``bn_stats``: BatchNorm running statistics averaged like the weights
    (``mix``) or measured again on the training examples for each soup (``recompute``)."""
    started = time.perf_counter()
    label = label or f"{method}_soup"
    check_label(label)
    records, notes = collect_runs(paths)
    for note in notes:
        log(note)
    if len(records) < 2:
        raise UsageError(
            f"a soup needs at least two finished runs; {len(records)} given",
            hint="give several run directories, or a compare directory with its seeds",
        )
    hashes: dict[str, str] = {}
    for r in records:
        digest = str(r.results.get("config_hash"))
        if digest in hashes:
            log(
                f"warning: {r.run_dir} and {hashes[digest]} have the same config (seed "
                "included): the same training run twice adds nothing to a soup"
            )
        hashes.setdefault(digest, str(r.run_dir))
    scores = [float(r.results["validation"]["accuracy"]) for r in records]
    order = greedy_order(scores)
    best = records[order[0]]
    target = (
        Path(output)
        if output is not None
        else best.run_dir.parent / f"{best.run_dir.name}-{method}_soup"
    )
    check_target(target, force)
    set_threads(None)
    keep_freed_memory()
    models: list[tuple[str, LoadedModel]] = [
        (str(r.run_dir), load_model(r.run_dir / MODEL_DIR)) for r in records
    ]
    for _, ingredient in models:
        require_classifier(ingredient, "graft soup")
    check_same_model([models[i] for i in order])
    head = models[order[0]][1]
    sets = eval_sets(best.run_dir, head.backbone, list(head.label_map.names))
    states = [cpu_state(m.backbone.model) for _, m in models]
    model = head.backbone.model.to(sets.device)

    def load(members: list[int]) -> None:
        model.load_state_dict(average_states([states[i] for i in members]))
        if bn_stats == "recompute" and len(members) > 1:  # one ingredient stays exactly itself
            sets.recompute_batchnorm(model)

    def validation_of(members: list[int]) -> float:
        load(members)
        return float(sets.measure(model, [VALIDATION])[VALIDATION]["accuracy"])

    ingredients: list[dict[str, Any]] = []
    if method == "greedy":
        kept = [order[0]]
        current = validation_of(kept)
        ingredients.append(_ingredient(records[order[0]], scores[order[0]], True, current))
        log(f"greedy soup: start with {records[order[0]].run_dir.name} (validation {current:.4f})")
        for i in order[1:]:
            candidate = validation_of([*kept, i])
            keep = candidate >= current
            if keep:
                kept, current = [*kept, i], candidate
            ingredients.append(_ingredient(records[i], scores[i], keep, candidate))
            log(
                f"  + {records[i].run_dir.name}: soup validation {candidate:.4f} → "
                + ("kept" if keep else "left out")
            )
    elif method == "uniform":
        kept = list(order)
        ingredients = [_ingredient(records[i], scores[i], True, None) for i in order]
    else:
        raise UsageError(f"soup method {method!r}: greedy or uniform")
    load(kept)
    metrics = sets.measure(model)
    log(
        f"{method} soup of {len(kept)} of {len(records)} runs: "
        + "  ".join(f"{n} {m['accuracy']:.4f}" for n, m in metrics.items())
    )
    results = common_results(best.results, label, target.name, started, sets.as_results(metrics))
    # The soup's cost is every ingredient's fine-tuning, not only the best one's.
    results["wall_time_s"] = sum(float(r.results.get("wall_time_s") or 0.0) for r in records)
    results["wall_time_s"] += results["merge_time_s"]
    results["soup"] = {
        "method": method,
        "kept": len(kept),
        "bn_stats": bn_stats,
        "ingredients": ingredients,
    }
    from graft.reports.merging import render_soup_report

    return write_merged(
        target,
        force=force,
        source_run=best.run_dir,
        backbone=head.backbone,
        label_map=head.label_map,
        results=results,
        details_key="soup",
        render_report=render_soup_report,
    )


def _ingredient(record: Any, score: float, kept: bool, soup_val: float | None) -> dict[str, Any]:
    test = record.results.get("test") or {}
    return {
        "run": str(record.run_dir),
        "label": record.label,
        "seed": record.seed,
        "validation_accuracy": score,
        "test_accuracy": test.get("accuracy"),
        "extra_accuracy": {
            n: m.get("accuracy") for n, m in (record.results.get("extra") or {}).items()
        },
        "kept": kept,
        "soup_validation_accuracy": soup_val,
    }
