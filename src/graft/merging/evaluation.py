"""The evaluation sets of a finished run, rebuilt from its saved config: the same validation,
test and extra sets (the splits are seeded), batched once with a model's preprocessing, so that
many variants of that model (every α of an interpolation, every candidate soup) are measured on
exactly what the run itself was measured on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from graft.checkpoint import data_fingerprint
from graft.config import RunConfig, load_config
from graft.data.types import Examples, Splits
from graft.errors import DataError
from graft.features.body import compute_features
from graft.features.store import shared_store
from graft.metrics import classification_metrics
from graft.models import Backbone
from graft.pipeline import Batch, Loaders, same_batches, to_device
from graft.run_data import load_splits, unlabeled_sets
from graft.rundir import CONFIG, MODEL_DIR, read_run_meta
from graft.runtime import Precision, autocast, resolve_precision, select_device
from graft.train import evaluate

VALIDATION = "validation"
TEST = "test"


def run_dir_of(path: str | Path, what: str) -> Path:
    """The run directory of ``path`` (a run directory, or its ``model/`` folder): one with a
    saved config, which is where the data to evaluate on is described."""
    path = Path(path)
    if path.name == MODEL_DIR and (path.parent / CONFIG).is_file():
        path = path.parent
    if not (path / CONFIG).is_file() or not (path / MODEL_DIR).is_dir():
        raise DataError(
            f"{what} {path}: not a finished graft run directory (it needs {CONFIG} and "
            f"{MODEL_DIR}/)",
            hint="give a directory written by `graft fit` (or by graft interpolate / soup)",
        )
    return path


@dataclass
class EvalSets:
    """A run's evaluation sets, batched for one architecture's preprocessing."""

    run_dir: Path
    config: RunConfig
    splits: Splits
    loaders: Loaders
    batches: dict[str, DataLoader[Batch]]  # "validation", "test", then each extra set
    device: torch.device
    precision: Precision
    fingerprint: str
    _train_batches: DataLoader[Batch] | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.splits.label_map.names)

    @property
    def extra_names(self) -> list[str]:
        return [n for n in self.batches if n not in (VALIDATION, TEST)]

    def loader(self, examples: Examples, batch_size: int | None = None) -> DataLoader[Batch]:
        """Evaluation batches of ``examples`` (length-grouped for text; targets travel along)."""
        t = self.config.train
        size = batch_size or t.eval_batch_size or 2 * t.batch_size
        targets = self.splits.label_map.encode(examples.labels, examples.origin)
        return self.loaders.loader(examples, targets, size, shuffle=False, by_length=True)

    def measure(
        self, model: torch.nn.Module, names: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Metrics of ``model`` on the named sets (default: all of them)."""
        return {
            name: self._metrics(evaluate(model, self.batches[name], self.device, self.precision))
            for name in names or list(self.batches)
        }

    def measure_head(
        self, model: torch.nn.Module, names: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Like :meth:`measure` for a model whose body is the pretrained one: its features come
        from the shared feature store when a run on these sets already computed them."""
        out = {}
        for name in names or list(self.batches):
            loader = self.batches[name]
            features = self.features(model, loader)
            head_batches = same_batches(features, loader)
            out[name] = self._metrics(
                evaluate(model.head, head_batches, self.device, self.precision)  # type: ignore[arg-type]
            )
        return out

    def features(self, model: torch.nn.Module, loader: DataLoader[Batch]) -> Any:
        """The body's features over ``loader``'s examples (see :func:`compute_features`)."""
        store = shared_store() if self.config.train.feature_cache else None
        return compute_features(model, loader, self.device, self.precision, store)

    def recompute_batchnorm(self, model: torch.nn.Module) -> int:
        """Replace the BatchNorm running statistics of ``model`` by those of its own activations
        on the run's training examples (un-augmented), a cumulative average over one pass.
        Mixed weights do not have the mixed statistics: an interpolated or averaged network's
        activations have their own mean and variance, often smaller (Jordan et al. 2023,
        "REPAIR"). Returns how many BatchNorm layers were reset (0: none, nothing ran)."""
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return 0
        if self._train_batches is None:
            self._train_batches = self.loader(self.splits.train)
        momenta = [m.momentum for m in norms]
        model.eval()  # dropout off: only the BatchNorm layers gather statistics
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the pass, not an exponential one
            m.train()
        try:
            with torch.no_grad(), autocast(self.device, self.precision):
                for batch in self._train_batches:
                    model(**to_device(batch, self.device)["inputs"])
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            model.eval()
        return len(norms)

    def as_results(self, metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Metrics of every set (:meth:`measure`) in a run's results layout: validation, test,
        extra."""
        return {
            "validation": metrics[VALIDATION],
            "test": metrics.get(TEST),
            "extra": {n: metrics[n] for n in self.extra_names},
        }

    def _metrics(self, out: dict[str, Any]) -> dict[str, Any]:
        preds = out["logits"].argmax(1).numpy()
        return classification_metrics(out["targets"], preds, self.labels, loss=out["loss"])


def eval_sets(run_dir: Path, backbone: Backbone, label_names: list[str]) -> EvalSets:
    """The evaluation sets of ``run_dir`` batched for ``backbone``. The data is read again from
    the run's config: a changed dataset (another fingerprint than the run's) is refused, since
    the numbers would not be comparable with the run's own."""
    config = load_config(run_dir / CONFIG)
    splits = load_splits(config.data, config.task)
    if list(splits.label_map.names) != list(label_names):
        raise DataError(
            f"{run_dir / CONFIG}: its data has the classes {list(splits.label_map.names)}, the "
            f"model {label_names}",
        )
    fingerprint = data_fingerprint(splits, unlabeled_sets(config))
    recorded = read_run_meta(run_dir).get("data_fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise DataError(
            f"{run_dir}: the data its config names changed since the run (another fingerprint)",
            hint="results on other data would not be comparable with the run's; fine-tune again",
        )
    device = select_device(config.hardware.device)
    precision = resolve_precision(config.train.precision, device, cnn=backbone.is_cnn)
    loaders = Loaders(backbone.preprocess, backbone.tokenizer, False, 0, config.train.seed)
    sets = EvalSets(run_dir, config, splits, loaders, {}, device, precision, fingerprint)
    named = {VALIDATION: splits.validation, TEST: splits.test, **splits.extra}
    sets.batches = {name: sets.loader(ex) for name, ex in named.items() if ex is not None}
    return sets
