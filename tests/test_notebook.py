"""The Python documentation runs as written: the README's "From Python" example, and the quickstart
notebook (docs/quickstart.ipynb) executed end to end by a Jupyter kernel (nbclient), so neither
can rot. Both use the real offline models (MiniLM, EfficientNet-Lite0) on small real data."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import require_asset

ROOT = Path(__file__).resolve().parents[1]


def _from_python_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.integration
def test_the_readme_dataframe_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graft import assets

    require_asset(assets.minilm_dir)
    monkeypatch.chdir(tmp_path)  # its runs/ goes here
    namespace: dict[str, object] = {}
    exec(compile(_from_python_example(), "README.md (From Python)", "exec"), namespace)
    result = namespace["result"]
    assert (result.run_dir / "model" / "model.safetensors").is_file()  # type: ignore[attr-defined]
    assert 0 <= result.test_accuracy <= 1  # type: ignore[attr-defined]


@pytest.mark.integration
def test_the_quickstart_notebook_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    from graft import assets

    require_asset(assets.minilm_dir)
    require_asset(assets.efficientnet_lite0_weights)
    # The kernel inherits the environment: offline, passive OpenMP waits (see conftest.py).
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    notebook = nbformat.read(ROOT / "docs" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the working folder: runs/ goes here
    )
    client.execute()  # a cell that raises fails the test with its traceback
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "<b>graft fit</b> minilm · linear_probe" in html
    assert "<b>graft fit</b> tf_efficientnet_lite0 · linear_probe" in html
    assert "<b>graft compare</b> compare-quickstart" in html
    assert "<iframe srcdoc=" in html  # the report, inline
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert re.search(r"^(positive|negative) 0\.\d+$", printed, re.M)
    assert (tmp_path / "runs" / "compare-quickstart" / "report.html").is_file()
