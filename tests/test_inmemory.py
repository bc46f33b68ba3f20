"""Data given in memory to ``graft.fit`` (a DataFrame, arrays, lists, a Hugging Face Dataset or
DatasetDict, a torch Dataset) and Hugging Face datasets as a config source: each run is the run
on the same data written as files, bit for bit (steps and saved weights); the fingerprint sees
one changed example; bad input is one line naming the column, argument or index, and nothing
is written.

Text runs use the tiny random-init BERT with the real MiniLM tokenizer on real VADER movie
snippets; image runs the tiny random-init EfficientNet on real MNIST digits (mnist5k).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

os.environ["HF_DATASETS_OFFLINE"] = "1"  # never the network (before `datasets` is imported)

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_image_run_config
from safetensors.torch import load_file

from graft.artifact import load_model
from graft.data import load_examples
from graft.data.memory import to_examples
from graft.errors import DataError, UsageError
from graft.run import fit

N_TEXT = 96  # VADER movie snippets: every 100th, both classes
N_IMAGE = 90  # MNIST digits, 9 of each class


@pytest.fixture(scope="module")
def movies() -> tuple[list[str], list[str]]:
    ex = load_examples(dataset="vader_movies").subset(range(0, N_TEXT * 100, 100))
    return list(ex.inputs), list(ex.labels)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, list[str]]:
    ex = load_examples(dataset="mnist5k").subset(range(0, N_IMAGE * 50, 50))
    assert isinstance(ex.inputs, np.ndarray)
    return ex.inputs, list(ex.labels)


def _text_config(out: Path, bert: Path, name: str, train: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {"max_length": 32}
    if train is not None:
        data["train"] = train
    return {
        "backbone": {"name": str(bert), "source": "hf", "pretrained": False},
        "data": data,
        "optim": {"lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 16},
        "hardware": {"threads": 1},
        "output": {"dir": str(out), "name": name, "progress": False},
    }


def _steps(run_dir: Path) -> list[Any]:
    return [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]


def _same_run(a: Path, b: Path) -> None:
    """Bit for bit: every step's loss, the saved weights, the data fingerprint, the results."""
    assert _steps(a) == _steps(b)
    wa = load_file(str(a / "model" / "model.safetensors"))
    wb = load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert ra["data_fingerprint"] == rb["data_fingerprint"]
    for key in ("validation", "test"):
        assert ra[key] == rb[key]


@pytest.fixture(scope="module")
def text_reference(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, movies: Any
) -> Path:
    """The run on the texts as a CSV file."""
    tmp = tmp_path_factory.mktemp("text-ref")
    path = tmp / "movies.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(zip(*movies, strict=True))
    columns = {"text_column": "review", "label_column": "sentiment"}
    config = _text_config(tmp, tiny_bert_dir, "csv", {"path": str(path), **columns})
    return fit(config, quiet=True).run_dir


class _Pairs(torch.utils.data.Dataset[tuple[Any, Any]]):
    def __init__(self, inputs: Any, labels: list[Any]) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.inputs[i], self.labels[i]


def _text_kinds(texts: list[str], labels: list[str]) -> dict[str, Any]:
    import datasets

    frame = pd.DataFrame({"review": texts, "sentiment": labels})
    table = {"review": texts, "sentiment": labels}
    return {
        "DataFrame": frame,
        "pair": (texts, np.asarray(labels)),
        "list": list(zip(texts, labels, strict=True)),
        "Dataset": datasets.Dataset.from_dict(table),
        # A ClassLabel column: its indexes read as the names.
        "Dataset-ClassLabel": datasets.Dataset.from_dict(table).class_encode_column("sentiment"),
        "DatasetDict": datasets.DatasetDict(train=datasets.Dataset.from_dict(table)),
        "torch": _Pairs(texts, labels),
    }


@pytest.mark.integration
def test_each_text_kind_is_the_run_on_the_csv_file(
    tmp_path: Path, tiny_bert_dir: Path, movies: Any, text_reference: Path
) -> None:
    columns = {"text_column": "review", "label_column": "sentiment"}
    model = load_model(text_reference / "model")
    texts, labels = movies
    frame = pd.DataFrame({"text": texts[:5], "label": labels[:5]})
    assert model.predict(frame) == model.predict(texts[:5])
    assert model.evaluate(frame) == model.evaluate(
        load_examples(dataset="vader_movies").subset(range(0, 500, 100))
    )
    for kind, data in _text_kinds(*movies).items():
        # The column names sit where a file's would, in the config's data.train.
        config = _text_config(tmp_path, tiny_bert_dir, kind, columns)
        run = fit(config, train=data, quiet=True).run_dir
        _same_run(run, text_reference)
        saved = (run / "config.yaml").read_text()
        assert "memory: train\n" in saved and "review" in saved, kind


@pytest.mark.integration
def test_hf_dataset_source_from_disk_is_the_run_on_the_csv_file(
    tmp_path: Path, tiny_bert_dir: Path, movies: Any, text_reference: Path
) -> None:
    import datasets

    texts, labels = movies
    folder = tmp_path / "saved"
    table = {"review": texts, "sentiment": labels}
    datasets.DatasetDict(train=datasets.Dataset.from_dict(table)).save_to_disk(str(folder))
    source = {"hf_dataset": str(folder), "split": "train"}
    source |= {"text_column": "review", "label_column": "sentiment"}
    run = fit(_text_config(tmp_path, tiny_bert_dir, "hf", source), quiet=True).run_dir
    _same_run(run, text_reference)
    # A hub name, offline (as every test is): one line naming the field, nothing written.
    hub = _text_config(tmp_path / "hub", tiny_bert_dir, "x", {"hf_dataset": "graft-tests/absent"})
    with pytest.raises(DataError, match=r"^data\.train: cannot load the Hugging Face dataset"):
        fit(hub, quiet=True)
    assert not (tmp_path / "hub").exists()
    # A split the saved dataset does not have: named, with the ones it has.
    with pytest.raises(DataError, match=r"data\.train: .*no split 'test' \(splits: 'train'\)"):
        fit(_text_config(tmp_path, tiny_bert_dir, "x", {**source, "split": "test"}), quiet=True)


def _idx(path: Path, array: np.ndarray) -> Path:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.integration
def test_each_image_kind_is_the_run_on_idx_files(tmp_path: Path, digits: Any) -> None:
    images, labels = digits
    ints = np.asarray([int(x) for x in labels], dtype=np.uint8)
    source = {
        "path": str(_idx(tmp_path / "images.gz", images)),
        "labels_path": str(_idx(tmp_path / "labels.gz", ints)),
        "format": "idx",
    }
    reference = fit(tiny_image_run_config(source, tmp_path, output={"name": "idx"}), quiet=True)
    kinds = {
        "arrays": (images, ints),
        "rgb-arrays": (np.repeat(images[..., None], 1, axis=-1), ints.tolist()),
        "tensors": (torch.from_numpy(images), torch.from_numpy(ints.astype(np.int64))),
        "DataFrame-png": pd.DataFrame({"image": [_png(x) for x in images], "label": labels}),
        "torch": _Pairs(torch.from_numpy(images), [int(x) for x in ints]),
    }
    for kind, data in kinds.items():
        config = tiny_image_run_config({}, tmp_path, output={"name": kind})
        del config["data"]["train"]  # a config for in-memory data needs no source
        run = fit(config, train=data, quiet=True)
        _same_run(run.run_dir, reference.run_dir)
    # Image paths in a DataFrame: the run on the image folder they are in.
    folder = tmp_path / "folder"
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{i:03d}.png").write_bytes(_png(image))
    from_folder = load_examples(path=str(folder))
    folder_config = tiny_image_run_config({"path": str(folder)}, tmp_path, output={"name": "f"})
    by_folder = fit(folder_config, quiet=True)
    paths = pd.DataFrame(
        {"image": [str(p) for p in from_folder.inputs], "label": from_folder.labels}
    )
    config = tiny_image_run_config({}, tmp_path, output={"name": "paths"})
    del config["data"]["train"]
    _same_run(fit(config, train=paths, quiet=True).run_dir, by_folder.run_dir)
    # A saved model evaluates and predicts in-memory data as it does the files.
    model = load_model(reference.model_dir)
    from_files = load_examples(**source)
    assert model.evaluate((images, ints)) == model.evaluate(from_files)
    expected = model.predict(from_files.subset(range(4)))
    assert model.predict(images[:4]) == expected
    assert model.predict([_png(x) for x in images[:4]]) == expected
    assert model.predict(kinds["DataFrame-png"].head(4)) == expected


@pytest.mark.integration
def test_one_changed_example_changes_the_fingerprint_and_resume_sees_it(
    tmp_path: Path, tiny_bert_dir: Path, movies: Any
) -> None:
    texts, labels = movies
    frame = pd.DataFrame({"text": texts, "label": labels})
    config = _text_config(tmp_path, tiny_bert_dir, "cut", None)
    config["train"]["epochs"] = 2

    class Stop(Exception):
        pass

    def stop(record: dict[str, Any]) -> None:
        raise Stop

    with pytest.raises(Stop):
        fit(config, train=frame, quiet=True, on_epoch=stop)
    changed = frame.copy()
    changed.loc[5, "text"] = changed.loc[5, "text"] + "!"
    with pytest.raises(DataError, match="data"):
        fit(config, train=changed, resume=True, quiet=True)
    # The run's own config without the data (`graft fit RUN/config.yaml --resume RUN`): the
    # error says how to give it again.
    run_dir = tmp_path / "cut"
    with pytest.raises(UsageError, match=r"data\.train: in-memory data .*graft\.fit\(train="):
        fit(run_dir / "config.yaml", resume=run_dir, quiet=True)
    done = fit(config, train=frame, resume=True, quiet=True)
    results = json.loads((done.run_dir / "results.json").read_text())
    # What a notebook shows: the history as a DataFrame, a compact summary, the report inline.
    assert done.history["epoch"].tolist() == [1, 2]
    assert done.history["val_accuracy"].tolist() == [
        json.loads(line)["val_accuracy"]
        for line in (done.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    summary = done._repr_html_()
    accuracy = f"{100 * results['validation']['accuracy']:.2f}%"
    assert "<table>" in summary and f"<td>validation</td><td>{accuracy}</td>" in summary
    assert done.report()._repr_html_().startswith("<iframe srcdoc=")
    other = fit({**config, "output": {**config["output"], "name": "changed"}}, train=changed)
    assert other.results["data_fingerprint"] != results["data_fingerprint"]


# --------------------------------------------------------------------------- bad input


def _refused(tmp_path: Path, error: type[Exception], pattern: str, **data: Any) -> None:
    config = tiny_image_run_config({}, tmp_path / "runs")
    del config["data"]["train"]
    with pytest.raises(error, match=pattern) as caught:
        fit(config, quiet=True, **data)
    assert "\n" not in caught.value.message  # type: ignore[attr-defined]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_in_memory_data_is_one_line_naming_it(tmp_path: Path) -> None:
    import datasets

    frame = pd.DataFrame({"txt": ["a good film", "a bad film"], "label": ["pos", "neg"]})
    _refused(tmp_path, DataError, r"train DataFrame: no text column 'text' .*'txt'", train=frame)
    mixed = pd.DataFrame({"text": ["a", "b", "c"], "label": [1, "pos", 0]})
    _refused(
        tmp_path,
        DataError,
        r"train DataFrame: column 'label' mixes types: number at index 0, str at index 1",
        train=mixed,
    )
    blank = pd.DataFrame({"text": ["a", "b"], "label": ["pos", None]})
    _refused(tmp_path, DataError, r"column 'label', index 1: missing label", train=blank)
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    _refused(tmp_path, DataError, r"train: 4 inputs but 3 labels", train=(images, [0, 1, 0]))
    floats = images.astype(np.float32)
    _refused(
        tmp_path,
        DataError,
        r"train images: dtype float32, expected uint8",
        train=(floats, [0, 1, 0, 1]),
    )
    flat = np.zeros((4, 64), dtype=np.uint8)
    _refused(
        tmp_path,
        DataError,
        r"train images: shape \(4, 64\), expected N×H×W",
        train=(flat, [0, 1, 0, 1]),
    )
    _refused(
        tmp_path,
        DataError,
        r"validation list: inputs, index 1: got int, expected a text",
        train=[("a", "x"), ("b", "y")],
        validation=[("a", "x"), (3, "y")],
    )
    only_test = datasets.DatasetDict(test=datasets.Dataset.from_dict({"text": ["a"], "label": [0]}))
    _refused(
        tmp_path,
        UsageError,
        r"train: the DatasetDict has no split 'train' \(splits: 'test'\)",
        train=only_test,
    )
    _refused(tmp_path, UsageError, r"train: cannot read data of type set", train={1, 2})
    sizes = pd.DataFrame(
        {"image": [np.zeros((8, 8), np.uint8), np.zeros((9, 9), np.uint8)], "label": [0, 1]}
    )
    _refused(tmp_path, DataError, r"column 'image', index 1: image of shape \(9, 9\)", train=sizes)


def test_to_examples_reads_what_the_files_would() -> None:
    frame = pd.DataFrame({"text": ["one", "two"], "label": [1.0, 2.0]})
    ex = to_examples(frame, "train")
    assert (ex.modality, ex.inputs, ex.labels) == ("text", ["one", "two"], ["1", "2"])
    rgba = np.zeros((2, 4, 4, 4), dtype=np.uint8)
    assert to_examples((rgba, ["a", "b"]), "train").inputs.shape == (2, 4, 4, 3)  # type: ignore[union-attr]


@pytest.mark.integration
def test_a_compare_on_in_memory_data_is_the_fit_on_its_file(
    tmp_path: Path, tiny_bert_dir: Path, movies: Any, text_reference: Path
) -> None:
    from graft.compare import run_compare
    from graft.compare.spec import parse_spec

    texts, labels = movies
    frame = pd.DataFrame({"review": texts, "sentiment": labels})
    columns = {"text_column": "review", "label_column": "sentiment"}
    base = _text_config(tmp_path, tiny_bert_dir, "unused", columns)
    spec = parse_spec({"name": "memory", "strategies": ["full"], "seeds": 1})
    result = run_compare(base, spec, isolate=False, quiet=True, train=frame)
    _same_run(result.compare_dir / "full-seed0", text_reference)
    (written,) = (result.compare_dir / "data").iterdir()
    assert written.suffix == ".jsonl"
    # Other data is another file, so another spec: refused, not mixed with the first runs.
    with pytest.raises(UsageError, match="holds a different compare"):
        run_compare(base, spec, isolate=False, quiet=True, train=frame.iloc[1:])


def test_compare_files_of_in_memory_images_read_back_the_same(tmp_path: Path, digits: Any) -> None:
    from graft.memory_files import with_files, write_files

    images, labels = digits
    base = tiny_image_run_config({}, tmp_path)
    del base["data"]["train"]
    data, files = with_files(base, {"train": (images, labels)}, tmp_path / "compare-x")
    write_files(files)
    back = load_examples(**data["data"]["train"])
    assert np.array_equal(back.inputs, images) and back.labels == labels
    with pytest.raises(UsageError, match=r"train: a compare takes images .* integer labels"):
        with_files(base, {"train": (images, ["cat"] * len(images))}, tmp_path / "compare-y")


@pytest.mark.integration
def test_a_search_on_in_memory_data_reads_the_same_data(
    tmp_path: Path, tiny_bert_dir: Path, movies: Any, text_reference: Path
) -> None:
    from conftest import write_yaml

    from graft.search.runner import search

    texts, labels = movies
    frame = pd.DataFrame({"review": texts, "sentiment": labels})
    columns = {"text_column": "review", "label_column": "sentiment"}
    config = _text_config(tmp_path, tiny_bert_dir, "unused", columns)
    config["search"] = {
        "space": {"optim.lr": {"type": "categorical", "choices": [1e-3]}},
        "n_trials": 1,
        "sampler": "grid",
    }
    result = search(write_yaml(tmp_path / "s.yaml", config), quiet=True, train=frame)
    (trial,) = sorted(result.search_dir.glob("trial-*"))
    _same_run(trial, text_reference)  # the same data, and lr 1e-3 as the reference's


@pytest.mark.integration
def test_an_unlabeled_target_in_memory_is_the_run_on_its_file(
    tmp_path: Path, tiny_bert_dir: Path, movies: Any
) -> None:
    tweets = load_examples(dataset="vader_tweets").subset(range(0, 4000, 100))
    target = tmp_path / "target.csv"
    with target.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [["text", "label"], *zip(tweets.inputs, tweets.labels, strict=True)]
        )
    config = _text_config(tmp_path, tiny_bert_dir, "file", {"dataset": "vader_movies"})
    config["data"] |= {"train_size": 48, "val_size": 16, "test_size": 16}
    config["data"]["target_unlabeled"] = {"path": str(target)}
    config["adapt"] = {"method": "entropy"}
    by_file = fit(config, quiet=True).run_dir
    del config["data"]["target_unlabeled"]
    config["output"]["name"] = "memory"
    # Its labels are never read: texts alone will do.
    run = fit(config, target_unlabeled=list(tweets.inputs), quiet=True).run_dir
    _same_run(run, by_file)
