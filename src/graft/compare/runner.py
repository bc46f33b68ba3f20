"""``graft compare``: every strategy × seed on the same splits and budget, resumable, with
statistics over seeds.

A compare is a base run config plus a *spec* (:mod:`graft.compare.spec`: the ``compare:`` block
of the YAML, or command-line options): which strategies, how many seeds, per-strategy overrides.
This module runs the planned runs and summarizes them (:mod:`graft.compare.stats`); the report is
:mod:`graft.reports.compare`.

Everything lives in one directory, ``output.dir/compare-<name>/``::

    compare.json          the manifest: spec, the planned runs and a hash over their configs
    configs/<run>.yaml    each run's exact config (``graft fit`` can rerun it alone)
    <label>-seed<k>/      each run's directory, as ``graft fit`` writes it
    summary.json / .csv   per-strategy statistics (one row per strategy)
    runs.csv              one row per finished run
    report.html           the comparison report (``graft.reports.compare``)

Resume is by construction: a run whose directory holds ``results.json`` is done, one with a
checkpoint continues from it, and the rest start. A different spec in the same directory is
refused rather than mixed in.

Only the data split seed (``data.seed``) is shared; seeds vary ``train.seed`` (initialization of
the head, batch order, dropout). By default each run is a child process (``graft fit`` in a fresh
interpreter), so that its peak memory and wall time are its own and memory is returned between
runs.

This module imports neither torch nor matplotlib at import time: ``graft report`` uses its
statistics without loading a model stack.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from graft.atomic import atomic_write_text, check_writable_dir
from graft.compare.execute import isolation_record, load_record, run_one
from graft.compare.spec import (
    MANIFEST,
    CompareSpec,
    compare_dir_for,
    load_compare,
    manifest,
    open_compare_dir,
    plan_runs,
    spec_from_options,
)
from graft.compare.stats import (
    ALPHA,
    CLASSIFICATION,
    RunRecord,
    Stat,
    StrategySummary,
    evaluated_split,
    extra_names,
    ranking_of,
    significance_note,
    summarize,
)
from graft.compare.workers import WorkerPlan, run_workers
from graft.console import RunLog
from graft.errors import UsageError
from graft.inmemory import given_data
from graft.memory_files import with_files, write_files
from graft.notebook import InlineReport, compare_html, table_frame
from graft.rundir import LOG, REPORT, run_state
from graft.search.study import open_storage
from graft.tracking import parent_run

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
RUNS_CSV = "runs.csv"


@dataclass
class CompareResult:
    """What :func:`run_compare` returns."""

    compare_dir: Path
    records: list[RunRecord]
    summary: list[StrategySummary]
    report: Path | None
    ran: int  # runs trained (or continued) by this call
    skipped: int  # finished before this call

    @property
    def leaderboard(self) -> Any:
        """The summary table (one row per strategy) as a pandas DataFrame."""
        return table_frame(*summary_table(self.summary))

    def report_inline(self) -> InlineReport | None:
        """The compare's HTML report, shown inline in a notebook."""
        return None if self.report is None else InlineReport(self.report)

    def _repr_html_(self) -> str:  # Jupyter shows a result as its leaderboard
        return compare_html(self.compare_dir, *summary_table(self.summary))


def _fmt_stat(s: Stat, pct: bool = True) -> str:
    """``mean ± std`` over seeds (in percent with ``pct``)."""
    if math.isnan(s.mean):
        return "–"
    scale = 100.0 if pct else 1.0
    if math.isnan(s.std):
        return f"{scale * s.mean:.2f}"
    return f"{scale * s.mean:.2f} ± {scale * s.std:.2f}"


def summary_table(rows: Sequence[StrategySummary]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the terminal leaderboard."""
    extras = extra_names([r for s in rows for r in s.runs])
    ranking = rows[0].ranking if rows else CLASSIFICATION
    short = "acc" if ranking is CLASSIFICATION else ranking.name
    headers = [
        "strategy",
        "seeds",
        f"{short}{ranking.unit}",
        f"{ranking.second_name}{ranking.unit}",
        *[f"{e} {short}{ranking.unit}" for e in extras],
        "time s",
        "trainable",
        "peak MiB",
        "vs best",
    ]
    out = []
    for s in rows:
        # One seed per strategy: no p-value (None), so the "worse" text is formatted only when
        # a strategy is judged worse.
        if s.is_best:
            mark = "best"
        elif s.tied_with_best is None:
            mark = "?"
        elif s.tied_with_best:
            mark = "≈"
        else:
            mark = "worse" if s.test.p is None else f"worse (p={s.test.p:.3f})"
        out.append(
            [
                s.label,
                str(s.primary.n),
                _fmt_stat(s.primary, ranking.share),
                _fmt_stat(s.secondary, ranking.share),
                *[_fmt_stat(s.extra[e], ranking.share) if e in s.extra else "–" for e in extras],
                f"{s.wall_time_s.mean:.1f}" if not math.isnan(s.wall_time_s.mean) else "–",
                f"{s.trainable_params:,.0f}" if s.trainable_params is not None else "–",
                f"{s.peak_rss_mb.mean:,.0f}" if not math.isnan(s.peak_rss_mb.mean) else "–",
                mark,
            ]
        )
    return headers, out


def write_summary(compare_dir: Path, rows: Sequence[StrategySummary]) -> None:
    """``summary.json`` (statistics per strategy), ``summary.csv`` (the leaderboard) and
    ``runs.csv`` (one line per run)."""
    records = [r for s in rows for r in s.runs]
    split = evaluated_split(records) if records else "test"
    extras = extra_names(records)
    ranking = ranking_of(records)
    metric, second = ranking.metric, ranking.second
    atomic_write_text(
        compare_dir / SUMMARY_JSON,
        json.dumps(
            {"evaluated_on": split, "alpha": ALPHA, "strategies": [s.to_dict() for s in rows]},
            indent=1,
        ),
    )

    def csv_text(header: list[str], lines: list[list[Any]]) -> str:
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(lines)
        return buffer.getvalue()

    header = [
        "strategy",
        "label",
        "seeds",
        f"{split}_{metric}_mean",
        f"{split}_{metric}_std",
        "ci95_low",
        "ci95_high",
        f"{second}_mean",
        f"{second}_std",
        *[f"{e}_{metric}_mean" for e in extras],
        "wall_time_s_mean",
        "trainable_params",
        "peak_rss_mb_mean",
        "p_vs_best",
        "not_significantly_worse_than_best",
    ]
    lines = [
        [
            s.strategy,
            s.label,
            s.primary.n,
            s.primary.mean,
            s.primary.std,
            s.primary.low,
            s.primary.high,
            s.secondary.mean,
            s.secondary.std,
            *[s.extra[e].mean if e in s.extra else "" for e in extras],
            s.wall_time_s.mean,
            s.trainable_params,
            s.peak_rss_mb.mean,
            "" if s.test.p is None else s.test.p,
            "" if s.tied_with_best is None else s.tied_with_best,
        ]
        for s in rows
    ]
    atomic_write_text(compare_dir / SUMMARY_CSV, csv_text(header, lines))
    run_header = [
        "run",
        "label",
        "strategy",
        "seed",
        f"{split}_{metric}",
        second,
        *[f"{e}_{metric}" for e in extras],
        "best_epoch",
        "wall_time_s",
        "trainable_params",
        "peak_rss_mb",
    ]
    run_lines = [
        [
            r.run_dir.name,
            r.label,
            r.results.get("strategy"),
            r.seed,
            r.score(metric, split),
            r.score(second, split),
            *[r.score(metric, e) for e in extras],
            r.results.get("best_epoch"),
            r.number("wall_time_s"),
            r.results.get("trainable_params"),
            r.number("peak_rss_mb"),
        ]
        for r in records
    ]
    atomic_write_text(compare_dir / RUNS_CSV, csv_text(run_header, run_lines))


def run_compare(
    base: Mapping[str, Any],
    spec: CompareSpec,
    *,
    default_name: str = "compare",
    source: str = "config",
    resume: bool = False,
    isolate: bool = True,
    quiet: bool = False,
    verbose: bool = False,
    report: bool = True,
    workers: int = 1,
    storage: str | None = None,
    join: bool = False,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    extra_eval: Mapping[str, Any] | None = None,
) -> CompareResult:
    """Plan every strategy × seed, run those not finished yet, summarize, write the report.

    ``train``, ``validation``, ``test`` and ``extra_eval`` take data held in memory, as
    :func:`graft.fit` does; it is written into the compare directory (texts as JSON Lines,
    image arrays as IDX files) and the runs read it from there (:mod:`graft.memory_files`).

    ``base`` is the run config mapping (without ``compare:``). ``resume=True`` insists that the
    compare directory already exists; without it an existing directory of the same spec is
    resumed anyway, and one of a different spec is refused. ``isolate`` runs each ``graft fit``
    in a child process; ``verbose`` shows each run's own log.

    ``workers`` > 1 runs that many at once on this machine, and ``storage`` (an Optuna RDB URL)
    lets ``join=True`` processes elsewhere take runs of the same compare
    (:mod:`graft.compare.workers`). A joining process writes no summary: it returns with
    ``report=None`` once nothing is left to take.
    """
    check_worker_options(workers, storage, join, resume, isolate)
    log = RunLog(quiet=quiet)
    compare_dir = compare_dir_for(base, spec, default_name)
    check_writable_dir(compare_dir, "output.dir")
    given = given_data(extra_eval, train=train, validation=validation, test=test)
    base, data_files = with_files(base, given, compare_dir) if given else (base, {})
    runs = plan_runs(base, spec, compare_dir, source)  # every config checked before any run
    content = manifest(spec, runs, source)
    if join and not (compare_dir / MANIFEST).is_file():
        raise UsageError(
            f"--join: no compare to join in {compare_dir} (no {MANIFEST})",
            hint="start it first (the same command without --join); on another machine, "
            "output.dir must be the same shared folder",
        )
    if storage is not None:
        open_storage(storage)  # a bad URL is refused before the compare directory exists
    resumed = open_compare_dir(compare_dir, content, resume or join)
    write_files(data_files)
    log.attach(compare_dir / LOG)
    states = {r.name: run_state(r.run_dir) for r in runs}
    done = sum(s == "done" for s in states.values())
    cores = os.cpu_count() or 1
    threads = max(1, cores // workers) if workers > 1 else None
    log(
        f"compare {compare_dir}: {len(spec.strategies)} strategies × "
        f"{len(spec.seed_values(0))} seeds = {len(runs)} runs"
        + (f"; resuming, {done} finished" if resumed and not join else "")
        + (f"; joining, {done} finished" if join else "")
        + (f"; {workers} workers, {threads} threads each" if threads else "")
    )
    # With output.mlflow, every run of the compare is nested under one parent MLflow run.
    mlflow = (base.get("output") or {}).get("mlflow", False)
    with parent_run(mlflow, compare_dir.name, base):
        if workers > 1 or storage is not None:
            plan = WorkerPlan(
                compare_dir=compare_dir,
                runs=runs,
                spec_hash=content["spec_hash"],
                storage_url=storage,
                join=join,
                workers=workers,
                threads=threads,
                isolate=isolate,
                verbose=verbose,
            )
            if storage is not None:
                log(f"runs claimed through {plan.where}")
            ran = run_workers(plan, log)
            if join:
                return CompareResult(compare_dir, [], [], None, ran, 0)
        else:
            ran = 0
            for i, run in enumerate(runs, start=1):
                position = f"[{i}/{len(runs)}]"
                record = run_one(
                    run, compare_dir, log=log, position=position, isolate=isolate, verbose=verbose
                )
                ran += record is not None
    isolated = isolation_record(compare_dir)
    records = [load_record(r, isolated.get(r.name, True)) for r in runs]
    rows = summarize(records)
    write_summary(compare_dir, rows)
    headers, table = summary_table(rows)
    # A leaderboard wraps badly at 80 columns; a log or a pipe takes a wide one as well.
    log.console.width = max(log.console.width, 150)
    log.table(f"compare {compare_dir.name}: {evaluated_split(records)} set", headers, table)
    log(significance_note(rows))
    report_path = None
    if report:
        from graft.reports.compare import write_compare_report

        report_path = write_compare_report(
            records,
            compare_dir / REPORT,
            title=f"graft compare · {compare_dir.name.removeprefix('compare-')}",
            spec_text=dump_spec(spec),
        )
        log(f"report: {report_path}")
    return CompareResult(compare_dir, records, rows, report_path, ran, done)


def check_worker_options(
    workers: int, storage: str | None, join: bool, resume: bool, isolate: bool
) -> None:
    """The checks of ``--workers``, ``--storage`` and ``--join`` that need no file."""
    cores = os.cpu_count() or 1
    if workers < 1:
        raise UsageError(f"--workers {workers}: at least 1")
    if workers > cores:
        raise UsageError(
            f"--workers {workers}: more than this machine's {cores} cores",
            hint="each worker's runs need a core at least; more machines: --storage and --join",
        )
    if join and storage is None:
        raise UsageError(
            "--join needs --storage: the database where the compare's runs are claimed",
            hint="e.g. --storage postgresql://user:pw@host/graft --join",
        )
    if join and resume:
        raise UsageError("give --resume or --join, not both")
    if workers > 1 and not isolate:
        raise UsageError("--in-process runs one fit at a time: it does not go with --workers")


def compare(
    config: str | Path,
    overrides: Sequence[str] = (),
    *,
    strategies: str | None = None,
    seeds: str | None = None,
    name: str | None = None,
    resume: bool = False,
    isolate: bool = True,
    quiet: bool = False,
    verbose: bool = False,
    workers: int = 1,
    storage: str | None = None,
    join: bool = False,
) -> CompareResult:
    """``graft compare CONFIG``: read the config and its ``compare:`` block, apply the options
    (``strategies="full,linear_probe"``, ``seeds="3"`` or ``"0,1,2"``), and run it (with
    ``workers``, ``storage`` and ``join`` as :func:`run_compare` takes them)."""
    base, block = load_compare(config, overrides)
    spec = spec_from_options(block, strategies=strategies, seeds=seeds, name=name)
    return run_compare(
        base,
        spec,
        default_name=Path(config).stem,
        source=str(config),
        resume=resume,
        isolate=isolate,
        quiet=quiet,
        verbose=verbose,
        workers=workers,
        storage=storage,
        join=join,
    )


def dump_spec(spec: CompareSpec) -> str:
    """The spec as a YAML ``compare:`` block."""
    return yaml.safe_dump(
        {"compare": spec.model_dump(mode="json", exclude_none=True)}, sort_keys=False
    )
