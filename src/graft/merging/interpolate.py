"""WiSE-FT: θ(α) = (1 − α)·θ_base + α·θ_ft between a fine-tuned model and a linear-probe end of
the same backbone, every α measured on the fine-tuned run's own validation, test and extra
(shifted-domain) sets, one α chosen on a held-out set (Wortsman et al. 2022, "Robust
fine-tuning of zero-shot models").

The α = 0 end (the *base*) is one of

* ``pretrained``: the pretrained body, with a head fitted as a linear probe on its features of
  the run's training set (features from the shared store when a run already computed them);
* a ``linear_probe`` run (or any graft model of the same architecture and classes);
* an LP-FT run: its probe phase's head (saved as ``probe_head.safetensors``) on the pretrained
  body.

With a pretrained body the base is evaluated on stored features, nearly free; every other α
costs one forward pass over the evaluation sets, batched once for all of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from graft.artifact import META, LoadedModel, load_model, require_classifier
from graft.atomic import check_target
from graft.config import RunConfig, load_config
from graft.errors import DataError, UsageError
from graft.init import fit_head_linear_probe
from graft.merging.evaluation import (
    TEST,
    VALIDATION,
    EvalSets,
    eval_sets,
    run_dir_of,
)
from graft.merging.output import check_label, common_results, write_merged
from graft.merging.weights import BnStats, check_same_model, cpu_state, interpolate_states
from graft.prepare import configured_backbone
from graft.rundir import CONFIG, MODEL_DIR, PROBE_HEAD, read_results
from graft.runtime import keep_freed_memory, set_threads

PRETRAINED = "pretrained"
DEFAULT_ALPHAS = "0:1:0.1"


def parse_alphas(text: str) -> list[float]:
    """``start:stop:step`` (both ends included) or a comma-separated list, each in [0, 1];
    the two ends 0 and 1 are always added (the picture and the comparison need them)."""
    where = f"--alphas {text!r}"
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError("a range is start:stop:step")
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ValueError("a range needs start <= stop and a step > 0")
            count = round((stop - start) / step)
            if count > 1000:
                raise ValueError("more than 1000 values")
            values = [start + i * step for i in range(count + 1)]
            if values[-1] < stop - 1e-9:
                values.append(stop)
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
            if not values:
                raise ValueError("no value")
    except ValueError as e:
        raise UsageError(
            f"{where}: {e}", hint="e.g. --alphas 0:1:0.1 or --alphas 0,0.25,0.5,0.75,1"
        ) from None
    if any(not 0.0 <= v <= 1.0 for v in values):  # also refuses nan
        bad = next(v for v in values if not 0.0 <= v <= 1.0)
        raise UsageError(f"{where}: α = {bad:g} is outside [0, 1]")
    rounded = {round(v, 6) for v in values} | {0.0, 1.0}
    return sorted(rounded)


@dataclass
class Base:
    """The α = 0 end: a model, what it is, and whether its body is the pretrained one (then it
    is evaluated on stored features)."""

    model: LoadedModel
    description: str
    pretrained_body: bool


def _pretrained_model(ft: LoadedModel, sets: EvalSets, option: str) -> LoadedModel:
    """The fine-tuned run's backbone, built again with its pretrained weights."""
    config = sets.config
    if config.init.body != "pretrained":
        raise UsageError(
            f"{option}: the fine-tuned run started from a randomly initialized body "
            "(init.body=random): it has no pretrained end to interpolate to",
            hint="give a linear-probe model of the same backbone as --base",
        )
    if not config.backbone.pretrained:
        raise UsageError(
            f"{option}: the fine-tuned run's backbone was not pretrained (backbone.pretrained: "
            "false): it has no pretrained end to interpolate to",
            hint="give a linear-probe model of the same backbone as --base",
        )
    backbone = configured_backbone(config, len(ft.label_map), pretrained=True)
    return LoadedModel(backbone, ft.label_map, {}, ft.folder)


def _probe_on_pretrained(ft: LoadedModel, sets: EvalSets, log: Callable[[str], None]) -> Base:
    base = _pretrained_model(ft, sets, "--base pretrained")
    model = base.backbone.model.to(sets.device)
    started = time.perf_counter()
    # The training loader's batch size, as `init.head: linear_probe` used: the same features
    # (bit for bit, and the same store entry), so the same deterministic fit, so the very head
    # such a fine-tuning run started from.
    train_batches = sets.loader(sets.splits.train, sets.config.train.batch_size)
    train = sets.features(model, train_batches)
    fit = fit_head_linear_probe(model.head, train.features, train.targets)
    origin = "stored" if train.from_store else "computed"
    log(
        f"base: the pretrained body with a linear probe fitted on its features of the "
        f"{len(train)} training examples ({origin}, {time.perf_counter() - started:.1f}s; "
        f"train accuracy {fit['accuracy']:.4f})"
    )
    return Base(base, f"pretrained body + linear probe on {len(train)} training examples", True)


def _lp_ft_probe(ft: LoadedModel, sets: EvalSets, run_dir: Path, option: str) -> Base:
    base = _pretrained_model(ft, sets, option)
    try:
        head = load_file(str(run_dir / PROBE_HEAD))
        base.backbone.model.head.load_state_dict(head, strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise DataError(f"{run_dir / PROBE_HEAD}: unreadable probe head ({e})") from None
    return Base(base, f"probe phase of {run_dir.name} (pretrained body + its probe head)", True)


def resolve_base(base: str, ft: LoadedModel, sets: EvalSets, log: Callable[[str], None]) -> Base:
    """The α = 0 end named by ``--base`` (see the module docstring), checked to be the fine-tuned
    model's architecture with its classes."""
    if base == PRETRAINED:
        resolved = _probe_on_pretrained(ft, sets, log)
    else:
        path = Path(base)
        run_dir = path.parent if path.name == MODEL_DIR else path
        if (run_dir / PROBE_HEAD).is_file():
            probe_config = load_config(run_dir / CONFIG)
            if probe_config.backbone != sets.config.backbone:
                raise UsageError(f"--base {base}: another backbone than the fine-tuned run's")
            labels = _saved_labels(run_dir)
            if labels != list(ft.label_map.names):
                raise UsageError(
                    f"--base {base}: its classes {labels} differ from the fine-tuned model's "
                    f"{list(ft.label_map.names)}"
                )
            init = probe_config.init
            if init.body != "pretrained" or init.reinit_top:
                raise UsageError(
                    f"--base {base}: its probe phase trained on a re-initialized body "
                    "(init.body / init.reinit_top), not the pretrained one"
                )
            resolved = _lp_ft_probe(ft, sets, run_dir, f"--base {base}")
        else:
            if not path.exists():
                raise UsageError(
                    f"--base {base}: no such directory",
                    hint="give `pretrained`, a linear-probe run directory or an LP-FT run",
                )
            model = load_model(path)
            resolved = Base(model, f"the model in {path}", False)
    check_same_model([("the fine-tuned model", ft), (f"--base {base}", resolved.model)])
    return resolved


def start_mismatch(base: str, config: RunConfig, lp_ft_base: bool) -> str | None:
    """Why the fine-tuned run did not start at ``base``, if it did not. WiSE-FT interpolates
    along the path fine-tuning took from its start: from any other point, the heads of the two
    ends come from unrelated starts and the middle of the path can be worse than both ends."""
    strategy = config.strategy.name
    if base == PRETRAINED:
        if config.init.head == "linear_probe" and config.init.reinit_top == 0:
            return None
        if strategy == "lp_ft":
            return "it is an LP-FT run: its probe phase is its start (--base RUN_DIR itself)"
        return "its head started at random (init.head: linear_probe starts it at this base)"
    if lp_ft_base:
        return None
    return "its start is not this model (a linear-probe run trained its head on its own)"


def _saved_labels(run_dir: Path) -> list[str]:
    """The classes of a run's saved model, from its description alone (no weights loaded)."""
    path = run_dir / MODEL_DIR / META
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: unreadable model description ({e})") from None
    return [str(x) for x in labels]


def _compact(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The curve keeps each set's accuracy, macro-F1 and loss (no confusion matrices)."""
    return {
        name: {k: float(m[k]) for k in ("accuracy", "macro_f1", "loss")}
        for name, m in results.items()
    }


def choose(points: Sequence[dict[str, Any]], select: str) -> dict[str, Any]:
    """The point with the best accuracy on ``select``; a tie goes to the larger α (the one
    closer to the fine-tuned model, whose in-domain accuracy the interpolation must keep)."""
    return max(points, key=lambda p: (p["sets"][select]["accuracy"], p["alpha"]))


def check_select(select: str, sets: EvalSets) -> str:
    """``--select``: ``val``/``validation`` or an extra set; never the test set."""
    if select in ("val", VALIDATION):
        return VALIDATION
    if select == TEST:
        raise UsageError(
            "--select test: α is chosen on held-out data, never on the test set it is judged on",
            hint=f"--select val, or an extra set: {', '.join(sets.extra_names) or 'none'}",
        )
    if select not in sets.extra_names:
        raise UsageError(
            f"--select {select}: not a set of the fine-tuned run",
            hint=f"val, or one of its extra sets: {', '.join(sets.extra_names) or 'none'}",
        )
    return select


def interpolate(
    tuned: str | Path,
    *,
    base: str = PRETRAINED,
    alphas: str | Sequence[float] = DEFAULT_ALPHAS,
    select: str = VALIDATION,
    output: str | Path | None = None,
    label: str = "wise_ft",
    bn_stats: BnStats = "mix",
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Interpolate the fine-tuned run ``tuned`` with ``base``, measure every α, write the model
    of the α chosen on ``select`` (with the whole curve) and return its directory (default:
    ``<tuned>-wise_ft`` beside the run). ``label`` names its row in ``graft report``.
    ``bn_stats``: BatchNorm running statistics mixed like the weights (``mix``), or measured
    again on the training examples for every 0 < α < 1 (``recompute``)."""
    started = time.perf_counter()
    check_label(label)
    values = (
        parse_alphas(alphas)
        if isinstance(alphas, str)
        else parse_alphas(",".join(str(a) for a in alphas))
    )
    run_dir = run_dir_of(tuned, "MODEL_FT")
    target = Path(output) if output is not None else run_dir.parent / f"{run_dir.name}-wise_ft"
    check_target(target, force)
    set_threads(None)
    keep_freed_memory()
    ft = load_model(run_dir / MODEL_DIR)
    require_classifier(ft, "graft interpolate")
    source = read_results(run_dir / "results.json")
    sets = eval_sets(run_dir, ft.backbone, list(ft.label_map.names))
    select = check_select(select, sets)
    resolved = resolve_base(base, ft, sets, log)
    log(f"α = 0: {resolved.description}; α = 1: {run_dir}")
    lp_ft_base = base != PRETRAINED and resolved.pretrained_body
    if (why := start_mismatch(base, sets.config, lp_ft_base)) is not None:
        log(
            f"warning: the fine-tuned run did not start at this base: {why}; the middle α may "
            "be worse than both ends"
        )

    model = ft.backbone.model.to(sets.device)
    tuned_state = cpu_state(model)
    base_state = cpu_state(resolved.model.backbone.model)
    points: list[dict[str, Any]] = []
    for alpha in values:
        began = time.perf_counter()
        if alpha == 0.0 and resolved.pretrained_body:
            metrics = sets.measure_head(resolved.model.backbone.model.to(sets.device))
        else:
            model.load_state_dict(interpolate_states(base_state, tuned_state, alpha))
            if bn_stats == "recompute" and 0.0 < alpha < 1.0:  # the ends stay exactly theirs
                sets.recompute_batchnorm(model)
            metrics = sets.measure(model)
        points.append({"alpha": alpha, "sets": _compact(metrics), "full": metrics})
        log(
            f"α {alpha:.2f}: "
            + "  ".join(f"{n} {m['accuracy']:.4f}" for n, m in metrics.items())
            + f"  ({time.perf_counter() - began:.1f}s)"
        )
    chosen = choose(points, select)
    model.load_state_dict(interpolate_states(base_state, tuned_state, chosen["alpha"]))
    if bn_stats == "recompute" and 0.0 < chosen["alpha"] < 1.0:
        sets.recompute_batchnorm(model)
    log(f"chosen on {select}: α = {chosen['alpha']:.2f}")
    details = {
        "alpha": chosen["alpha"],
        "select": select,
        "bn_stats": bn_stats,
        "base": base,
        "base_description": resolved.description,
        "tuned": str(run_dir),
        "curve": [{"alpha": p["alpha"], **p["sets"]} for p in points],
    }
    results = common_results(source, label, target.name, started, sets.as_results(chosen["full"]))
    results["interpolation"] = details
    from graft.reports.merging import render_interpolation_report

    return write_merged(
        target,
        force=force,
        source_run=run_dir,
        backbone=ft.backbone,
        label_map=ft.label_map,
        results=results,
        details_key="interpolation",
        render_report=render_interpolation_report,
    )
