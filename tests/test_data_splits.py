"""load_examples (the single entry point) and make_splits (seeded, stratified splitting)."""

from __future__ import annotations

import gzip
import struct
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data import Examples, load_examples, make_splits
from graft.errors import DataError, UsageError


def texts(counts: dict[str, int], origin: str = "mem") -> Examples:
    """Text examples whose inputs are unique ids, so splits can be checked for overlap."""
    labels = [lab for lab, k in counts.items() for _ in range(k)]
    return Examples("text", [f"{lab}-{i}" for i, lab in enumerate(labels)], labels, origin)


# --------------------------------------------------------------------------- load_examples


def test_load_named_default_split() -> None:
    ex = load_examples(dataset="digits")  # no "train" split: defaults to "all"
    assert ex.origin == "digits:all" and len(ex) == 1797
    with pytest.raises(UsageError, match=r"no split 'train'"):
        load_examples(dataset="digits", split="train")
    with pytest.raises(UsageError, match=r"unknown dataset"):
        load_examples(dataset="nope")


def test_load_paths_by_inferred_format(tmp_path: Path) -> None:
    for cls, v in (("a", 1), ("b", 2)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(np.full((2, 2), v, np.uint8)).save(tmp_path / "imgs" / cls / "x.png")
    ex = load_examples(path=tmp_path / "imgs")
    assert ex.modality == "image" and ex.labels == ["a", "b"]

    (tmp_path / "t.csv").write_text("review,y\ngood,1\nbad,0\n")
    ex = load_examples(path=str(tmp_path / "t.csv"), text_column="review", label_column="y")
    assert ex.inputs == ["good", "bad"] and ex.labels == ["1", "0"]
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": "p"}\n')
    assert load_examples(path=tmp_path / "t.jsonl").labels == ["p"]
    (tmp_path / "t.txt").write_text("text\tlabel\nx\ty\n")
    assert load_examples(path=tmp_path / "t.txt", format="tsv").labels == ["y"]

    def idx(a: np.ndarray) -> bytes:
        return (
            struct.pack(">HBB", 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
        )

    (tmp_path / "i.gz").write_bytes(gzip.compress(idx(np.zeros((2, 3, 3), np.uint8))))
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx(np.array([1, 0], np.uint8))))
    ex = load_examples(path=tmp_path / "i.gz", labels_path=tmp_path / "l.gz")
    assert isinstance(ex.inputs, np.ndarray) and ex.inputs.shape == (2, 3, 3)
    assert ex.labels == ["1", "0"]
    with pytest.raises(UsageError, match=r"needs labels_path"):
        load_examples(path=tmp_path / "i.gz", format="idx")
    with pytest.raises(DataError, match=r"labels file not found: .*missing.gz"):
        load_examples(path=tmp_path / "i.gz", labels_path=tmp_path / "missing.gz")


def test_load_examples_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("text,label\na,b\n")
    with pytest.raises(UsageError, match=r"either a named dataset or a data path"):
        load_examples()
    with pytest.raises(UsageError, match=r"not both"):
        load_examples(dataset="digits", path=tmp_path / "t.csv")
    with pytest.raises(DataError, match=r"data path not found: .*absent.csv"):
        load_examples(path=tmp_path / "absent.csv")
    with pytest.raises(UsageError, match=r"unknown data format 'xlsx'"):
        load_examples(path=tmp_path / "t.csv", format="xlsx")
    with pytest.raises(UsageError, match=r"split='test' only applies to named"):
        load_examples(path=tmp_path / "t.csv", split="test")
    with pytest.raises(UsageError, match=r"labels_path is only used with the idx"):
        load_examples(path=tmp_path / "t.csv", labels_path=tmp_path / "t.csv")
    (tmp_path / "blob.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"cannot tell the data format"):
        load_examples(path=tmp_path / "blob.bin")
    with pytest.raises(UsageError, match=r"format/labels_path apply to data files"):
        load_examples(dataset="digits", format="csv")


# --------------------------------------------------------------------------- make_splits


def test_carved_splits_are_stratified_disjoint_complete() -> None:
    train = texts({"a": 600, "b": 300, "c": 100})
    s = make_splits(train, seed=3)
    assert (len(s.train), len(s.validation), len(s.test)) == (700, 100, 200)  # type: ignore[arg-type]
    assert s.test is not None
    ids = [set(x.inputs) for x in (s.train, s.validation, s.test)]  # type: ignore[arg-type]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set.union(*ids) == set(train.inputs)  # type: ignore[arg-type]
    # Stratified: every part keeps the 60/30/10 proportions (to within one example).
    for part, n in ((s.train, 700), (s.validation, 100), (s.test, 200)):
        c = Counter(part.labels)
        for lab, frac in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
            assert abs(c[lab] - frac * n) <= 1, (part.origin, c)
        # inputs still match their labels after subsetting
        assert all(x.split("-")[0] == y for x, y in zip(part.inputs, part.labels, strict=True))
    assert s.label_map.names == ("a", "b", "c")
    assert "validation" in s.validation.origin and "test" in s.test.origin


def test_seed_determinism() -> None:
    train = texts({"x": 50, "y": 50})
    a, b = make_splits(train, seed=7), make_splits(train, seed=7)
    assert a.train.inputs == b.train.inputs and a.validation.inputs == b.validation.inputs
    assert a.test is not None and b.test is not None and a.test.inputs == b.test.inputs
    c = make_splits(train, seed=8)
    assert c.validation.inputs != a.validation.inputs


def test_given_splits_are_kept_and_fractions() -> None:
    train, val, test = texts({"x": 20, "y": 20}), texts({"x": 3, "y": 2}, "v"), texts({"x": 1}, "t")
    s = make_splits(train, val, test)
    assert s.train is train and s.validation is val and s.test is test
    s = make_splits(train, val, test_fraction=0)
    assert s.test is None and len(s.train) == 40
    s = make_splits(train, test_fraction=0, val_fraction=0.25)
    assert s.test is None and Counter(s.validation.labels) == {"x": 5, "y": 5}
    with pytest.raises(UsageError, match=r"val_fraction is 0"):
        make_splits(train, val_fraction=0)
    with pytest.raises(UsageError, match=r"must be below 1"):
        make_splits(train, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(UsageError, match=r"test_fraction must be in \[0, 1\)"):
        make_splits(train, test_fraction=1.5)


def test_subsampling_is_stratified_and_capped() -> None:
    train = texts({"a": 800, "b": 200})
    s = make_splits(train, train_size=100, val_size=20, test_size=10_000, seed=1)
    assert Counter(s.train.labels) == {"a": 80, "b": 20}
    assert Counter(s.validation.labels) == {"a": 16, "b": 4}
    assert s.test is not None and len(s.test) == 200  # larger than available: all of it
    # Subsampled inputs keep their original order.
    order = {x: i for i, x in enumerate(train.inputs)}
    assert [order[x] for x in s.train.inputs] == sorted(order[x] for x in s.train.inputs)
    with pytest.raises(UsageError, match=r"train_size must be at least 1"):
        make_splits(train, train_size=0)


def test_label_order_and_array_inputs() -> None:
    imgs = np.arange(40, dtype=np.uint8).reshape(40, 1, 1)
    labels = ["cat" if i % 2 else "dog" for i in range(40)]
    train = Examples("image", imgs, labels, "arr")
    s = make_splits(train, label_order=["zebra", "dog", "cat"], seed=0)
    assert s.label_map.names == ("dog", "cat")  # canonical order, restricted to present labels
    # Pixel value i was labeled by its parity: subsetting must keep rows and labels together.
    for part in (s.train, s.validation):
        assert isinstance(part.inputs, np.ndarray)
        assert [("cat" if int(v) % 2 else "dog") for v in part.inputs.ravel()] == part.labels
    with pytest.raises(DataError, match=r"labels never seen in training: 'dog'"):
        make_splits(train, label_order=["cat", "bird"])


def test_label_errors() -> None:
    train = texts({"a": 10, "b": 10})
    with pytest.raises(DataError, match=r"val: labels never seen in training: 'c'"):
        make_splits(train, texts({"a": 1, "c": 1}, "val"), test_fraction=0)
    with pytest.raises(DataError, match=r"shifted: labels never seen in training: 'z'"):
        make_splits(train, extra={"shift": texts({"z": 1}, "shifted")})
    with pytest.raises(DataError, match=r"only one class .'a'"):
        make_splits(texts({"a": 10}), texts({"a": 2}), test_fraction=0)
    with pytest.raises(DataError) as ei:
        make_splits(texts({"a": 10, "rare": 1}, "data.csv"))
    assert "data.csv" in str(ei.value) and "'rare'" in str(ei.value)
    assert "only 1 example" in str(ei.value)
    with pytest.raises(DataError, match=r"too few examples"):
        make_splits(texts({"a": 2, "b": 2}), test_fraction=0, val_fraction=0.9)
    with (
        pytest.warns(UserWarning, match=r"cannot stratify the test set"),
        pytest.raises(DataError, match=r"left after the test split.*'[ab]' have only 1 example"),
    ):
        make_splits(texts({"a": 2, "b": 2}))
    img = Examples("image", np.zeros((2, 1, 1), np.uint8), ["a", "b"], "img")
    with pytest.raises(DataError, match=r"img: image examples"):
        make_splits(train, img)


def test_unstratifiable_split_warns_and_falls_back() -> None:
    train = texts({str(i): 3 for i in range(10)})  # 30 examples, 10 classes
    with pytest.warns(UserWarning, match=r"without stratification"):
        s = make_splits(train, val_fraction=0.1, test_fraction=0)
    assert len(s.validation) == 3 and len(s.train) == 27
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_splits(texts({"a": 30, "b": 30}))  # the normal case warns about nothing
