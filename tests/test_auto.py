"""``graft auto``: backbone defaults by data type, and a whole run (probe, screening, search,
final model) on digits with the tiny random-init backbone that ends within its budget."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from graft.auto import Auto, AutoOptions, DataInfo, Step, base_config
from graft.cli import main

INFO_IMAGE = DataInfo(modality="image", n=1797, classes=10, side=8, has_test=False)
INFO_TEXT = DataInfo(modality="text", n=5000, classes=2, side=None, has_test=False)


def test_backbone_defaults_follow_the_data_type(tmp_path: Path) -> None:
    image = base_config(AutoOptions("digits", 60), INFO_IMAGE, tmp_path)
    assert image["backbone"]["name"] == "tf_efficientnet_lite0"
    assert image["data"]["image_size"] == 64  # small grey images are upscaled to 64, not 224
    big = base_config(
        AutoOptions("digits", 60), dataclasses.replace(INFO_IMAGE, side=300), tmp_path
    )
    assert "image_size" not in big["data"]  # the backbone's own default
    text = base_config(AutoOptions("vader_movies", 60), INFO_TEXT, tmp_path)
    assert text["backbone"]["name"] == "minilm" and text["optim"]["lr"] == 5.0e-5
    assert text["data"]["train_size"] == 3000  # capped for a small CPU unless told otherwise
    capped = base_config(AutoOptions("vader_movies", 60, train_size=500), INFO_TEXT, tmp_path)
    assert capped["data"]["train_size"] == 500


def test_auto_mistakes_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["auto", "digitz", "--budget", "60s", "--output", str(tmp_path)]) == 2
    assert "unknown dataset 'digitz'" in capsys.readouterr().err
    assert main(["auto", "digits", "--budget", "15x", "--output", str(tmp_path)]) == 2
    assert "--budget: not a duration" in capsys.readouterr().err
    assert main(["auto", "digits", "optim.lrr=3", "--output", str(tmp_path)]) == 2
    assert "optim.lrr" in capsys.readouterr().err


def test_auto_runs_the_loop_within_its_budget(tmp_path: Path) -> None:
    budget = 40.0
    started = time.perf_counter()
    code = main(
        [
            "auto",
            "digits",
            "--budget",
            f"{budget:.0f}s",
            "--backbone",
            "test_efficientnet",
            "--image-size",
            "32",
            "--train-size",
            "300",
            "--val-size",
            "100",
            "--output",
            str(tmp_path),
            "--quiet",
            "backbone.pretrained=false",
            "hardware.threads=1",
        ]
    )
    elapsed = time.perf_counter() - started
    assert code == 0
    assert elapsed < budget + 15  # the budget, plus a margin for set-up and the last estimate
    out = json.loads((tmp_path / "auto-digits" / "auto.json").read_text())
    assert out["backbone"] == "test_efficientnet" and out["elapsed_s"] <= budget + 10
    steps = [(s["step"], s["strategy"]) for s in out["steps"]]
    assert steps[0] == ("probe", "linear_probe")
    assert ("screen", "full") in steps  # the first screening run always runs
    final = out["final"]
    assert (Path(final["model_dir"]) / "model.safetensors").is_file()
    assert Path(final["report"]).is_file() and final["test_accuracy"] is not None


def test_the_probe_stays_the_final_model_when_fine_tuning_does_not_beat_it() -> None:
    """Go back if not good enough: a fine-tuned final run worse than the probe on validation
    is not delivered; one that is better is."""

    auto = Auto(AutoOptions(data="digits", budget_s=60, quiet=True))
    probe = Step("probe", "linear_probe", val_accuracy=0.84, test_accuracy=0.83, run_dir="p")
    worse = Step("final", "full", val_accuracy=0.80, test_accuracy=0.81, run_dir="f")
    better = Step("final", "full", val_accuracy=0.88, test_accuracy=0.87, run_dir="f")
    kept = auto.keep_better(worse, probe)
    assert (kept.strategy, kept.run_dir, kept.test_accuracy) == ("linear_probe", "p", 0.83)
    assert auto.keep_better(better, probe) is better
