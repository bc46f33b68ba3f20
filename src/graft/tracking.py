"""Experiment tracking with MLflow (``output.mlflow: true`` or a tracking URI): one MLflow run
per graft run, with the resolved config as parameters, every epoch's metrics, the final
metrics, and the model folder and report as artifacts; nested under a parent run for the runs
of a ``compare`` or a ``search`` (the parent's id reaches child processes in
``GRAFT_MLFLOW_PARENT``).

``true`` means a store in ``./mlruns``: an SQLite database (``mlruns/mlflow.db``) and the
artifacts beside it (``mlruns/artifacts``). MLflow 3 refuses its old plain-file backend unless
told otherwise, and ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` reads this one.
A path is such a folder elsewhere; a URI with a scheme (``sqlite:///…``, ``http://…``,
``databricks``) is used as it is.

The MLflow run is created when the graft run's first epoch ends, so a run refused by its
checks leaves nothing in the store either; a run that fails later is marked FAILED.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from graft.atomic import check_writable_dir
from graft.errors import UsageError

PARENT_ENV = "GRAFT_MLFLOW_PARENT"
EXPERIMENT = "graft"
_FIELD = "output.mlflow"


def _client_class() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UsageError(
            f"{_FIELD}: MLflow is not installed", hint="pip install 'graftkit[mlflow]'"
        ) from None
    return MlflowClient


def resolve_uri(setting: bool | str) -> tuple[str, str | None]:
    """The tracking URI of ``output.mlflow`` and, for a local store, its artifact folder. A
    local folder that cannot be written is a :class:`UsageError` naming the field, raised
    before anything is written."""
    if setting is True or (
        isinstance(setting, str) and "://" not in setting and ":" not in setting
    ):
        folder = Path("mlruns" if setting is True else str(setting)).expanduser().resolve()
        check_writable_dir(folder, _FIELD)
        return f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts")
    uri = str(setting)
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):  # a local database or folder: its folder must be writable
            path = Path(uri.removeprefix(prefix).split("?", 1)[0])
            check_writable_dir(path.parent if prefix == "sqlite:///" else path, _FIELD)
    return uri, None


def _numbers(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric values of a record (booleans and texts left out), one level of nesting."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, Mapping) and not prefix:
            out |= _numbers(value, f"{key}_")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix + str(key)] = float(value)
    return out


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted parameters (``optim.lr`` → ``"0.001"``)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flat_params(value, name + ".")
        else:
            out[name] = str(value)[:6000]  # MLflow's limit on a parameter's value
    return out


class Tracker:
    """One graft run's MLflow run (created lazily: at its first epoch or its end)."""

    def __init__(self, uri: str, artifacts: str | None, config: dict[str, Any], name: str):
        self.client = _client_class()(tracking_uri=uri)
        self.artifacts, self.config, self.name = artifacts, config, name
        self.run_id: str | None = None

    def _run(self) -> str:
        if self.run_id is None:
            from mlflow.entities import Param

            if self.artifacts is not None:  # a local store: its folder holds the database
                Path(self.artifacts).parent.mkdir(parents=True, exist_ok=True)

            found = self.client.get_experiment_by_name(EXPERIMENT)
            experiment = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(EXPERIMENT, artifact_location=self.artifacts)
            )
            tags = {"graft.backbone": str((self.config.get("backbone") or {}).get("name"))}
            if parent := os.environ.get(PARENT_ENV):
                tags["mlflow.parentRunId"] = parent
            run = self.client.create_run(experiment, run_name=self.name, tags=tags)
            self.run_id = run.info.run_id
            params = [Param(k, v) for k, v in flat_params(self.config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 per batch
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        return self.run_id

    def _log(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self._run(), metrics=metrics[i : i + 1000])

    def on_epoch(self, then: Callable[[dict[str, Any]], None] | None) -> Any:
        """An ``on_epoch`` callback that logs the epoch's metrics, then calls ``then``."""

        def call(record: dict[str, Any]) -> None:
            self._log(_numbers(record), int(record.get("epoch", 0)))
            if then is not None:
                then(record)

        return call

    def finish(self, run_dir: Path, results: Mapping[str, Any]) -> None:
        """The final metrics, the model folder and the report; the run marked FINISHED."""
        run_id = self._run()
        final = {
            k: v
            for part in ("validation", "test")
            if isinstance(results.get(part), Mapping)
            for k, v in _numbers(results[part], f"final_{part}_").items()
        }
        for name, metrics in (results.get("extra") or {}).items():
            final |= _numbers(metrics, f"final_{name}_")
        self._log(final, int(results.get("saved_epoch") or 0))
        self.client.set_tag(run_id, "graft.run_dir", str(run_dir))
        self.client.update_run(run_id, name=run_dir.name)
        self.client.log_artifacts(run_id, str(run_dir / "model"), "model")
        for file in ("report.html", "config.yaml", "results.json"):
            if (run_dir / file).is_file():
                self.client.log_artifact(run_id, str(run_dir / file))
        self.client.set_terminated(run_id, "FINISHED")

    def failed(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED")


class _Finished(Protocol):
    run_dir: Path
    results: dict[str, Any]


OnEpoch = Callable[[dict[str, Any]], None] | None
_R = TypeVar("_R", bound=_Finished)


def tracked(track: Tracker | None, run: Callable[[OnEpoch], _R], on_epoch: OnEpoch) -> _R:
    """``run(on_epoch)`` (a graft run), tracked by ``track`` when it is not None."""
    if track is None:
        return run(on_epoch)
    try:
        result = run(track.on_epoch(on_epoch))
    except BaseException:
        track.failed()
        raise
    track.finish(result.run_dir, result.results)
    return result


def tracker(setting: bool | str, config: dict[str, Any], name: str) -> Tracker | None:
    """The tracker of ``output.mlflow`` (None when off); a store that cannot be written is
    refused here, before the run writes anything."""
    if setting is False:
        return None
    uri, artifacts = resolve_uri(setting)
    return Tracker(uri, artifacts, config, name)


@contextmanager
def parent_run(setting: bool | str, name: str, params: Mapping[str, Any]) -> Iterator[None]:
    """An MLflow parent run for the runs of a compare or a search: every graft run started
    inside (in this process or a child) is nested under it."""
    if setting is False:
        yield
        return
    uri, artifacts = resolve_uri(setting)
    parent = Tracker(uri, artifacts, dict(params), name)
    run_id = parent._run()
    before = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    try:
        yield
    except BaseException:
        parent.client.set_terminated(run_id, "FAILED")
        raise
    else:
        parent.client.set_terminated(run_id, "FINISHED")
    finally:
        if before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = before
