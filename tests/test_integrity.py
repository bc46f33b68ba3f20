"""Integrity and determinism: the data fingerprint and config hash recorded with every run,
checkpoint and saved model; a resume on changed data or config is refused (unless --force);
``--deterministic`` runs repeat exactly; and the pieces exact mid-epoch resume stands on
(sampler offsets, per-batch augmentation seeds, stale temporary files, result-neutral keys)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_image_run_config, write_yaml
from PIL import Image

import graft.recorder
import graft.run
from graft.atomic import atomic_write, remove_stale_temporaries
from graft.augment import build_augment, build_batch_mix
from graft.checkpoint import CHECKPOINT, config_hash, data_fingerprint, save_checkpoint
from graft.cli import main
from graft.config import validate
from graft.data.types import Examples, LabelMap, Splits
from graft.errors import TrainingDiverged
from graft.models.base import ImagePreprocess
from graft.pipeline import EpochBatches, Loaders

TIMING = {"epoch_time_s", "samples_per_s"}


def image_folder(root: Path, n_per_class: int = 12) -> Path:
    """Digit images (8×8 grey PNGs), three classes, as an image folder."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in (0, 1, 2):
        folder = root / str(label)
        folder.mkdir(parents=True)
        images = digits.images[digits.target == label][:n_per_class]
        for i, img in enumerate(images):
            Image.fromarray((img * 16).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def folder_config(tmp_path: Path, data: Path, **train: Any) -> Path:
    cfg = tiny_image_run_config(
        {"path": str(data)},
        tmp_path / "runs",
        data={"val_fraction": 0.25},
        train={"epochs": 2, "batch_size": 8, **train},
        output={"name": "run"},
    )
    return write_yaml(tmp_path / "run.yaml", cfg)


def interrupt_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = graft.recorder.save_checkpoint

    def save_then_die(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(graft.recorder, "save_checkpoint", save_then_die)


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_covers_content_and_labels_not_file_names_or_dates(tmp_path: Path) -> None:
    def splits(train: Examples) -> Splits:
        return Splits(train, train, None, {}, LabelMap(("a", "b")))

    texts = Examples("text", ["one", "two"], ["a", "b"], "t")
    base = data_fingerprint(splits(texts))
    assert data_fingerprint(splits(Examples("text", ["one", "two"], ["a", "b"], "u"))) == base
    assert data_fingerprint(splits(Examples("text", ["one", "tw0"], ["a", "b"], "t"))) != base
    assert data_fingerprint(splits(Examples("text", ["one", "two"], ["b", "a"], "t"))) != base
    # No ambiguity from concatenation: ["ab", "c"] is not ["a", "bc"].
    ab = data_fingerprint(splits(Examples("text", ["ab", "c"], ["a", "b"], "t")))
    assert ab != data_fingerprint(splits(Examples("text", ["a", "bc"], ["a", "b"], "t")))

    pixels = np.zeros((2, 4, 4), dtype=np.uint8)
    in_memory = data_fingerprint(splits(Examples("image", pixels, ["a", "b"], "m")))
    pixels[1, 2, 3] = 1
    assert data_fingerprint(splits(Examples("image", pixels, ["a", "b"], "m"))) != in_memory

    files = [tmp_path / "x.png", tmp_path / "y.png"]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    on_disk = data_fingerprint(splits(Examples("image", files, ["a", "b"], "f")))
    copies = [tmp_path / "copy" / f.name for f in files]
    copies[0].parent.mkdir()
    for f, c in zip(files, copies, strict=True):
        c.write_bytes(f.read_bytes())
    assert data_fingerprint(splits(Examples("image", copies, ["a", "b"], "f"))) == on_disk
    files[1].write_bytes(b"\x01" * 9 + b"\x02")
    assert data_fingerprint(splits(Examples("image", files, ["a", "b"], "f"))) != on_disk


def test_saving_and_checkpoint_frequency_keys_do_not_change_the_config_hash() -> None:
    base = validate(tiny_image_run_config({"dataset": "digits"}, "runs")).to_dict()
    neutral = json.loads(json.dumps(base))
    neutral["checkpoint"].update(every=1, minutes=None, keep=True)
    neutral["hardware"].update(num_workers=2)
    neutral["output"]["dir"] = "elsewhere"
    assert config_hash(neutral) == config_hash(base)
    changed = json.loads(json.dumps(base))
    changed["train"]["seed"] = 1
    assert config_hash(changed) != config_hash(base)


def test_resume_on_changed_data_is_refused_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = image_folder(tmp_path / "data")
    path = folder_config(tmp_path, data)
    interrupt_after_first_checkpoint(monkeypatch)
    assert main(["fit", str(path), "--quiet"]) == 130
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "run"
    recorded = json.loads((run_dir / "run.json").read_text())["data_fingerprint"]
    assert torch.load(run_dir / CHECKPOINT, weights_only=True)["data_fingerprint"] == recorded

    # One image changes (same name, same size): refused, nothing in the run touched.
    target = data / "1" / "3.png"
    img = np.array(Image.open(target))
    img[0, 0] = 255 - img[0, 0]
    Image.fromarray(img).save(target)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["fit", str(path), "--quiet", "--resume", str(run_dir)]) == 3
    err = capsys.readouterr().err
    assert "the data differ from those the run started with" in err and "--force" in err
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before

    # A changed config is refused too (a usage mistake), and --force needs --resume.
    assert main(["fit", str(path), "--quiet", "--resume", str(run_dir), "optim.lr=0.1"]) == 2
    assert "different config" in capsys.readouterr().err
    assert main(["fit", str(path), "--quiet", "--force"]) == 2

    # Forced: it continues, and records the data it finished on.
    assert main(["fit", str(path), "--quiet", "--resume", str(run_dir), "--force"]) == 0
    assert "changed data (--force)" in (run_dir / "log.txt").read_text()
    meta = json.loads((run_dir / "model" / "graft_model.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    assert meta["data_fingerprint"] == results["data_fingerprint"] != recorded
    assert meta["config_hash"] == results["config_hash"]
    assert json.loads((run_dir / "run.json").read_text())["data_fingerprint"] != recorded


def test_a_run_killed_before_its_first_checkpoint_starts_over_on_resume(tmp_path: Path) -> None:
    """What SIGKILL leaves before the first checkpoint (a run directory with run.json and no
    checkpoint) is resumable: the run starts over there."""
    data = image_folder(tmp_path / "data")
    path = folder_config(tmp_path, data)
    assert main(["fit", str(path), "--quiet"]) == 0
    done = tmp_path / "runs" / "run"
    reference = (done / "steps.jsonl").read_text()
    for name in ("results.json", "model", "report.html", "metrics.jsonl"):
        target = done / name
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        else:
            target.unlink()
    (done / "steps.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"st')  # torn by the kill
    assert main(["fit", str(path), "--quiet", "--resume"]) == 0
    assert (done / "steps.jsonl").read_text() == reference
    assert "no checkpoint yet: the run starts over" in (done / "log.txt").read_text()


# --------------------------------------------------------------------------- determinism


def test_deterministic_runs_repeat_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``graft fit --deterministic`` twice: identical steps, epoch metrics and weights; the mode
    is on while training and off again afterwards."""
    data = image_folder(tmp_path / "data")
    seen: list[bool] = []
    real = graft.run.train

    def train(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(graft.run, "train", train)
    runs = []
    for name in ("a", "b"):
        path = folder_config(tmp_path / name, data)
        assert main(["fit", str(path), "--quiet", "--deterministic"]) == 0
        runs.append(tmp_path / name / "runs" / "run")
    assert seen == [True, True] and not torch.are_deterministic_algorithms_enabled()
    assert "deterministic algorithms" in (runs[0] / "log.txt").read_text()

    def epochs(run: Path) -> list[dict[str, Any]]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]

    assert epochs(runs[0]) == epochs(runs[1]) and len(epochs(runs[0])) == 2
    assert (runs[0] / "steps.jsonl").read_text() == (runs[1] / "steps.jsonl").read_text()
    results = [json.loads((r / "results.json").read_text()) for r in runs]
    assert results[0]["validation"] == results[1]["validation"]
    weights = [(r / "model" / "model.safetensors").read_bytes() for r in runs]
    assert weights[0] == weights[1]


# --------------------------------------------------------------------------- building blocks


def test_sampler_starts_mid_epoch_without_touching_earlier_batches() -> None:
    full = list(EpochBatches(100, 8, shuffle=True, seed=3))
    sampler = EpochBatches(100, 8, shuffle=True, seed=3)
    sampler.set_epoch(0, start=5)
    rest = list(sampler)
    assert rest == full[5:] and [b.position for b in rest] == list(range(5, 13))
    assert len(sampler) == 13  # the whole epoch's length, also when it starts later
    sampler.set_epoch(1)
    assert list(sampler) != full
    index = pickle.loads(pickle.dumps(rest[0]))  # as it travels to a loader worker
    assert index == rest[0] and (index.epoch, index.position) == (0, 5)


def test_augmentation_is_a_function_of_seed_epoch_and_batch_only() -> None:
    """Random crops, flips and MixUp: the same batch (epoch, position) gives the same pixels
    whatever was drawn before, with 0 or 2 workers, and leaves the process's RNG untouched."""
    prep = ImagePreprocess(image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    rng = np.random.default_rng(0)
    examples = Examples(
        "image", rng.integers(0, 256, (40, 12, 12), dtype=np.uint8), ["a"] * 40, "r"
    )
    targets = np.zeros(40, dtype=np.int64)

    def batches(workers: int, start: int = 0) -> list[torch.Tensor]:
        loaders = Loaders(
            prep, None, False, workers, 7, build_augment("light", 16), build_batch_mix(0.4, 0, 2)
        )
        loader = loaders.loader(examples, targets, 8, shuffle=True, train=True)
        loader.batch_sampler.set_epoch(2, start)  # type: ignore[union-attr]
        return [b["inputs"]["pixel_values"] for b in loader]

    torch.manual_seed(0)
    before = torch.get_rng_state()
    main_process = batches(0)
    assert torch.get_rng_state().equal(before)  # dropout's stream did not move
    torch.manual_seed(123)  # whatever the process drew before
    again = batches(0)
    workers = batches(2)
    resumed = batches(0, start=3)
    assert all(a.equal(b) for a, b in zip(main_process, again, strict=True))
    assert all(a.equal(b) for a, b in zip(main_process, workers, strict=True))
    assert all(a.equal(b) for a, b in zip(main_process[3:], resumed, strict=True))
    assert not main_process[0].equal(main_process[1])  # and the batches do differ


def test_stale_temporaries_are_removed_and_a_failed_write_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "checkpoint.pt"
    atomic_write(target, lambda f: f.write(b"old"))
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")

    def fail(f: Any) -> None:
        f.write(b"new, partly")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in remove_stale_temporaries(target)] == [".checkpoint.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_checkpoint_with_nan_weights_is_never_written(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    kwargs: dict[str, Any] = dict(
        model=model, optimizer=optimizer, scheduler=scheduler, plan={}, config_digest="x"
    )
    save_checkpoint(tmp_path, state={"step": 1}, **kwargs)
    good = (tmp_path / CHECKPOINT).read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"NaN or Inf in weight at step 2"):
        save_checkpoint(tmp_path, state={"step": 2}, **kwargs)
    assert (tmp_path / CHECKPOINT).read_bytes() == good
