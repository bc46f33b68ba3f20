"""One entry point for loading examples, and the seeded, stratified train/validation/test split."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from graft.data.named import get_dataset
from graft.data.sources import (
    FORMATS,
    TABLE_SUFFIXES,
    read_idx,
    read_image_folder,
    read_table,
    require_file_or_folder,
)
from graft.data.targets import (
    Standardizer,
    label_sets,
    numeric_targets,
    rarest_label_keys,
    strata,
)
from graft.data.types import Examples, LabelMap, Splits, natural_key
from graft.errors import DataError, UsageError


def _infer_format(path: Path, labels_path: Path | None) -> str:
    if path.is_dir():
        return "image_folder"
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return TABLE_SUFFIXES[suffix]
    if labels_path is not None:
        return "idx"  # only IDX comes as a pair of files
    raise UsageError(
        f"{path}: cannot tell the data format from the name",
        hint="give a folder of class subfolders, a .csv/.tsv/.jsonl file, or the format "
        f"({', '.join(FORMATS)}); IDX files also need labels_path",
    )


def load_examples(
    *,
    dataset: str | None = None,
    split: str | None = None,
    format: str | None = None,
    path: str | Path | None = None,
    labels_path: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    delimiter: str | None = None,
) -> Examples:
    """Load examples from a named dataset or from the user's own file or folder.

    Exactly one of ``dataset`` (a named set; ``split`` defaults to "train" if it has one, else
    "all") and ``path`` must be given. For a path, ``format`` is one of image_folder, idx, csv,
    tsv, jsonl, or inferred: a folder is an image folder, .csv/.tsv/.jsonl/.json a table, and a
    file with ``labels_path`` an IDX pair.
    """
    if (dataset is None) == (path is None):
        raise UsageError(
            "give either a named dataset or a data path" + (", not both" if dataset else ""),
            hint="e.g. dataset='fashion_mnist', or path='data/train' (a folder or a table file)",
        )
    if dataset is not None:
        if format is not None or labels_path is not None:
            raise UsageError(
                f"format/labels_path apply to data files, not to the named dataset {dataset!r}"
            )
        info = get_dataset(dataset)
        return info.load(split if split is not None else info.default_split)

    assert path is not None
    if split is not None:
        raise UsageError(
            f"split={split!r} only applies to named datasets",
            hint="give each split of your own data as its own file or folder",
        )
    if format is not None and format not in FORMATS:
        raise UsageError(f"unknown data format {format!r}", hint=f"use one of {', '.join(FORMATS)}")
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path not found: {p}", hint="check the path")
    require_file_or_folder(p)
    lp = Path(labels_path) if labels_path is not None else None
    if lp is not None and lp.exists():
        require_file_or_folder(lp)
    fmt = format or _infer_format(p, lp)
    if lp is not None and fmt != "idx":
        raise UsageError(f"labels_path is only used with the idx format, not {fmt}")

    if fmt == "image_folder":
        return read_image_folder(p)
    if fmt == "idx":
        if lp is None:
            raise UsageError(
                f"{p}: the idx format needs labels_path (the labels IDX file)",
                hint="e.g. path=train-images-idx3-ubyte.gz labels_path=train-labels-idx1-ubyte.gz",
            )
        if not lp.exists():
            raise DataError(f"labels file not found: {lp}", hint="check the path")
        return read_idx(p, lp)
    if delimiter is not None and fmt != "csv":
        raise UsageError(f"delimiter applies to CSV files, not to {fmt}")
    return read_table(
        p, text_column=text_column, label_column=label_column, format=fmt, delimiter=delimiter
    )


# --------------------------------------------------------------------------- splitting


def _seed(seed: int, k: int) -> int:
    # A different stream per step (test carve, validation carve, each subsample), all from seed.
    return (seed * 7919 + k) % (2**32)


def _split_indexes(
    labels: Sequence[str], n_out: int, seed: int, origin: str, what: str, binned: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Indexes (kept, taken out) with ``n_out`` taken out, stratified by label when possible
    (``binned``: the keys are strata — a regression's quantile bins, a multi-label example's
    rarest label — not classes that training must keep)."""
    from sklearn.model_selection import train_test_split  # slow import: only when splitting

    n = len(labels)
    idx = np.arange(n)
    counts = Counter(labels)
    if binned:
        if n - n_out < 2:
            raise DataError(
                f"{origin}: too few examples ({n}) to carve {n_out} for {what}",
                hint=f"add data, lower the {what} fraction, or give a separate {what} set",
            )
        try:
            kept, out = train_test_split(
                idx, test_size=n_out, stratify=np.asarray(labels), random_state=seed
            )
        except ValueError:  # too few per bin: a plain seeded split
            kept, out = train_test_split(idx, test_size=n_out, random_state=seed)
        return np.sort(kept), np.sort(out)
    rare = sorted((c for c, k in counts.items() if k < 2), key=natural_key)
    if rare:
        shown = ", ".join(repr(c) for c in rare[:5]) + (" ..." if len(rare) > 5 else "")
        raise DataError(
            f"{origin}: cannot carve a {what} set: class(es) {shown} have only 1 example",
            hint=f"add examples of them, remove them, or give a separate {what} set",
        )
    if n - n_out < len(counts):
        raise DataError(
            f"{origin}: too few examples ({n}) to carve {n_out} for {what} and keep every "
            f"one of the {len(counts)} classes in training",
            hint=f"add data, lower the {what} fraction, or give a separate {what} set",
        )
    try:
        kept, out = train_test_split(
            idx, test_size=n_out, stratify=np.asarray(labels), random_state=seed
        )
    except ValueError as e:
        # E.g. fewer examples taken out than there are classes: no stratified split exists.
        # Say so, and fall back to a plain seeded split rather than fail.
        warnings.warn(
            f"{origin}: cannot stratify the {what} set ({e}); drawing it without stratification",
            stacklevel=3,
        )
        kept, out = train_test_split(idx, test_size=n_out, random_state=seed)
    return np.sort(kept), np.sort(out)


def _subsample(
    ex: Examples, size: int | None, seed: int, what: str, task: str = "classification"
) -> Examples:
    """At most ``size`` examples of ``ex``, stratified (by :func:`strata_of` for a regression
    or multi-label task); all of them if ``size`` >= len(ex)."""
    if size is None or size >= len(ex):
        return ex
    if size < 1:
        raise UsageError(f"{what}_size must be at least 1, got {size}")
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ex))
    keys = strata_of(ex, task)
    try:
        kept, _ = train_test_split(
            idx, train_size=size, stratify=np.asarray(keys), random_state=seed
        )
    except ValueError:
        # A class with a single example, or fewer slots than classes: a plain random subset
        # is the best that exists.
        kept = np.random.default_rng(seed).choice(len(ex), size=size, replace=False)
    # Original order: a subset reads like its source, and the training loop shuffles anyway.
    return ex.subset(np.sort(kept))


def strata_of(ex: Examples, task: str) -> Sequence[str]:
    """The keys a split of ``ex`` is stratified by: the class (classification), the quantile
    bin of the target (regression), the rarest label of the set (multi-label)."""
    if task == "regression":
        return strata(numeric_targets(ex))
    if task == "multilabel":
        return rarest_label_keys(label_sets(ex))
    return ex.labels


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise UsageError(f"{name} must be in [0, 1), got {value}")


def make_splits(
    train: Examples,
    validation: Examples | None = None,
    test: Examples | None = None,
    extra: Mapping[str, Examples] | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    extra_size: int | None = None,
    seed: int = 0,
    label_order: Sequence[str] | None = None,
    task: str = "classification",
    target_name: str = "label",
) -> Splits:
    """Build train/validation/test splits and the label map, deterministically from ``seed``.

    A missing ``test`` (if ``test_fraction`` > 0) and a missing ``validation`` are carved out of
    ``train`` by a seeded stratified split; the fractions are of the ``train`` given. Then each
    split may be subsampled (stratified) to ``train_size``/``val_size``/``test_size`` examples, and
    each extra set to ``extra_size`` (a
    size above what exists means all). The label map comes from the final training labels, in
    ``label_order`` (a named set's canonical order) if given; validation, test and extra sets
    may only use labels that training has.

    ``task="regression"``: labels are numbers (an error names the file and line of one that is
    not), splits are stratified by quantile bins of the targets, the label map names the one
    output (``target_name``) and ``scale`` holds the training targets' mean and std.
    """
    regression = task == "regression"
    binned = task != "classification"
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    carve_val = validation is None
    carve_test = test is None and test_fraction > 0
    if carve_val and val_fraction == 0:
        raise UsageError(
            "no validation set and val_fraction is 0",
            hint="give a validation set or a val_fraction such as 0.1",
        )
    frac = (val_fraction if carve_val else 0.0) + (test_fraction if carve_test else 0.0)
    if frac >= 1:
        raise UsageError(f"val_fraction + test_fraction must be below 1, got {frac}")
    for other in [validation, test, *(extra or {}).values()]:
        if other is not None and other.modality != train.modality:
            raise DataError(
                f"{other.origin}: {other.modality} examples, but training data "
                f"{train.origin} is {train.modality}"
            )

    for ex in [train, validation, test, *(extra or {}).values()] if binned else []:
        if ex is not None:  # every label read, before any split hides a bad one
            numeric_targets(ex) if regression else label_sets(ex)

    def keys(ex: Examples) -> Sequence[str]:
        return strata_of(ex, task)

    n = len(train)
    pool = train
    if carve_test:
        n_test = max(1, round(test_fraction * n))
        kept, out = _split_indexes(keys(pool), n_test, _seed(seed, 0), train.origin, "test", binned)
        test = pool.subset(out, origin=f"{train.origin} (test part)")
        pool = pool.subset(kept)
    if carve_val:
        n_val = max(1, round(val_fraction * n))
        where = (
            f"{train.origin} (what is left after the test split)" if carve_test else train.origin
        )
        kept, out = _split_indexes(keys(pool), n_val, _seed(seed, 1), where, "validation", binned)
        validation = pool.subset(out, origin=f"{train.origin} (validation part)")
        pool = pool.subset(kept)
    assert validation is not None

    pool = _subsample(pool, train_size, _seed(seed, 2), "train", task)
    validation = _subsample(validation, val_size, _seed(seed, 3), "val", task)
    if test is not None:
        test = _subsample(test, test_size, _seed(seed, 4), "test", task)
    extra = {
        k: _subsample(v, extra_size, _seed(seed, 5), "extra", task)
        for k, v in (extra or {}).items()
    }
    if regression:
        fitted = Standardizer.fit(numeric_targets(pool), pool.origin)
        return Splits(
            pool,
            validation,
            test,
            dict(extra),
            LabelMap((target_name,)),
            scale=(fitted.mean, fitted.std),
        )

    if task == "multilabel":  # the classes are the single labels, each set checked known
        label_map = LabelMap.from_labels([x for s in label_sets(pool) for x in s])
        for ex in [validation, test, *extra.values()]:
            if ex is not None:
                label_map.encode([x for s in label_sets(ex) for x in s], ex.origin)
        return Splits(pool, validation, test, dict(extra), label_map)
    label_map = LabelMap.from_labels(pool.labels, order=label_order)
    # Also catches training labels missing from label_order (from_labels would drop them).
    label_map.encode(pool.labels, pool.origin)
    if len(label_map) < 2:
        only = repr(label_map.names[0]) if label_map.names else "none"
        raise DataError(
            f"{pool.origin}: the training set has only one class ({only})",
            hint="a classifier needs examples of at least 2 classes",
        )
    label_map.encode(validation.labels, validation.origin)
    if test is not None:
        label_map.encode(test.labels, test.origin)
    for ex in (extra or {}).values():
        label_map.encode(ex.labels, ex.origin)
    return Splits(pool, validation, test, dict(extra or {}), label_map)
