"""The comparison report's "gap closed" table: how much of the gap between a source-only
baseline and an oracle trained with the target's labels each strategy closes."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from graft.compare.stats import Gap, StrategySummary
from graft.reports.html import Markup, html_table, pm


def gap_html(gap: Gap, rows: Sequence[StrategySummary], palette: dict[str, str]) -> str:
    """The share of the baseline → oracle gap each strategy closes (``id="gap"``)."""
    ranking = rows[0].ranking
    short = "acc." if ranking.metric == "accuracy" else ranking.name
    headers = ["strategy"]
    for name in gap.sets:
        headers += [f"{name} {short}{ranking.unit}", f"{name}: gap closed"]
    body: list[list[Any]] = []
    for row in sorted(rows, key=lambda r: -_first(gap.closed[r.label], gap.sets)):
        swatch = f'<span class="swatch" style="background:{palette[row.label]}"></span>'
        name = f'<span class="nowrap">{swatch}{html.escape(row.label)}</span>'
        if row.label == gap.baseline:
            name += ' <span class="ci">(baseline)</span>'
        cells: list[Any] = [Markup(name)]
        for s in gap.sets:
            share = gap.closed[row.label][s]
            cells += [
                pm(row.extra[s], ranking.share) if s in row.extra else "–",
                "–" if math.isnan(share) else f"{share:+.2f}",
            ]
        body.append(cells)
    oracle: list[Any] = ["oracle"]
    for s in gap.sets:
        oracle += [pm(gap.oracle[s], ranking.share), "1"]
    body.append(oracle)
    numeric = range(1, len(headers))
    table = html_table(headers, body, numeric=numeric, table_id="gap")
    return (
        f'<div class="table-wrap">{table}</div><p class="note">Gap closed: (strategy − '
        f"{html.escape(gap.baseline)}) / (oracle − {html.escape(gap.baseline)}) of the mean "
        f"{html.escape(ranking.name)} over seeds: 0 is the baseline, 1 the oracle (trained "
        "with the target's labels), below 0 worse than the baseline. Only the target's scores "
        "are compared: the oracle trained on other data, so it is not a row of the "
        "leaderboard.</p>"
    )


def _first(closed: dict[str, float], sets: Sequence[str]) -> float:
    value = closed[sets[0]]
    return -math.inf if math.isnan(value) else value
