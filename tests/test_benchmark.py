"""graft benchmark: ratios and flags against the reference computed by hand, every variant
measured in its own process with its accuracy, the files it writes, and its refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import tiny_image_run_config, write_image_folder

from graft import fit
from graft.cli.app import main
from graft.deploy.benchmark import compare_rows, parse_batches
from graft.errors import UsageError


def _row(p50: float, throughput: float, accuracy: float) -> dict[str, float]:
    return {"latency_ms_p50": p50, "throughput_b32": throughput, "test_accuracy": accuracy}


def test_ratios_and_the_slower_flag_are_against_the_first_variant() -> None:
    rows = compare_rows(
        [_row(10.0, 100.0, 0.80), _row(4.0, 250.0, 0.79), _row(5.0, 90.0, 0.81)], [1, 32]
    )
    assert [r["speedup_b1"] for r in rows] == [1.0, 2.5, 2.0]
    assert [r["speedup_throughput"] for r in rows] == [1.0, 2.5, 0.9]
    assert [r["slower"] for r in rows] == [False, False, True]  # faster at 1, slower at 32
    assert rows[1]["accuracy_change_points"] == pytest.approx(-1.0)


def test_batch_sizes_are_parsed_and_checked() -> None:
    assert parse_batches("32,1") == [1, 32]
    for bad in ("", "0,4", "one"):
        with pytest.raises(UsageError, match="--batch"):
            parse_batches(bad)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench-images")
    write_image_folder(tmp / "data")
    return fit(tiny_image_run_config({"path": str(tmp / "data")}, tmp / "runs"), quiet=True).run_dir


def test_every_variant_is_measured_with_its_accuracy_and_written(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_dir = tmp_path / "onnx"
    assert main(["export", str(image_run), "--format", "onnx", "-o", str(onnx_dir)]) == 0
    out = tmp_path / "bench"
    args = ["benchmark", str(image_run), str(onnx_dir), "--batch", "1,4", "--repeats", "1"]
    assert main([*args, "--warmup", "0", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed
    results = json.loads((out / "benchmark.json").read_text())
    rows = results["rows"]
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime"]
    test = json.loads((image_run / "results.json").read_text())["test"]
    for r in rows:
        assert r["test_examples"] == test["n"]
        assert r["latency_ms_p99"] >= r["latency_ms_p50"] > 0 and r["throughput_b4"] > 0
        assert r["peak_rss_mb"] > 0 and r["weights_mb"] > 0
    # The same model in two engines: the same predictions on the test set.
    assert rows[0]["test_accuracy"] == rows[1]["test_accuracy"] == test["accuracy"]
    with open(out / "benchmark.csv", newline="") as f:
        assert [r["backend"] for r in csv.DictReader(f)] == ["torch", "onnxruntime"]
    assert "accuracy against latency" in (out / "report.html").read_text()
    assert results["machine"]["int8_kernels"] in ("amx", "vnni", "none")


def test_bad_models_are_refused_before_any_measurement(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    assert main(["benchmark", str(image_run), str(tmp_path / "missing"), "-o", str(out)]) == 3
    assert "no such file" in capsys.readouterr().err
    assert main(["benchmark", str(image_run), "--backend", "onnxruntime", "-o", str(out)]) == 2
    assert "export it first" in capsys.readouterr().err
    assert not out.exists()
