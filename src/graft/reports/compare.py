"""The comparison report: many runs of several strategies, one self-contained HTML file.

Built by ``graft compare`` at the end of a compare, and by ``graft report RUN_DIR...`` from any
finished runs (run directories, or compare directories whose finished runs are taken with the
labels of their manifest). Runs are grouped by strategy label; each group's seeds give the
statistics of :mod:`graft.compare`.

Sections: leaderboard (mean ± std, 95% interval, significance against the best), accuracy with
intervals, training and validation curves per strategy, accuracy against cost (wall time,
trainable parameters), in-domain against shifted-domain accuracy, the best run's confusion matrix
and per-class scores, every run, the exact configs, and the environment. Like the one-run report
(whose pieces it reuses) the file needs nothing else: CSS inline, figures as base64 PNGs, no
script and no external link.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from graft.atomic import atomic_write_text, check_writable_dir, saving, writable_target
from graft.compare.records import check_comparable, collect_runs
from graft.compare.spec import MANIFEST, read_manifest
from graft.compare.stats import (
    Gap,
    Ranking,
    RunRecord,
    StrategySummary,
    evaluated_split,
    extra_names,
    gap_closed,
    ranking_of,
    significance_note,
    summarize,
)
from graft.errors import DataError, UsageError
from graft.reports.compare_figures import (
    accuracy_figure,
    colors,
    cost_figure,
    curves_grid,
    shift_figure,
)
from graft.reports.compare_gap import gap_html
from graft.reports.figures import confusion_figure, figure_to_img_tag
from graft.reports.html import (
    Markup,
    format_duration,
    format_float,
    format_int,
    format_pct,
    html_table,
    key_value_table,
    page,
    pm,
    scalar_text,
)
from graft.reports.run import per_class_table
from graft.rundir import REPORT

_EXTRA_CSS = """
main { max-width: 1200px; }
tr.best td { background: #eaf5ea !important; font-weight: 600; }
.badge { display: inline-block; padding: 0 0.45em; border-radius: 0.6em; font-size: 0.8rem;
         font-weight: 600; white-space: nowrap; }
.badge.best { background: #1a7f37; color: white; }
.badge.tie { background: #dafbe1; color: #1a7f37; border: 1px solid #1a7f37; }
.badge.worse { background: #fff1f0; color: #9a2a2a; border: 1px solid #e5b5b5; }
.badge.unknown { background: var(--bg-alt); color: var(--muted); border: 1px solid var(--line); }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 2px;
          margin-right: 0.4em; vertical-align: -0.05em; }
.ci { color: var(--muted); font-size: 0.85em; }
details { border: 1px solid var(--line); border-radius: 6px; padding: 0.3rem 0.8rem;
          margin: 0.4rem 0; }
details summary { cursor: pointer; font-weight: 600; }
details pre { margin: 0.5rem 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.75rem; margin: 0.5rem 0 0.25rem; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 0.6rem 0.9rem; min-width: 12rem;
        background: var(--bg-alt); }
.card .big { font-size: 1.35rem; font-weight: 700; }
.card .small { color: var(--muted); font-size: 0.85rem; }
.table-wrap { overflow-x: auto; }
.nowrap { white-space: nowrap; }
#leaderboard { font-size: 0.88rem; }
#leaderboard th, #leaderboard td { padding: 0.3rem 0.5rem; }
.side { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.side > div { flex: 0 1 auto; }
"""


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _badge(row: StrategySummary) -> Markup:
    if row.is_best:
        return Markup('<span class="badge best">best</span>')
    p = row.test.p
    if row.tied_with_best is None:
        return Markup('<span class="badge unknown" title="too few seeds to test">n/a</span>')
    p_text = f"p = {p:.3f}" if p is not None and p >= 0.001 else "p < 0.001"
    if row.tied_with_best:
        return Markup(
            f'<span class="nowrap"><span class="badge tie">≈ best</span> '
            f'<span class="ci">{p_text}</span></span>'
        )
    return Markup(
        f'<span class="nowrap"><span class="badge worse">worse</span> '
        f'<span class="ci">{p_text}</span></span>'
    )


def leaderboard_html(
    rows: Sequence[StrategySummary], split: str, extras: Sequence[str], palette: dict[str, str]
) -> str:
    """The leaderboard table (``id="leaderboard"``): one row per strategy, best first."""
    ranking = rows[0].ranking
    short = "acc." if ranking.metric == "accuracy" else ranking.name
    share = ranking.share
    headers = [
        "#",
        "strategy",
        "seeds",
        f"{split} {short}{ranking.unit}",
        f"{ranking.second_name}{ranking.unit}",
        *[f"{e} {short}{ranking.unit}" for e in extras],
        "time",
        "trainable",
        "peak mem.",
        "vs. best",
    ]
    body = []
    for rank, row in enumerate(rows, start=1):
        swatch = f'<span class="swatch" style="background:{palette[row.label]}"></span>'
        name = f'<span class="nowrap">{swatch}{html.escape(row.label)}</span>'
        if row.strategy != row.label:
            name += f' <span class="ci">({html.escape(row.strategy)})</span>'
        peak = row.peak_rss_mb.mean
        body.append(
            [
                rank,
                Markup(name),
                row.primary.n,
                pm(row.primary, share),
                pm(row.secondary, share),
                *[pm(row.extra[e], share) if e in row.extra else "–" for e in extras],
                format_duration(row.wall_time_s.mean),
                format_int(row.trainable_params),
                "–" if math.isnan(peak) else f"{peak:,.0f} MiB",
                _badge(row),
            ]
        )
    numeric = [
        0,
        2,
        3,
        4,
        *range(5, 5 + len(extras)),
        5 + len(extras),
        6 + len(extras),
        7 + len(extras),
    ]
    table = html_table(
        headers,
        body,
        numeric=numeric,
        table_id="leaderboard",
        row_classes=["best" if r.is_best else None for r in rows],
    )
    return f'<div class="table-wrap">{table}</div>'


def _value(value: float, ranking: Ranking) -> str:
    """A mean of the ranking's metric as the report writes it: ``91.2%`` or ``0.8123``."""
    return format_pct(value) if ranking.share else format_float(value)


def _cards(rows: Sequence[StrategySummary], split: str) -> str:
    """The answer first: the best strategy, the cheapest one statistically tied with it."""
    best = rows[0]
    ranking = best.ranking
    cards = [
        (
            f"best {split} {ranking.name}",
            best.label,
            f"{_value(best.primary.mean, ranking)} over {best.primary.n} seed(s)",
        )
    ]
    tied = [r for r in rows if r.tied_with_best]
    cheapest = min(
        tied, key=lambda r: r.wall_time_s.mean if not math.isnan(r.wall_time_s.mean) else math.inf
    )
    if cheapest is not best:
        cards.append(
            (
                "fastest run not significantly worse",
                cheapest.label,
                f"{_value(cheapest.primary.mean, ranking)} in "
                f"{format_duration(cheapest.wall_time_s.mean)} vs. "
                f"{format_duration(best.wall_time_s.mean)}",
            )
        )
    fewest = min(tied, key=lambda r: r.trainable_params or math.inf)
    if fewest is not best and fewest.trainable_params is not None:
        cards.append(
            (
                "fewest trainable parameters, not significantly worse",
                fewest.label,
                f"{format_int(fewest.trainable_params)} vs. {format_int(best.trainable_params)}",
            )
        )
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="small">{html.escape(k)}</div>'
            f'<div class="big">{html.escape(v)}</div>'
            f'<div class="small">{html.escape(d)}</div></div>'
            for k, v, d in cards
        )
        + "</div>"
    )


def _runs_table(
    records: Sequence[RunRecord], split: str, extras: Sequence[str], report_path: Path
) -> str:
    ranking = ranking_of(records)
    metric, second = ranking.metric, ranking.second

    def shown(value: float | None) -> str:
        return format_pct(value) if ranking.share else format_float(value)

    rows = []
    for r in sorted(records, key=lambda r: (r.label, r.seed)):
        link = r.run_dir / REPORT
        name: Any = r.run_dir.name
        if link.is_file():  # a relative link: works while the compare directory stays together
            href = os.path.relpath(link, report_path.parent)
            name = Markup(f'<a href="{html.escape(href)}">{html.escape(r.run_dir.name)}</a>')
        rows.append(
            [
                name,
                r.label,
                r.seed,
                shown(r.score(metric, split)),
                shown(r.score(second, split)),
                *[shown(r.score(metric, e)) for e in extras],
                scalar_text(r.results.get("best_epoch")),
                len(r.history),
                format_duration(r.number("wall_time_s")),
                format_int(r.number("trainable_params")),
                format_int(r.number("peak_rss_mb")),
            ]
        )
    headers = [
        "run",
        "strategy",
        "seed",
        f"{split} {ranking.name}",
        ranking.second_name,
        *[f"“{e}” {ranking.name}" for e in extras],
        "best epoch",
        "epochs",
        "wall time",
        "trainable",
        "peak MiB",
    ]
    numeric = range(2, len(headers))
    return f'<div class="table-wrap">{html_table(headers, rows, numeric=numeric)}</div>'


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(rows: Sequence[StrategySummary]) -> tuple[list[str], list[list[str]]]:
    """The config fields that differ between strategies (seeds and output aside): headers
    (field, then one column per strategy) and rows."""
    flat = []
    for row in rows:
        try:
            flat.append(_flatten(yaml.safe_load(row.runs[0].config_text) or {}))
        except yaml.YAMLError:
            flat.append({})
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    varying = [
        k
        for k in keys
        if not k.startswith("output.")
        and k != "train.seed"
        and len({scalar_text(f.get(k)) for f in flat}) > 1
    ]
    return ["field", *[r.label for r in rows]], [
        [k, *[scalar_text(f.get(k)) for f in flat]] for k in varying
    ]


def _configs_html(rows: Sequence[StrategySummary], spec_text: str | None) -> str:
    parts = []
    headers, diff = config_differences(rows)
    if diff and len(rows) > 1:
        parts.append("<h3>What differs between the strategies</h3>")
        parts.append(f'<div class="table-wrap">{html_table(headers, diff)}</div>')
    if spec_text:
        parts.append(
            "<details><summary>The compare spec</summary>"
            f"<pre>{html.escape(spec_text)}</pre></details>"
        )
    parts.append(
        "<h3>Exact configs</h3>"
        '<p class="note">Each strategy’s config as its first seed ran it; the seeds differ '
        "only in <code>train.seed</code> and <code>output.name</code>.</p>"
    )
    for row in rows:
        first = row.runs[0]
        parts.append(
            f"<details><summary>{html.escape(row.label)} "
            f'<span class="ci">{html.escape(first.run_dir.name)}</span></summary>'
            f"<pre>{html.escape(first.config_text)}</pre></details>"
        )
    return "\n".join(parts)


def _environment_html(records: Sequence[RunRecord]) -> str:
    import graft

    keys: list[str] = []
    values: dict[str, list[str]] = {}
    for r in records:
        env = r.results.get("environment")
        if not isinstance(env, dict):
            continue
        for k, v in env.items():
            if k not in keys:
                keys.append(k)
            text = scalar_text(v)
            if text not in values.setdefault(k, []):
                values[k].append(text)
    items = [("graft", graft.__version__)]
    items += [(k, " | ".join(values[k])) for k in keys]
    note = ""
    if any(len(v) > 1 for k, v in values.items() if k != "threads"):
        note = (
            '<p class="note">The runs did not all share one environment: values separated by |.</p>'
        )
    if not all(r.isolated for r in records):
        note += (
            '<p class="note">Some runs shared one process (--in-process): their peak memory is '
            "the process’s peak so far, not their own.</p>"
        )
    return key_value_table(items, numeric=False) + note


def _header(records: Sequence[RunRecord], rows: Sequence[StrategySummary], title: str) -> str:
    backbones = sorted({str(r.results.get("backbone", "–")) for r in records})
    datasets: list[str] = []
    for r in records:
        try:
            train = yaml.safe_load(r.config_text)["data"]["train"]
            name = train.get("dataset") or train.get("path")
        except (yaml.YAMLError, KeyError, TypeError, AttributeError):
            name = None
        if name and str(name) not in datasets:
            datasets.append(str(name))
    seeds = sorted({r.seed for r in records})
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    meta = [
        f"backbone <b>{html.escape(', '.join(backbones))}</b>",
        *([f"data <b>{html.escape(', '.join(datasets))}</b>"] if datasets else []),
        f"{len(rows)} strategies × {len(seeds)} seed(s) = {len(records)} runs",
        html.escape(generated),
    ]
    return (
        f'<header><h1>{html.escape(title)}</h1><div class="meta">'
        + "".join(f"<span>{m}</span>" for m in meta)
        + "</div></header>"
    )


def render_compare_report(
    records: Sequence[RunRecord],
    *,
    title: str = "graft compare",
    report_path: Path = Path("report.html"),
    notes: Sequence[str] = (),
    spec_text: str | None = None,
    gap: Gap | None = None,
) -> str:
    """The HTML text of the comparison report of ``records`` (see module docstring);
    ``spec_text`` is the compare spec as YAML, shown with the configs; ``gap`` adds the share
    of a source-only → oracle gap each strategy closes."""
    if not records:
        raise DataError("no finished run to report on")
    rows = summarize(records)
    split = evaluated_split(records)
    extras = extra_names(records)
    palette = colors([r.label for r in rows])
    sections: list[tuple[str, str]] = []

    board = _cards(rows, split) + leaderboard_html(rows, split, extras, palette)
    board += f'<p class="note">{html.escape(significance_note(rows))}</p>'
    if split != "test":
        board += '<p class="note">Some runs have no test set: the validation set is compared.</p>'
    board += "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    board += figure_to_img_tag(
        accuracy_figure(rows, split, palette),
        alt=f"{split} {rows[0].ranking.name} per strategy with 95% intervals",
    )
    sections.append(("Leaderboard", board))
    if gap is not None:
        sections.append(("Gap closed on the target", gap_html(gap, rows, palette)))

    if any(r.history for r in records):
        curves = figure_to_img_tag(
            curves_grid(rows, palette), alt="training and validation curves per strategy"
        )
        curves += (
            '<p class="note">Lines: mean over seeds; bands: lowest to highest seed. '
            "Epochs are counted over all phases of a plan.</p>"
        )
        sections.append(("Training curves", curves))

    sections.append(
        (
            "Cost",
            figure_to_img_tag(
                cost_figure(rows, split, palette),
                alt="accuracy against wall time and against trainable parameters",
            )
            + '<p class="note">Large dots: mean over seeds; small dots: seeds.</p>',
        )
    )

    if extras:
        sections.append(
            (
                "Domain shift",
                figure_to_img_tag(
                    shift_figure(rows, split, extras, palette),
                    alt="in-domain against shifted-domain accuracy",
                )
                + '<p class="note">Below the dashed diagonal a strategy loses accuracy under the '
                "shift; further right, it is better in domain.</p>",
            )
        )

    best = max(rows[0].runs, key=lambda r: r.score("accuracy", split) or -1.0)  # classifiers
    evaluated = best.results.get(split)
    if (
        isinstance(evaluated, dict)
        and evaluated.get("confusion_matrix")
        and evaluated.get("labels")
    ):
        matrix = figure_to_img_tag(
            confusion_figure(evaluated["confusion_matrix"], evaluated["labels"]),
            alt=f"confusion matrix of the best run on the {split} set",
        )
        intro = (
            f"<p>Best run: <b>{html.escape(best.run_dir.name)}</b> ({html.escape(best.label)}, "
            f"seed {best.seed}), {split} accuracy {format_pct(best.score('accuracy', split))}.</p>"
        )
        body = (
            f'{intro}<div class="side"><div>{matrix}</div>'
            f"<div><h3>Per-class scores</h3>{per_class_table(evaluated)}</div></div>"
        )
        sections.append((f"Best run ({split} set)", body))

    sections.append(("All runs", _runs_table(records, split, extras, report_path)))
    sections.append(("Configs", _configs_html(rows, spec_text)))
    sections.append(("Environment", _environment_html(records)))
    footer = f"Generated by graft {__import__('graft').__version__} from {len(records)} runs."
    return page(
        title,
        sections,
        header_html=_header(records, rows, title),
        footer_text=footer,
        extra_css=_EXTRA_CSS,
    )


def write_compare_report(
    records: Sequence[RunRecord],
    path: str | Path,
    *,
    title: str = "graft compare",
    notes: Sequence[str] = (),
    spec_text: str | None = None,
    gap: Gap | None = None,
) -> Path:
    """Write the comparison report of ``records`` to ``path``; returns the path."""
    target = Path(path)
    text = render_compare_report(
        records, title=title, report_path=target, notes=notes, spec_text=spec_text, gap=gap
    )
    with saving(target, "report"):
        atomic_write_text(target, text)
    return target


def report_from_dirs(
    paths: Sequence[str | Path],
    output: str | Path = "report.html",
    title: str | None = None,
    *,
    oracle: Sequence[str | Path] = (),
    baseline: str | None = None,
) -> Path:
    """``graft report RUN_DIR...``: the comparison report of existing runs or compares.

    ``oracle`` (run or compare directories trained with the target's labels) and ``baseline``
    (the label of the source-only strategy) add the share of the gap each strategy closes on
    the extra evaluation sets they share."""
    output = Path(output)
    writable_target(output)  # a folder, FIFO or device at the path is refused before any work
    check_writable_dir(output.parent, "--output")
    if bool(oracle) != (baseline is not None):
        raise UsageError(
            "--oracle and --baseline go together: the gap runs from the baseline to the oracle",
            hint="graft report ADAPT_DIR --oracle ORACLE_DIR --baseline source_only",
        )
    records, notes = collect_runs(paths)
    gap = None
    if baseline is not None:
        oracle_runs, oracle_notes = collect_runs(oracle)
        notes += [f"oracle: {n}" for n in oracle_notes]
        check_comparable([*records, *oracle_runs], same_data=False)
        try:
            gap = gap_closed(summarize(records), oracle_runs, baseline)
        except ValueError as e:
            raise UsageError(f"--baseline / --oracle: {e}") from None
    spec_text = None
    if len(paths) == 1 and (Path(paths[0]) / MANIFEST).is_file():
        spec = read_manifest(Path(paths[0])).get("spec")
        spec_text = yaml.safe_dump({"compare": spec}, sort_keys=False) if spec else None
    if title is None:
        title = (
            f"graft compare · {Path(paths[0]).resolve().name}"
            if len(paths) == 1
            else ("graft compare")
        )
    return write_compare_report(
        records, output, title=title, notes=notes, spec_text=spec_text, gap=gap
    )
