"""graft.report: the one-run HTML report, built from fake run directories."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from graft.errors import DataError
from graft.metrics import classification_metrics
from graft.reports.figures import confusion_figure, curves_figure, figure_to_img_tag
from graft.reports.html import format_pct, html_table, page
from graft.reports.run import write_run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["T-shirt/top", "Trouser", "<Pull & over>", "Dre$$"]
IMG_RE = re.compile(r'<img\s[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]*)"')
EXTERNAL_RE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _metrics(seed: int, n: int, labels: list[str], loss: float | None = 0.4) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, len(labels), size=n)
    y_pred = np.where(rng.random(n) < 0.8, y_true, rng.integers(0, len(labels), size=n))
    return classification_metrics(y_true, y_pred, labels, loss=loss)


def _history() -> list[dict[str, Any]]:
    records = []
    for epoch in range(1, 6):
        phase_index = 0 if epoch <= 2 else 1
        records.append(
            {
                "epoch": epoch,
                "phase": "head" if phase_index == 0 else "full",
                "phase_index": phase_index,
                "step": epoch * 10,
                "train_loss": 1.0 / epoch,
                "train_accuracy": 0.5 + 0.08 * epoch,
                "val_loss": 1.1 / epoch,
                "val_accuracy": 0.45 + 0.08 * epoch,
                "val_macro_f1": 0.44 + 0.08 * epoch,
                "lr": 1e-3,
                "epoch_time_s": 1.5,
                "samples_per_s": 800.0,
            }
        )
    return records


def _results(**overrides: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "run": "fmnist-<vit>&lora",
        "backbone": "vit_tiny_patch16_224",
        "strategy": "lora",
        "plan": {
            "phases": [
                {"name": "head", "epochs": 2, "lr": 0.001, "trainable": ["head"]},
                {"name": "full", "epochs": 3, "lr": 0.0001, "trainable": "all"},
            ],
            "optimizer": "adamw",
        },
        "best_epoch": 4,
        "validation": _metrics(1, 200, LABELS),
        "test": _metrics(2, 500, LABELS, loss=0.37),
        "extra": {"shifted domain": _metrics(3, 150, LABELS)},
        "wall_time_s": 4321.5,
        "trainable_params": 12_345,
        "total_params": 5_678_901,
        "peak_rss_mb": 2048.4,
        "environment": {
            "python": "3.11.9",
            "torch": "2.14.1",
            "device": "cpu",
            "cpu": "Intel <Xeon>",
        },
    }
    results.update(overrides)
    return results


def make_run(
    root: Path,
    *,
    results: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    config: str = "backbone: vit_tiny\n# see https://example.com <script>alert(1)</script>\n",
) -> Path:
    """A fake run directory, laid out as `graft fit` writes it."""
    run_dir = root / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config, encoding="utf-8")
    lines = [json.dumps(r) for r in (_history() if history is None else history)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (run_dir / "results.json").write_text(
        json.dumps(_results() if results is None else results), encoding="utf-8"
    )
    return run_dir


def _png_payloads(text: str) -> list[bytes]:
    return [base64.b64decode(data, validate=True) for data in IMG_RE.findall(text)]


def test_report_is_one_self_contained_html_file(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    before = set(run_dir.iterdir())
    path = write_run_report(run_dir)

    assert path == run_dir / "report.html"
    assert set(run_dir.iterdir()) - before == {path}  # one file, no temp file left behind
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")
    assert not EXTERNAL_RE.search(text), EXTERNAL_RE.search(text)
    assert "<link" not in text and "@import" not in text and "<script" not in text

    # Two figures (curves, confusion matrix), each a real embedded PNG.
    assert text.count("<img") == 2
    payloads = _png_payloads(text)
    assert len(payloads) == 2
    for png in payloads:
        assert len(png) > 1000
        assert png.startswith(PNG_MAGIC)


def test_report_contents(tmp_path: Path) -> None:
    results = _results()
    text = write_run_report(make_run(tmp_path, results=results)).read_text(encoding="utf-8")

    # Header: escaped run name, backbone, strategy.
    assert "fmnist-&lt;vit&gt;&amp;lora" in text
    assert "fmnist-<vit>" not in text
    assert "vit_tiny_patch16_224" in text and "lora" in text
    # Summary: test accuracy and macro-F1 formatted, the extra set's accuracy, params, memory.
    test_acc = format_pct(results["test"]["accuracy"])
    assert re.fullmatch(r"\d{1,3}\.\d\d%", test_acc)
    assert f'<td class="num">{test_acc}</td>' in text
    assert format_pct(results["test"]["macro_f1"]) in text
    assert "shifted domain" in text
    assert format_pct(results["extra"]["shifted domain"]["accuracy"]) in text
    assert "1h 12m 02s" in text
    assert "12,345 / 5,678,901" in text
    assert "2,048 MB" in text
    # Class names, escaped, in the per-class table.
    for label in ["T-shirt/top", "Trouser", "&lt;Pull &amp; over&gt;", "Dre$$"]:
        assert f"<td>{label}</td>" in text
    assert "<Pull & over>" not in text
    per_class = results["test"]["per_class"]["Trouser"]
    assert format_pct(per_class["recall"]) in text
    assert f'<td class="num">{per_class["support"]}</td>' in text
    # Plan, exact config (escaped), environment.
    assert "adamw" in text and "<td>full</td>" in text
    assert "# see https://example.com &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Intel &lt;Xeon&gt;" in text and "2.14.1" in text


def test_report_without_test_set_and_with_old_history(tmp_path: Path) -> None:
    """Old runs: no test set, no phases and missing keys in metrics.jsonl still give a report."""
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_accuracy": 0.5},
        {"epoch": 2, "train_loss": 0.7, "val_loss": 0.8},
    ]
    results = _results(test=None, extra={})
    for key in ("plan", "environment", "peak_rss_mb", "best_epoch"):
        del results[key]
    text = write_run_report(make_run(tmp_path, results=results, history=history)).read_text()
    assert "no test set" in text.lower()
    assert "Confusion matrix (validation set)" in text
    payloads = _png_payloads(text)
    assert len(payloads) == 2 and all(p.startswith(PNG_MAGIC) for p in payloads)


def test_report_without_epochs(tmp_path: Path) -> None:
    text = write_run_report(make_run(tmp_path, history=[])).read_text()
    assert text.count("<img") == 1  # the confusion matrix only
    assert "No epochs recorded" in text


def test_report_replaces_an_existing_report(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    (run_dir / "report.html").write_text("old")
    write_run_report(run_dir)
    assert (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "report.html",
        "results.json",
    ]


@pytest.mark.parametrize("missing", ["results.json", "metrics.jsonl", "config.yaml"])
def test_missing_file_is_a_data_error(tmp_path: Path, missing: str) -> None:
    run_dir = make_run(tmp_path)
    (run_dir / missing).unlink()
    with pytest.raises(DataError) as info:
        write_run_report(run_dir)
    assert missing in str(info.value)
    assert "graft run directory" in str(info.value)
    assert not (run_dir / "report.html").exists()


def test_missing_run_dir_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        write_run_report(tmp_path / "nope")


def test_corrupt_history_line_is_named(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:20]  # truncated write
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl: line 3 "):
        write_run_report(run_dir)


def test_non_object_history_line_is_named(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write("\n[1, 2]\n")
    with pytest.raises(DataError, match="line 7 is not a JSON object"):
        write_run_report(run_dir)


def test_corrupt_results_is_a_data_error(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    (run_dir / "results.json").write_text('{"run": ')
    with pytest.raises(DataError, match=r"results\.json"):
        write_run_report(run_dir)


def test_confusion_figure_for_twenty_classes() -> None:
    labels = [f"a rather long class name {i}" for i in range(20)]
    metrics = _metrics(5, 2000, labels)
    fig = confusion_figure(metrics["confusion_matrix"], labels)
    width, height = fig.get_size_inches()
    assert width >= 9 and height >= 9  # grows with the number of classes
    ax = fig.axes[0]
    assert ax.get_yticklabels()[0].get_text().startswith("a rather long")
    assert ax.get_yticklabels()[19].get_text().endswith("name 19")
    assert len(ax.texts) == 400  # every cell annotated
    png = base64.b64decode(IMG_RE.findall(figure_to_img_tag(fig))[0])
    assert png.startswith(PNG_MAGIC)


def test_confusion_figure_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_figure([[1, 2], [3, 4]], ["a", "b", "c"])


def test_curves_figure_marks_phase_boundaries() -> None:
    fig = curves_figure(_history(), best_epoch=4)
    loss_ax = fig.axes[0]

    def vertical_lines(style: str) -> list[float]:
        return [
            float(np.asarray(line.get_xdata())[0])
            for line in loss_ax.get_lines()
            if line.get_linestyle() == style
        ]

    assert vertical_lines("--") == [2.5]  # between epoch 2 (head) and epoch 3 (full)
    assert vertical_lines(":") == [4.0]  # best epoch
    assert {t.get_text() for t in loss_ax.texts} == {"head", "full"}


def test_curves_figure_tolerates_per_phase_epochs_and_missing_keys() -> None:
    history = [
        {"epoch": 1, "phase": "head", "train_loss": 0.9},
        {"epoch": 2, "phase": "head", "train_loss": 0.8},
        {"epoch": 1, "phase": "full", "val_accuracy": 0.7},  # epochs restart per phase
    ]
    fig = curves_figure(history, best_epoch=1)
    loss_ax = fig.axes[0]
    boundaries = [
        float(np.asarray(line.get_xdata())[0])
        for line in loss_ax.get_lines()
        if line.get_linestyle() == "--"
    ]
    assert boundaries == [2.5]  # records numbered 1..3, boundary between the 2nd and 3rd
    assert not [line for line in loss_ax.get_lines() if line.get_linestyle() == ":"]


def test_html_table_escapes_and_right_aligns_numbers() -> None:
    table = html_table(
        ["name", "n", "acc"], [["<b>", 1234, "91.2%"], ["x", 0.5, None]], numeric=[2]
    )
    assert "<td>&lt;b&gt;</td>" in table
    assert '<td class="num">1,234</td>' in table
    assert '<td class="num">91.2%</td>' in table
    assert '<td class="num">0.5000</td>' in table
    assert '<th class="num">acc</th>' in table and "<th>name</th>" in table


def test_page_escapes_title_and_headings() -> None:
    html_text = page("a <b> title", [("Sec & tion", "<p>body</p>")])
    assert "<title>a &lt;b&gt; title</title>" in html_text
    assert "<h2>Sec &amp; tion</h2>" in html_text
    assert "<p>body</p>" in html_text


def test_importing_report_does_not_import_matplotlib() -> None:
    code = "import sys, graft.reports.run; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
