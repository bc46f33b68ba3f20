"""MLflow tracking (``output.mlflow``), read back through MLflow's own client: one run per graft
run with the resolved config as parameters, every epoch's metrics, the final metrics, the model
folder and the report as artifacts; a compare's runs nested under one parent run; a store that
cannot be written refused, naming the field, with nothing written.

One local store (SQLite + artifacts in a folder) serves the module: creating its tables takes
MLflow several seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from graft.compare import run_compare
from graft.compare.spec import parse_spec
from graft.errors import UsageError
from graft.run import fit


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow") / "mlruns"


def _client(store: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def _config(out: Path, bert: Path, mlflow: Any, name: str) -> dict[str, Any]:
    return {
        "backbone": {"name": str(bert), "source": "hf", "pretrained": False},
        "data": {"train": {"dataset": "vader_movies"}, "train_size": 48, "val_size": 16},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 16},
        "hardware": {"threads": 1},
        "output": {"dir": str(out), "name": name, "progress": False, "mlflow": mlflow},
    }


@pytest.mark.integration
def test_a_run_is_one_mlflow_run_with_params_metrics_and_artifacts(
    tmp_path: Path, tiny_bert_dir: Path, store: Path
) -> None:
    config = _config(tmp_path, tiny_bert_dir, str(store), "tracked")
    config["data"]["test_size"] = 16
    result = fit(config, quiet=True)
    client = _client(store)
    experiment = client.get_experiment_by_name("graft")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'tracked'")
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["data.train.dataset"] == "vader_movies"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    written = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m.step, m.value) for m in history] == [
        (r["epoch"], pytest.approx(r["val_accuracy"])) for r in written
    ]
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(result.test_accuracy)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "report.html", "config.yaml", "results.json"} <= top
    model = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model.safetensors", "graft_model.json"} <= model
    assert run.data.tags["graft.run_dir"] == str(result.run_dir)


@pytest.mark.integration
def test_a_compare_nests_its_runs_under_a_parent(
    tmp_path: Path, tiny_bert_dir: Path, store: Path
) -> None:
    base = _config(tmp_path, tiny_bert_dir, str(store), "unused")
    base["train"]["epochs"] = 1
    spec = parse_spec({"name": "nested", "strategies": ["linear_probe", "full"], "seeds": 1})
    result = run_compare(base, spec, isolate=False, quiet=True)
    # In a notebook: the leaderboard as a DataFrame and as HTML.
    assert sorted(result.leaderboard["strategy"]) == ["full", "linear_probe"]
    assert "<td>linear_probe</td>" in result._repr_html_()
    client = _client(store)
    experiment = client.get_experiment_by_name("graft").experiment_id
    (parent,) = client.search_runs([experiment], "attributes.run_name = 'compare-nested'")
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.info.run_name for r in children) == ["full-seed0", "linear_probe-seed0"]
    assert parent.info.status == "FINISHED"


def test_a_store_that_cannot_be_written_is_refused_before_anything(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = _config(tmp_path / "runs", tiny_bert_dir, str(blocker / "mlruns"), "x")
    with pytest.raises(UsageError, match=r"^output\.mlflow: .* is a file, not a folder"):
        fit(config, quiet=True)
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_a_search_nests_its_trials_under_a_parent(
    tmp_path: Path, tiny_bert_dir: Path, store: Path
) -> None:
    from conftest import write_yaml

    from graft.search.runner import search

    config = _config(tmp_path, tiny_bert_dir, str(store), "unused")
    config["train"]["epochs"] = 1
    config["search"] = {
        "space": {"optim.lr": {"type": "categorical", "choices": [1e-3, 1e-2]}},
        "n_trials": 2,
        "sampler": "grid",
    }
    search(write_yaml(tmp_path / "nested.yaml", config), quiet=True)
    client = _client(store)
    experiment = client.get_experiment_by_name("graft").experiment_id
    (parent,) = client.search_runs([experiment], "attributes.run_name = 'search-nested'")
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.params["optim.lr"] for r in children) == ["0.001", "0.01"]
