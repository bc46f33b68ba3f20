"""What a careless or hostile user meets, beyond the corpus of bad files: the Python API's own
errors, stdin and the command line's odd texts, damaged or swapped model files, special files
at output paths, runs that diverge before their first checkpoint, a full disk while the model,
the results or the step log is written, and reports over runs that do not belong together.
Each holds a promise: one clear message, the right exit code, nothing half-written."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_BACKBONES, build_tiny, tiny_image_run_config, write_yaml

import graft
import graft.recorder
import graft.run
from graft.artifact import WEIGHTS, load_model, save_model
from graft.cli import main
from graft.config import validate
from graft.data.types import LabelMap
from graft.errors import DataError, SaveError, UsageError


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(err: str) -> str:
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def image_model(tmp_path: Path) -> Path:
    folder = tmp_path / "image-model"
    backbone = build_tiny(TINY_BACKBONES["timm"][0], None)
    save_model(folder, backbone, LabelMap(("a", "b", "c")), plan={})
    return folder


def _digits(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    config = tiny_image_run_config({"dataset": "digits"}, tmp_path / "runs", **sections)
    config["data"].update({"train_size": 96, "val_size": 32, "test_size": 32})
    return config


# --------------------------------------------------------------------------- graft predict


def test_predict_from_empty_or_blank_stdin_says_there_is_nothing(
    text_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for given in (b"", b"\n  \n\n"):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(given)))
        code, _, err = _cli(["predict", str(text_model), "-"], capsys)
        assert code == 2 and "no text to predict" in _one_error(err)


def test_predict_refuses_non_utf8_text_naming_where(
    text_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\ncaf\xe9 au lait\n")))
    code, _, err = _cli(["predict", str(text_model), "-"], capsys)
    assert code == 2 and "standard input, line 2: not UTF-8 text" in _one_error(err)
    # Undecodable bytes on a command line reach Python as lone surrogates.
    code, _, err = _cli(["predict", str(text_model), "ok", "caf\udce9"], capsys)
    assert code == 2 and "INPUT 2: not UTF-8 text" in _one_error(err)
    code, _, err = _cli(["predict", str(text_model), "ok", "  "], capsys)
    assert code == 2 and "INPUT 2 is empty" in _one_error(err)


def test_predict_still_reads_texts_and_blank_lines_are_skipped(
    text_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\n\ntwo\n")))
    code, out, _ = _cli(["predict", str(text_model), "-", "--json"], capsys)
    assert code == 0
    assert [json.loads(line)["input"] for line in out.splitlines()] == ["one", "two"]


# --------------------------------------------------------------------------- damaged model files


def test_a_model_description_without_labels_says_so(
    image_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta_path = image_model / "graft_model.json"
    meta = json.loads(meta_path.read_text())
    del meta["labels"]
    meta_path.write_text(json.dumps(meta))
    code, _, err = _cli(["predict", str(image_model), "x.png"], capsys)
    assert code == 3 and "malformed model description: it has no 'labels'" in _one_error(err)


def test_swapped_weights_are_refused_in_one_line(
    image_model: Path, text_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(text_model / WEIGHTS, image_model / WEIGHTS)  # another model's weights
    with pytest.raises(DataError, match=r"do not fit the architecture: \d+ missing"):
        load_model(image_model)
    code, _, err = _cli(["eval", str(image_model), "--dataset", "digits"], capsys)
    assert code == 3 and len(_one_error(err)) < 600, err  # torch's own message is 15 KB


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_truncated_model_file_is_named(
    image_model: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = image_model / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    argv = [command, str(image_model)]
    argv += ["--dataset", "digits"] if command == "eval" else ["x.png"]
    code, _, err = _cli(argv, capsys)
    assert code == 3 and f"{weights}: unreadable weights" in _one_error(err)


def test_a_truncated_best_epoch_file_is_named_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped after its first epoch, whose best-epoch weights were then damaged: the
    resume trains on and refuses at the finish, naming the file, instead of a traceback."""
    path = write_yaml(tmp_path / "c.yaml", _digits(tmp_path, train={"epochs": 2}))

    def stop_after_the_first_epoch(self: Any, state: Any, *args: Any) -> None:
        real_epoch_end(self, state, *args)
        raise KeyboardInterrupt

    real_epoch_end = graft.recorder.Recorder.epoch_end
    monkeypatch.setattr(graft.recorder.Recorder, "epoch_end", stop_after_the_first_epoch)
    assert main(["fit", str(path), "--quiet"]) == 130
    monkeypatch.setattr(graft.recorder.Recorder, "epoch_end", real_epoch_end)
    (run_dir,) = (tmp_path / "runs").iterdir()
    best = run_dir / "best.safetensors"
    best.write_bytes(best.read_bytes()[:500])
    capsys.readouterr()
    code, _, err = _cli(["fit", str(path), "--resume", str(run_dir), "--quiet"], capsys)
    assert code == 3 and f"{best}" in _one_error(err)


# --------------------------------------------------------------------------- the Python API


def test_fit_takes_a_mapping_and_refuses_other_things(tmp_path: Path) -> None:
    result = graft.fit(_digits(tmp_path), quiet=True)
    assert result.results["test"] is not None
    with pytest.raises(UsageError, match=r"fit takes a RunConfig, a mapping or a YAML path"):
        graft.fit(12, quiet=True)  # type: ignore[arg-type]


def test_a_changed_config_is_validated_again_before_anything_is_written(tmp_path: Path) -> None:
    config = validate(_digits(tmp_path))
    broken = config.model_copy(update={"train": config.train.model_copy(update={"batch_size": 0})})
    with pytest.raises(UsageError, match=r"train\.batch_size"):
        graft.fit(broken, quiet=True)
    assert not (tmp_path / "runs").exists()


def test_loaded_model_predicts_plain_lists_and_refuses_a_bare_string(text_model: Path) -> None:
    model = load_model(text_model)
    predictions = model.predict(["a quietly devastating film", "a total mess"])
    assert [set(p) for p in predictions] == [{"label", "probability", "probabilities"}] * 2
    with pytest.raises(UsageError, match="a list of inputs"):
        model.predict("a quietly devastating film")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="nothing to predict"):
        model.predict([])


# --------------------------------------------------------------------------- special output paths


def test_report_onto_a_device_leaves_the_device_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(["report", str(tmp_path), "-o", "/dev/full"], capsys)
    assert code == 2 and "/dev/full: is a character device" in _one_error(err)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_symlinked_output_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    from graft.atomic import atomic_write_text

    target = tmp_path / "real.html"
    target.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


# --------------------------------------------------------------------------- divergence


def test_a_run_that_diverges_before_its_first_checkpoint_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _digits(tmp_path, optim={"name": "sgd", "lr": 1e30, "momentum": 0.0})
    config["checkpoint"] = {"minutes": None}
    code, _, err = _cli(["fit", str(write_yaml(tmp_path / "c.yaml", config))], capsys)
    assert code == 4
    message = _one_error(err)
    assert "diverged before its first checkpoint, so nothing was kept" in message
    assert "holds the last good weights" not in message  # no checkpoint is promised
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --------------------------------------------------------------------------- a full disk


def _enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("what", ["model", "results", "step log"])
def test_a_full_disk_while_writing_names_the_file_and_the_run_resumes(
    what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two epochs: the step log fills the disk in the second, after the first epoch's checkpoint.
    path = write_yaml(tmp_path / "c.yaml", _digits(tmp_path, train={"epochs": 2}))
    if what == "model":
        monkeypatch.setattr(graft.run, "save_model", _enospc)
    elif what == "results":
        real = graft.run.atomic_write_text

        def full_for_results(target: Path, text: str) -> None:
            if target.name == "results.json":
                _enospc()
            real(target, text)

        monkeypatch.setattr(graft.run, "atomic_write_text", full_for_results)
    else:
        real_open, appends = Path.open, []

        def full_for_steps(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if self.name == "steps.jsonl" and "a" in mode:
                appends.append(1)
                if len(appends) > 8:  # 96 examples in batches of 16: 6 steps an epoch
                    _enospc()
            return real_open(self, mode, *args, **kwargs)

        monkeypatch.setattr(Path, "open", full_for_steps)
    code, _, err = _cli(["fit", str(path), "--quiet"], capsys)
    expected = {"model": "model", "results": "results.json", "step log": "steps.jsonl"}[what]
    assert code == SaveError.exit_code and expected in _one_error(err)
    assert "No space left on device" in err
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "results.json").exists()
    code, _, err = _cli(["fit", str(path), "--resume", str(run_dir), "--quiet"], capsys)
    assert code == 0, err
    assert (run_dir / "results.json").is_file() and (run_dir / "model" / WEIGHTS).is_file()


# --------------------------------------------------------------------------- reports


def _fake_run(root: Path, name: str, backbone: str, fingerprint: str, labels: list[str]) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("train: {seed: 0}\n")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_accuracy": 0.8}) + "\n")
    metrics = {"accuracy": 0.8, "macro_f1": 0.8, "loss": 0.5, "labels": labels}
    results = {
        "backbone": backbone,
        "strategy": "full",
        "data_fingerprint": fingerprint,
        "validation": metrics,
        "test": metrics,
        "extra": {},
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.mark.parametrize(
    ("other", "what"),
    [
        (("tf_efficientnet_lite0", "f1", ["neg", "pos"]), "backbone"),
        (("minilm", "f2", ["neg", "pos"]), "data"),
        (("minilm", "f1", ["cat", "dog"]), "classes"),
    ],
)
def test_report_refuses_runs_that_do_not_belong_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], other: tuple[Any, ...], what: str
) -> None:
    a = _fake_run(tmp_path, "a", "minilm", "f1", ["neg", "pos"])
    b = _fake_run(tmp_path, "b", *other)
    out = tmp_path / "report.html"
    code, _, err = _cli(["report", str(a), str(b), "-o", str(out)], capsys)
    assert code == 2 and f"differ in {what}" in _one_error(err)
    assert not out.exists()
    same = _fake_run(tmp_path, "c", "minilm", "f1", ["neg", "pos"])
    assert _cli(["report", str(a), str(same), "-o", str(out)], capsys)[0] == 0
