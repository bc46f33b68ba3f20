"""Pruning after fine-tuning (``graft prune``), with optional recovery fine-tuning.

* ``magnitude``: global unstructured magnitude pruning (``torch.nn.utils.prune``,
  ``L1Unstructured`` over every ``nn.Linear`` / ``nn.Conv2d`` weight of the body and the head,
  embeddings excepted), made permanent. It only zeroes weights: dense CPU kernels multiply
  zeros as fast as any other number, so the model is **not faster**, and its file is as large.
* ``structured``: whole channels of a CNN, whole attention heads and FFN neurons of a BERT-like
  encoder (:mod:`graft.deploy.structured`): the model has fewer parameters and really runs
  smaller. Its new shapes go into ``graft_model.json`` (``"shapes"``,
  :mod:`graft.models.shapes`), which :func:`graft.artifact.load_model` applies.

``finetune_epochs=N`` then trains the pruned model for N epochs with the source run's own config
(strategy ``full``, every group trainable) through :func:`graft.run.fit`, starting from the
pruned weights (``backbone.init_from``). The output is a run-like directory (``model/``,
``config.yaml``, ``run.json``, ``results.json``) written in a temporary folder and renamed at
the end: nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from graft.artifact import WEIGHTS, LoadedModel, load_model, require_classifier, save_model
from graft.atomic import atomic_write_text, check_target, staged_dir
from graft.config import load_config
from graft.deploy.structured import check_structured, prune_structured
from graft.errors import UsageError
from graft.merging.evaluation import TEST, VALIDATION, EvalSets, eval_sets, run_dir_of
from graft.merging.output import common_results
from graft.models.shapes import module_shapes, pruned_shapes
from graft.rundir import CONFIG, METRICS, MODEL_DIR, RESULTS, RUN_META, read_results

Method = Literal["magnitude", "structured"]
METHODS: tuple[str, ...] = ("magnitude", "structured")
NOT_FASTER = (
    "magnitude pruning only zeroes weights: dense CPU kernels are not faster on zeros and the "
    "file is as large (use --method structured for a smaller, faster model)"
)


# --------------------------------------------------------------------------- options


def check_amount(amount: float) -> float:
    """``--amount``: a fraction strictly between 0 and 1."""
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount < 1:
        raise UsageError(
            f"--amount {amount}: the fraction to prune must be between 0 and 1 (exclusive)",
            hint="e.g. --amount 0.3 (or several: --amount 0.1,0.3,0.5)",
        )
    return float(amount)


def parse_amounts(text: str) -> list[float]:
    """``--amount 0.3`` or ``--amount 0.1,0.3,0.5``: the fractions, each checked, no repeats."""
    amounts = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--amount {text}: {part!r} is not a number") from None
        amounts.append(check_amount(value))
    if len(set(amounts)) != len(amounts):
        raise UsageError(f"--amount {text}: an amount is repeated")
    return amounts


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"--method {method}: choose one of {', '.join(METHODS)}")
    return method


# --------------------------------------------------------------------------- in memory


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    """The ``nn.Linear`` and ``nn.Conv2d`` layers magnitude pruning covers: body and head,
    without embedding layers (a ViT's patch embedding, whose name says ``embed``)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
        and not any("embed" in part for part in name.split("."))
    ]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sparsity(model: nn.Module) -> dict[str, float]:
    """The fraction of zeros among the prunable weights (``pruned_weights``) and among all
    parameters (``overall``)."""
    weights = [m.weight for _, m in prunable_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    return {
        "pruned_weights": zeros / max(total, 1),
        "overall": all_zeros / max(count_parameters(model), 1),
    }


def magnitude_prune(model: nn.Module, amount: float) -> dict[str, Any]:
    """Zero the ``amount`` fraction of smallest-magnitude weights over all prunable layers
    together (global, not per layer), permanently (no masks or ``weight_orig`` left). Does not
    make dense kernels faster: see the module docstring."""
    from torch.nn.utils import prune

    layers = prunable_layers(model)
    params = [(m, "weight") for _, m in layers]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for m, name in params:
        prune.remove(m, name)
    return {"rule": "global L1 magnitude", "layers": len(layers), "note": NOT_FASTER}


def prune_backbone(loaded: LoadedModel, method: Method, amount: float) -> dict[str, Any]:
    """Prune ``loaded``'s model in place (on the CPU); return what was done: method, amount,
    sparsity, parameter counts, and the shapes to record (all differences from the rebuilt
    architecture, those of an earlier pruning included)."""
    check_method(method)
    check_amount(amount)
    backbone = loaded.backbone
    model = backbone.model.to("cpu")
    if method == "structured":
        check_structured(backbone)  # before anything changes
    before_shapes = module_shapes(model)
    params_before = count_parameters(model)
    if method == "magnitude":
        details = magnitude_prune(model, amount)
    else:
        details = prune_structured(backbone, amount)
    _refresh_groups(loaded)
    shapes = {**(loaded.meta.get("shapes") or {})}
    for name, attrs in pruned_shapes(model, before_shapes).items():
        shapes[name] = {**shapes.get(name, {}), **attrs}
    return {
        "method": method,
        "amount": amount,
        "sparsity": sparsity(model),
        "params_before": params_before,
        "params_after": count_parameters(model),
        "details": details,
        "shapes": shapes,
    }


def _refresh_groups(loaded: LoadedModel) -> None:
    """torch-pruning replaces the parameters it shrinks by new ones: the layer groups must
    point at the model's current parameters (by name) again."""
    params = dict(loaded.backbone.model.named_parameters())
    for group in loaded.backbone.groups:
        group.params = [(name, params[name]) for name, _ in group.params]


# --------------------------------------------------------------------------- on disk


@dataclass
class Source:
    """The model to prune: its folder, its run directory (if it is a run's), and what the run
    recorded (its results and the evaluation sets, rebuilt once)."""

    path: Path
    run_dir: Path | None
    results: dict[str, Any] = field(default_factory=dict)
    sets: EvalSets | None = None

    @classmethod
    def of(cls, model_path: str | Path) -> Source:
        path = Path(model_path)
        in_run = (path / CONFIG).is_file() or (
            path.name == MODEL_DIR and (path.parent / CONFIG).is_file()
        )
        run_dir = run_dir_of(path, "MODEL") if in_run else None
        results = {}
        if run_dir is not None and (run_dir / RESULTS).is_file():
            results = read_results(run_dir / RESULTS)
        return cls(path, run_dir, results)

    def load(self) -> LoadedModel:
        loaded = load_model(self.path)
        require_classifier(loaded, "graft prune")
        if self.run_dir is not None and self.sets is None:
            self.sets = eval_sets(self.run_dir, loaded.backbone, list(loaded.label_map.names))
        return loaded

    def measure(self, model: nn.Module) -> dict[str, dict[str, Any]] | None:
        """Metrics on the run's own sets (None: the source is a bare model folder)."""
        if self.sets is None:
            return None
        model.to(self.sets.device)
        try:
            return self.sets.measure(model)
        finally:
            model.to("cpu")


def _accuracies(metrics: dict[str, dict[str, Any]] | None) -> dict[str, float | None]:
    metrics = metrics or {}
    return {
        name: (float(metrics[name]["accuracy"]) if name in metrics else None)
        for name in (VALIDATION, TEST)
    }


def _check_request(source: Source, finetune_epochs: int) -> None:
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int):
        raise UsageError(f"--finetune-epochs {finetune_epochs}: a whole number of epochs")
    if finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs {finetune_epochs}: must be 0 or more")
    if finetune_epochs and source.run_dir is None:
        raise UsageError(
            f"--finetune-epochs {finetune_epochs}: {source.path} is a model folder without its "
            "run's config.yaml, so there is no data or settings to fine-tune with",
            hint="give the run directory written by `graft fit`",
        )


def _recover(
    source: Source,
    loaded: LoadedModel,
    info: dict[str, Any],
    epochs: int,
    scratch: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Fine-tune the pruned model for ``epochs`` with the source run's config (strategy full)
    through :func:`graft.run.fit`; load the best weights into ``loaded``; return its plan."""
    from safetensors.torch import load_file

    from graft.run import fit

    assert source.run_dir is not None
    pruned_dir = scratch / "pruned"
    _save(pruned_dir, loaded, info, plan=loaded.meta.get("plan") or {}, metrics=None)
    config = load_config(source.run_dir / CONFIG).model_dump(mode="json")
    # The run's own settings (optimizer, LR, schedule, batch size, data), started from the
    # pruned model, all groups training. Its init: section described how the run's head
    # started; the pruned model's head is already trained, so the default (keep) applies.
    config["backbone"].update(init_from=str(pruned_dir), keep_layers=None)
    config["init"] = {}
    config["strategy"] = {"name": "full"}
    config["train"]["epochs"] = epochs
    config["output"] = {"dir": str(scratch / "runs"), "name": "recovery", "progress": False}
    log(f"recovery: fine-tuning the pruned model for {epochs} epoch(s) (strategy full)")
    result = fit(config, quiet=True)
    state = load_file(str(result.model_dir / WEIGHTS))
    loaded.backbone.model.load_state_dict(state, strict=True)
    meta = json.loads((result.model_dir / "graft_model.json").read_text(encoding="utf-8"))
    return dict(meta.get("plan") or {})


def _save(
    folder: Path,
    loaded: LoadedModel,
    info: dict[str, Any],
    *,
    plan: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> None:
    meta = loaded.meta
    provenance: dict[str, Any] = {
        "config_hash": str(meta.get("config_hash")),
        "data_fingerprint": str(meta.get("data_fingerprint")),
        "pruned": {k: v for k, v in info.items() if k != "shapes"},
    }
    if info["shapes"]:
        provenance["shapes"] = info["shapes"]
    loaded.backbone.model.to("cpu")
    save_model(
        folder, loaded.backbone, loaded.label_map, plan=plan, metrics=metrics, provenance=provenance
    )


def _prune_into(
    dest: Path,
    source: Source,
    *,
    method: Method,
    amount: float,
    finetune_epochs: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Prune the source at ``amount`` and write the whole output directory into ``dest``;
    return its results."""
    started = time.perf_counter()
    loaded = source.load()
    model = loaded.backbone.model
    before = source.measure(model)
    info = prune_backbone(loaded, method, amount)
    info["source"] = str(source.path)
    info["finetune_epochs"] = finetune_epochs
    after = source.measure(model)
    accuracy = {
        "before": _accuracies(before),
        "after_pruning": _accuracies(after),
        "after_recovery": None,
    }
    plan = dict(loaded.meta.get("plan") or {})
    final = after
    if finetune_epochs:
        with tempfile.TemporaryDirectory(prefix=".graft-prune-", dir=dest.parent) as scratch:
            plan = _recover(source, loaded, info, finetune_epochs, Path(scratch), log)
        final = source.measure(model)
        accuracy["after_recovery"] = _accuracies(final)
    info["accuracy"] = accuracy
    dest.mkdir(parents=True, exist_ok=True)
    evaluated: dict[str, Any] = {"validation": None, "test": None, "extra": {}}
    if source.sets is not None and final is not None:
        evaluated = source.sets.as_results(final)
    _save(dest / MODEL_DIR, loaded, info, plan=plan, metrics=evaluated)
    if source.run_dir is not None:
        shutil.copyfile(source.run_dir / CONFIG, dest / CONFIG)
    run_meta = {
        "config_hash": loaded.meta.get("config_hash"),
        "data_fingerprint": loaded.meta.get("data_fingerprint"),
        "made_by": "pruned",
    }
    atomic_write_text(dest / RUN_META, json.dumps(run_meta))
    atomic_write_text(dest / METRICS, "")
    label = f"pruned_{method}_{amount:g}" + (f"_ft{finetune_epochs}" if finetune_epochs else "")
    results = common_results(source.results, label, dest.name, started, evaluated)
    results["total_params"] = info["params_after"]
    results["pruned"] = {k: v for k, v in info.items() if k != "shapes"}
    atomic_write_text(dest / RESULTS, json.dumps(results, indent=1))
    log(summary(info))
    return results


def summary(info: dict[str, Any]) -> str:
    """A few lines: parameters before and after, sparsity, accuracies."""
    s = info["sparsity"]
    lines = [
        f"{info['method']} pruning, amount {info['amount']:g}: parameters "
        f"{info['params_before']:,} → {info['params_after']:,} "
        f"({info['params_after'] / max(info['params_before'], 1):.1%}); zeros "
        f"{s['pruned_weights']:.1%} of the pruned weights, {s['overall']:.1%} overall"
    ]
    if info["method"] == "magnitude":
        lines.append(f"  note: {NOT_FASTER}")
    for stage, acc in (info.get("accuracy") or {}).items():
        if acc and acc.get(VALIDATION) is not None:
            test = acc.get(TEST)
            lines.append(
                f"  {stage.replace('_', ' ')}: validation accuracy {acc[VALIDATION]:.4f}"
                + (f", test {test:.4f}" if test is not None else "")
            )
    return "\n".join(lines)


def prune(
    model_path: str | Path,
    *,
    method: Method,
    amount: float,
    finetune_epochs: int = 0,
    out: str | Path,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Prune the model of ``model_path`` (a run directory, or a model folder) by ``method`` at
    ``amount``, optionally fine-tune it ``finetune_epochs`` epochs to recover (a run directory
    is needed), and write the output directory ``out`` (see the module docstring); return it.
    Magnitude pruning only zeroes weights and does not make dense CPU kernels faster."""
    check_method(method)
    check_amount(amount)
    target = Path(out)
    check_target(target, force)
    source = Source.of(model_path)
    _check_request(source, finetune_epochs)
    with staged_dir(target, "pruned model") as tmp:
        _prune_into(
            tmp, source, method=method, amount=amount, finetune_epochs=finetune_epochs, log=log
        )
    return target


def prune_curve(
    model_path: str | Path,
    *,
    method: Method,
    amounts: Sequence[float],
    finetune_epochs: int = 0,
    out: str | Path,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Prune at each of ``amounts``: ``out/amount-A/`` is each pruned model's directory (as
    :func:`prune` writes it), ``out/results.json`` the curve of size and sparsity against
    accuracy. Returns ``out``."""
    check_method(method)
    amounts = [check_amount(a) for a in amounts]
    if not amounts:
        raise UsageError("--amount: give at least one amount")
    target = Path(out)
    check_target(target, force)
    source = Source.of(model_path)
    _check_request(source, finetune_epochs)
    curve = []
    with staged_dir(target, "pruned models") as tmp:
        for amount in amounts:
            results = _prune_into(
                tmp / f"amount-{amount:g}",
                source,
                method=method,
                amount=amount,
                finetune_epochs=finetune_epochs,
                log=log,
            )
            info = results["pruned"]
            final = info["accuracy"]["after_recovery"] or info["accuracy"]["after_pruning"]
            curve.append(
                {
                    "amount": amount,
                    "dir": f"amount-{amount:g}",
                    "params_before": info["params_before"],
                    "params_after": info["params_after"],
                    "sparsity": info["sparsity"],
                    "accuracy_before": info["accuracy"]["before"],
                    "accuracy": final,
                }
            )
        doc = {"method": method, "source": str(source.path), "curve": curve}
        atomic_write_text(tmp / RESULTS, json.dumps(doc, indent=1))
    return target
