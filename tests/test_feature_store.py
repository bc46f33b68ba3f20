"""The shared feature store: runs that read frozen-body outputs another run computed train
exactly as runs that compute their own; any change to what the outputs depend on misses the
entry; concurrent writers and damaged files never give wrong tensors."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import require_asset
from safetensors.torch import load_file

from graft import assets
from graft.config import validate
from graft.data.types import Examples
from graft.errors import UsageError
from graft.features.keys import body_key
from graft.features.prefix import PrefixCut, prefix_key
from graft.features.store import FORMAT, FeatureStore, shared_store
from graft.models import build_backbone
from graft.pipeline import Loaders
from graft.run import fit

# ------------------------------------------------------------------------------- the store


def _entry(seed: int, n: int = 1000) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(n, 8, generator=g), "targets": torch.arange(n)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_entry_reads_back_byte_for_byte(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, 1 << 30)
    assert store.load("ab" * 32) is None
    entry = _entry(0)
    assert store.save("ab" * 32, entry)
    assert _same(store.load("ab" * 32) or {}, entry)
    assert store.path("ab" * 32) == tmp_path / "ab" / f"{'ab' * 32}.safetensors"


def test_a_damaged_or_foreign_entry_is_dropped_not_used(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, 1 << 30)
    key, other = "cd" * 32, "ce" * 32
    store.save(key, _entry(1))
    path = store.path(key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated by a full disk
    assert store.load(key) is None and not path.exists()
    # A file renamed to another key's name: its metadata names its own key.
    store.save(other, _entry(2))
    store.path(other).rename(path)
    assert store.load(key) is None and not path.exists()


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    one = sum(t.numel() * t.element_size() for t in _entry(0).values())
    store = FeatureStore(tmp_path, int(2.5 * one))  # room for two entries
    keys = [f"{i:02d}" * 32 for i in range(3)]
    for i, key in enumerate(keys[:2]):
        store.save(key, _entry(i))
        os.utime(store.path(key), (1000 + i, 1000 + i))
    store.load(keys[0])  # used again: now the most recent
    store.save(keys[2], _entry(2))
    assert store.path(keys[0]).exists() and store.path(keys[2]).exists()
    assert not store.path(keys[1]).exists()
    # An entry larger than half the limit is not stored at all (it would evict everything).
    assert not FeatureStore(tmp_path / "small", one).save("ff" * 32, _entry(3))
    assert not (tmp_path / "small").exists()


def test_an_unwritable_store_does_not_stop_a_run(tmp_path: Path) -> None:
    """A store whose folder cannot be made (here a file stands in the way: that holds for any
    user, root included) stores nothing and raises nothing."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    store = FeatureStore(blocked, 1 << 30)
    assert not store.save("aa" * 32, _entry(0))
    assert store.load("aa" * 32) is None
    assert blocked.read_text() == "not a folder"


def test_the_store_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAFT_FEATURE_CACHE", str(tmp_path / "f"))
    monkeypatch.setenv("GRAFT_FEATURE_CACHE_SIZE", "500MB")
    assert shared_store() == FeatureStore(tmp_path / "f", 500_000_000)
    monkeypatch.setenv("GRAFT_FEATURE_CACHE_SIZE", "0")
    assert shared_store() is None
    monkeypatch.setenv("GRAFT_FEATURE_CACHE_SIZE", "lots")
    with pytest.raises(UsageError, match="GRAFT_FEATURE_CACHE_SIZE: not a size"):
        shared_store()


def _writer(root: str, key: str, rounds: int, start: Any) -> None:
    store = FeatureStore(Path(root), 1 << 32)
    start.wait()
    for _ in range(rounds):
        store.save(key, _big_entry())


def _big_entry() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"features": torch.randn(2_000_000, 4, generator=g), "targets": torch.arange(10)}


def test_two_processes_writing_one_entry_leave_it_whole(tmp_path: Path) -> None:
    """Two writers save the same 32 MB entry over and over at the same moment while this process
    reads it: every read is the whole entry or nothing, and so is the file they leave."""
    key = "9f" * 32
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), key, 6, start)) for _ in range(2)]
    for w in writers:
        w.start()
    store, expected = FeatureStore(tmp_path, 1 << 32), _big_entry()
    start.wait()
    reads = 0
    while any(w.is_alive() for w in writers):
        found = store.load(key)
        if found is not None:
            assert _same(found, expected)
            reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert _same(store.load(key) or {}, expected)
    assert list(tmp_path.glob("*/.*.tmp")) == []  # no temporary file left behind
    assert reads > 0
    meta = json.loads(store.path(key).read_bytes()[8:].split(b"}")[0].decode() + "}}")
    assert meta["__metadata__"] == {"format": FORMAT, "key": key}


# --------------------------------------------------------------------------------- the keys


def _text_loader(texts: list[str], targets: list[int], max_length: int = 32, batch: int = 8) -> Any:
    backbone = build_backbone("minilm", num_classes=2, max_length=max_length)
    ex = Examples("text", texts, [str(t) for t in targets], "test")
    loaders = Loaders(backbone.preprocess, backbone.tokenizer, False, 0, 0)
    return backbone, loaders.loader(ex, np.asarray(targets), batch, shuffle=False, by_length=True)


def test_a_text_key_changes_with_weights_data_labels_preprocessing_and_batching() -> None:
    require_asset(assets.minilm_dir)
    texts, targets = ["a fine film", "dull and long", "I loved it"], [1, 0, 1]
    backbone, loader = _text_loader(texts, targets)
    model, cpu = backbone.model, torch.device("cpu")
    key = body_key(model, loader, cpu, "fp32")
    assert key == body_key(model, _text_loader(texts, targets)[1], cpu, "fp32")
    changed = {
        "a text": _text_loader(["a fine film", "dull and long", "I loved it!"], targets)[1],
        "a label": _text_loader(texts, [1, 0, 0])[1],
        "max_length": _text_loader(texts, targets, max_length=3)[1],
    }
    keys = {what: body_key(model, ld, cpu, "fp32") for what, ld in changed.items()}
    keys["precision"] = body_key(model, loader, cpu, "bf16")
    keys["batch size"] = body_key(model, _text_loader(texts, targets, batch=2)[1], cpu, "fp32")
    with torch.no_grad():
        model.body.encoder.encoder.layer[5].output.dense.weight[0, 0] += 1e-3
    keys["a weight"] = body_key(model, loader, cpu, "fp32")
    assert len(set(keys.values()) | {key}) == len(keys) + 1, keys


def test_an_image_key_changes_with_pixels_size_and_augmentation() -> None:
    from graft.augment import build_augment

    backbone = build_backbone("test_efficientnet", num_classes=3, pretrained=False, image_size=32)
    pixels = np.random.default_rng(0).integers(0, 255, (6, 20, 20), dtype=np.uint8)
    targets = np.array([0, 1, 2, 0, 1, 2])
    ex = Examples("image", pixels, [str(t) for t in targets], "test")

    def key(examples: Examples, prep: Any = backbone.preprocess, augment: Any = None) -> Any:
        loaders = Loaders(prep, None, False, 0, 0, augment=augment)
        loader = loaders.loader(examples, targets, 4, shuffle=False, train=True)
        return body_key(backbone.model, loader, torch.device("cpu"), "fp32")

    edited = pixels.copy()
    edited[3, 5, 5] ^= 1
    bigger = type(backbone.preprocess)(**{**vars(backbone.preprocess), "image_size": 40})
    augment = build_augment("light", 40)
    keys = {
        "same": key(ex),
        "a pixel": key(Examples("image", edited, ex.labels, "test")),
        "image size": key(ex, bigger),
        "augmentation": key(ex, bigger, augment),
    }
    assert key(ex) == keys["same"]
    assert len(set(keys.values())) == len(keys), keys


def test_a_prefix_key_reads_the_frozen_layers_only() -> None:
    """The outputs below the cut depend on the frozen layers, not on those above: a seed that
    trains the top differently still shares the cache, a changed frozen layer does not."""
    require_asset(assets.minilm_dir)
    backbone, loader = _text_loader(["a fine film", "dull and long"], [1, 0])
    body, cpu = backbone.model.body, torch.device("cpu")
    groups = backbone.groups
    frozen = {id(p) for g in groups[:3] for _, p in g.params}  # embeddings, layers 0 and 1
    sample = loader.dataset.__getitems__([0, 1])["inputs"]
    cut = PrefixCut.find(body, frozen, sample)
    assert cut is not None
    key = prefix_key(cut, loader, cpu, "fp32")
    layers = body.encoder.encoder.layer
    with torch.no_grad():
        layers[4].output.dense.weight[0, 0] += 1.0  # above the cut
    assert prefix_key(cut, loader, cpu, "fp32") == key
    with torch.no_grad():
        layers[1].output.dense.weight[0, 0] += 1e-3  # below it
    assert prefix_key(cut, loader, cpu, "fp32") != key


# ------------------------------------------------------------------------------ whole runs


def _run_config(tmp_path: Path, name: str, strategy: dict[str, Any], **data: Any) -> Any:
    return validate(
        {
            "backbone": {"name": "minilm"},
            "data": {
                "train": {"dataset": "vader_movies"},
                "train_size": 96,
                "val_size": 48,
                "test_size": 64,
                "max_length": 32,
                "extra_eval": {"tweets": {"dataset": "vader_tweets"}},
                "extra_size": 48,
                **data,
            },
            "strategy": strategy,
            "optim": {"lr": 1e-3},
            "train": {"epochs": 2, "batch_size": 16},
            "hardware": {"threads": 1},
            "output": {"dir": str(tmp_path), "name": name, "progress": False},
        }
    )


SPEED = ("epoch_time_s", "samples_per_s")  # the only fields of metrics.jsonl that may differ


def _outcome(run_dir: Path) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any], str]:
    weights = load_file(str(run_dir / "model" / "model.safetensors"))
    metrics = [
        json.dumps({k: v for k, v in json.loads(line).items() if k not in SPEED})
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    results = json.loads((run_dir / "results.json").read_text())
    scores = {k: results[k] for k in ("validation", "test", "extra")}
    return weights, metrics, scores, (run_dir / "log.txt").read_text()


@pytest.mark.parametrize(
    "strategy, line",
    [
        ({"name": "linear_probe"}, "feature cache: body outputs"),
        ({"name": "partial", "k": 2}, "prefix cache: outputs of layer.3 and below"),
    ],
    ids=["linear_probe", "partial"],
)
def test_a_run_that_reads_the_store_equals_one_that_computes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: dict[str, Any], line: str
) -> None:
    """Real MiniLM on VADER: the first run computes and stores, a second seed's run reads,
    and both are bit for bit the runs made without any store."""
    require_asset(assets.minilm_dir)
    require_asset(assets.vader_dir)
    runs = {}
    for name, seed in [("first", 0), ("second", 1)]:
        config = _run_config(tmp_path, name, strategy)
        config.train.seed = seed
        runs[name] = _outcome(fit(config, quiet=True).run_dir)
    monkeypatch.setenv("GRAFT_FEATURE_CACHE_SIZE", "0")  # no store: every run computes its own
    for name, seed in [("first-alone", 0), ("second-alone", 1)]:
        config = _run_config(tmp_path, name, strategy)
        config.train.seed = seed
        runs[name] = _outcome(fit(config, quiet=True).run_dir)

    assert f"{line} computed" in runs["first"][3]
    assert f"{line} read from the feature store" in runs["second"][3]
    assert "feature store" not in runs["second-alone"][3]
    for shared, alone in [("first", "first-alone"), ("second", "second-alone")]:
        (wa, ma, sa, _), (wb, mb, sb, _) = runs[shared], runs[alone]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), shared
        assert ma == mb and sa == sb, shared
    # The seeds did train differently (the store did not make the second a copy of the first).
    assert runs["first"][1] != runs["second"][1]


def test_a_run_on_other_data_or_preprocessing_computes_again(tmp_path: Path) -> None:
    require_asset(assets.minilm_dir)
    require_asset(assets.vader_dir)
    strategy = {"name": "linear_probe"}
    first = fit(_run_config(tmp_path, "a", strategy), quiet=True).run_dir
    assert "body outputs computed" in (first / "log.txt").read_text()
    for name, data in [("b", {"max_length": 24}), ("c", {"seed": 5}), ("d", {"train_size": 95})]:
        log = fit(_run_config(tmp_path, name, strategy, **data), quiet=True).run_dir / "log.txt"
        assert "body outputs computed" in log.read_text(), name
    again = fit(_run_config(tmp_path, "e", strategy), quiet=True).run_dir
    assert "body outputs read from the feature store" in (again / "log.txt").read_text()
