"""The long real runs, for ``make test-all`` (``--runslow``): the README's demo itself, and a
whole ``graft auto`` on a small budget. Deselected otherwise (minutes each on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graft.cli import main

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
@pytest.mark.integration
def test_the_demo_fine_tunes_both_models_well(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--configs", str(ROOT / "configs"), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    runs = sorted(p.parent for p in tmp_path.glob("*/results.json"))
    assert len(runs) == 2, out
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        # Chance is 0.5 (VADER) and 0.1 (Fashion-MNIST); the README reports 0.805 and 0.871.
        floor = 0.75 if results["backbone"] == "minilm" else 0.8
        assert results["test"]["accuracy"] > floor, (run, results["test"]["accuracy"])
        assert (run / "report.html").is_file() and (run / "model" / "model.safetensors").is_file()
    assert "test acc" in out


@pytest.mark.slow
@pytest.mark.integration
def test_auto_ends_within_its_budget_with_a_good_model(tmp_path: Path) -> None:
    budget = 180.0
    assert main(["auto", "fashion_mnist", "--budget", "3m", "--output", str(tmp_path)]) == 0
    (auto_json,) = tmp_path.glob("*/auto.json")
    summary = json.loads(auto_json.read_text())
    assert summary["elapsed_s"] <= 1.15 * budget, summary["elapsed_s"]
    final = summary["final"]
    assert final["test_accuracy"] > 0.7 and Path(final["report"]).is_file()
