"""The data of a run, read from its config: the labeled splits (with any few target labels
beside the training examples) and the sets whose labels a run never reads (a distillation's
unlabeled transfer set, an adaptation's target). Shared by ``prepare`` and by every command that
rebuilds a run's data (evaluation of merged models, deployment variants)."""

from __future__ import annotations

import dataclasses

import numpy as np

from graft.adapt.setup import unlabeled_target
from graft.config import DataConfig, DistillConfig, RunConfig, SourceConfig
from graft.data import Splits, get_dataset, load_examples, make_splits
from graft.data.hf import read_hf_dataset
from graft.data.memory import supplied_examples
from graft.data.types import Examples
from graft.distill import join_examples
from graft.distributed import active
from graft.errors import DataError, UsageError


def examples_of(source: SourceConfig, field: str) -> Examples:
    """The examples a config source names; an error names the config ``field``."""
    if source.memory is not None:  # given to graft.fit(train=...), converted there
        return supplied_examples(source.memory, field)
    file_options = {"format": source.format, "labels_path": source.labels_path}
    if source.hf_dataset is not None:
        if wrong := [k for k, v in {**file_options, "delimiter": source.delimiter}.items() if v]:
            raise UsageError(f"{field}.{wrong[0]}: applies to data files, not to hf_dataset")
        columns = source.model_dump(include={"split", "text_column", "label_column"})
        return read_hf_dataset(
            source.hf_dataset, image_column=source.image_column, field=field, **columns
        )
    if source.image_column is not None:
        raise UsageError(f"{field}.image_column: applies to hf_dataset and in-memory tables")
    try:
        return load_examples(**source.model_dump())
    except UsageError as e:  # an unknown dataset name, ...: say which config field holds it
        raise UsageError(f"{field}: {e.message}", hint=e.hint) from None


def load_splits(data: DataConfig, task: str = "classification") -> Splits:
    """Read every set the config names and split/subsample them (seeded, stratified); a
    ``regression`` reads the labels as numbers."""
    for field, source in _named_sources(data):
        try:
            kind = get_dataset(source).task
        except UsageError as e:  # an unknown name: say which config field holds it
            raise UsageError(f"{field}: {e.message}", hint=e.hint) from None
        if kind != task:
            raise UsageError(
                f"{field}: {source!r} is a {kind} dataset, but the config's task is {task}",
                hint=f"set `task: {kind}`, or name a {task} dataset",
            )
    train = examples_of(data.train, "data.train")
    validation = examples_of(data.validation, "data.validation") if data.validation else None
    test = examples_of(data.test, "data.test") if data.test else None
    label_order = None
    if data.train.dataset is not None:
        info = get_dataset(data.train.dataset)
        label_order = info.label_order
        # A named set's own test split is used when the config names none.
        if test is None and "test" in info.splits and data.train.split in (None, "train"):
            test = load_examples(dataset=data.train.dataset, split="test")
    extra = {
        name: examples_of(src, f"data.extra_eval.{name}") for name, src in data.extra_eval.items()
    }
    splits = make_splits(
        train,
        validation,
        test,
        extra,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        train_size=data.train_size,
        val_size=data.val_size,
        test_size=data.test_size,
        extra_size=data.extra_size,
        seed=data.seed,
        label_order=label_order,
        task=task,
        target_name="score" if data.train.dataset is not None else data.train.label_column,
    )
    if data.target_labeled is not None:  # a few target labels train beside the source's
        few = examples_of(data.target_labeled, "data.target_labeled")
        if data.target_labeled_size is not None and data.target_labeled_size < len(few):
            rng = np.random.default_rng(data.seed)
            few = few.subset(np.sort(rng.choice(len(few), data.target_labeled_size, False)))
        unknown = sorted(set(few.labels) - set(splits.label_map.names))
        if unknown and task == "classification":
            raise DataError(
                f"data.target_labeled: {few.origin} has labels the training set does not: "
                f"{', '.join(unknown[:5])}",
                hint=f"the classes are {', '.join(splits.label_map.names)}",
            )
        splits = dataclasses.replace(
            splits, train=join_examples(splits.train, few, "data.target_labeled")
        )
    return splits


def _named_sources(data: DataConfig) -> list[tuple[str, str]]:
    """(config field, dataset name) of every labeled set the config names by name."""
    sources = [("data.train", data.train), ("data.validation", data.validation)]
    sources += [("data.test", data.test), ("data.target_labeled", data.target_labeled)]
    sources += [(f"data.extra_eval.{k}", v) for k, v in data.extra_eval.items()]
    return [(f, s.dataset) for f, s in sources if s is not None and s.dataset is not None]


def unlabeled_sets(config: RunConfig) -> dict[str, Examples]:
    """The sets of a run whose labels it never reads, by config field: ``distill.unlabeled``
    and ``data.target_unlabeled`` (when its adaptation is on). Part of the data fingerprint."""
    found = {
        "distill.unlabeled": _unlabeled(config.distill, config.data.seed),
        "data.target_unlabeled": _target(config),
    }
    return {k: v for k, v in found.items() if v is not None}


def _target(config: RunConfig) -> Examples | None:
    """The unlabeled target set of an adaptation (``data.target_unlabeled``), labels blanked."""
    data = config.data
    if config.adapt.method == "none" or data.target_unlabeled is None:
        return None
    if active() is not None:
        raise UsageError(
            "adapt.method: a data-parallel run does not share the adaptation term's own "
            "parameters (DANN's domain classifier) between ranks yet",
            hint="run the adaptation without --nproc / torchrun",
        )
    examples = examples_of(data.target_unlabeled, "data.target_unlabeled")
    return unlabeled_target(examples, data.target_unlabeled_size, data.seed)


def _unlabeled(d: DistillConfig, seed: int) -> Examples | None:
    """The unlabeled transfer set of ``distill.unlabeled``, subsampled to ``unlabeled_size``."""
    if d.unlabeled is None:
        return None
    examples = examples_of(d.unlabeled, "distill.unlabeled")
    if d.unlabeled_size is not None and d.unlabeled_size < len(examples):
        # A plain seeded subset: labels it may have mean nothing here, so nothing to stratify.
        rng = np.random.default_rng(seed)
        examples = examples.subset(np.sort(rng.choice(len(examples), d.unlabeled_size, False)))
    return examples
