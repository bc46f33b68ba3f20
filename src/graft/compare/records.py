"""Finished runs as :class:`~graft.compare.stats.RunRecord`: those of a compare (labels and
seeds from its manifest) or any run directories (labelled by strategy), for statistics and
reports. Reads run directories only (:mod:`graft.rundir`); no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from graft.compare.spec import MANIFEST, read_manifest
from graft.compare.stats import RunRecord
from graft.errors import DataError, UsageError
from graft.rundir import load_run, run_state


def _seed_of(config_text: str, fallback: int) -> int:
    try:
        data = yaml.safe_load(config_text)
        return int(data["train"]["seed"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return fallback


def collect_runs(paths: Sequence[str | Path]) -> tuple[list[RunRecord], list[str]]:
    """The finished runs under ``paths`` (run directories or compare directories), and notes on
    what was left out. A run directory's label is its strategy, its seed ``train.seed``.

    Raises:
        UsageError: no path given, or a path given twice.
        DataError: a path is neither a run nor a compare directory, or a run's files are broken.
    """
    if not paths:
        raise UsageError("graft report needs at least one run or compare directory")
    records: list[RunRecord] = []
    notes: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if (path / MANIFEST).is_file():
            manifest = read_manifest(path)
            for entry in manifest["runs"]:
                run_dir = path / entry["name"]
                if run_state(run_dir) != "done":
                    notes.append(f"{run_dir.name}: not finished, left out")
                    continue
                _add(records, seen, run_dir, str(entry["label"]), int(entry["seed"]))
            continue
        data = load_run(path)
        label = str(data.results.get("strategy") or "run")
        _add(records, seen, path, label, _seed_of(data.config_text, len(records)))
    if not records:
        raise DataError(
            "no finished run to report on", hint="a run is finished once it has results.json"
        )
    check_comparable(records)
    return records, notes


def _labels(results: dict[str, object]) -> tuple[str, ...] | None:
    evaluated = results.get("validation")
    labels = evaluated.get("labels") if isinstance(evaluated, dict) else None
    return tuple(str(x) for x in labels) if isinstance(labels, list) else None


def check_comparable(records: Sequence[RunRecord], same_data: bool = True) -> None:
    """Refuse to put runs side by side that answer different questions: another backbone,
    other data (the data fingerprint covers every example and label, after splitting) or other
    classes. The data compared are the labeled examples (runs adapted to unlabeled target
    examples stand beside their source-only run); runs of old versions without a field are
    judged on what they have. ``same_data=False``
    lets the training data differ (an oracle trained on the target's labels beside
    source-trained runs)."""
    labeled = all("labeled_fingerprint" in r.results for r in records)
    facts = {
        "backbone": lambda r: r.results.get("backbone"),
        "data": lambda r: r.results.get("labeled_fingerprint" if labeled else "data_fingerprint"),
        "classes": lambda r: _labels(r.results),
        "task": lambda r: r.results.get("task", "classification"),
    }
    if not same_data:
        del facts["data"]
    for what, fact in facts.items():
        first: dict[object, Path] = {}  # each value seen, and the first run that has it
        for record in records:
            value = fact(record)
            if value is not None:
                first.setdefault(value, record.run_dir)
        if len(first) > 1:
            (va, a), (vb, b) = list(first.items())[:2]
            detail = "other examples or labels" if what == "data" else f"{va} and {vb}"
            raise UsageError(
                f"{a} and {b} differ in {what} ({detail}): a report compares strategies on the "
                "same data, backbone and classes",
                hint="report each group of runs on its own",
            )


def _add(records: list[RunRecord], seen: set[Path], run_dir: Path, label: str, seed: int) -> None:
    key = run_dir.resolve()
    if key in seen:
        raise UsageError(f"{run_dir}: given twice")
    seen.add(key)
    records.append(record_of(run_dir, label, seed))


def record_of(run_dir: Path, label: str, seed: int, isolated: bool = True) -> RunRecord:
    """A finished run directory as a :class:`RunRecord` (``isolated``: it ran in a process of
    its own, so its peak memory is its own)."""
    data = load_run(run_dir)
    return RunRecord(label, seed, run_dir, data.results, data.history, data.config_text, isolated)
