"""The report of ``graft benchmark``: one table of every variant (latency, throughput, size,
memory, accuracy, each against the reference) and the accuracy-against-latency picture. From
the results alone, torch-free."""

from __future__ import annotations

from typing import Any

from graft.reports.figures import figure_to_img_tag, new_figure, shorten
from graft.reports.html import Markup, html_table, key_value_table, page


def _fmt(value: Any, digits: int = 2) -> Any:
    return "" if value is None else f"{value:.{digits}f}"


def render_benchmark(results: dict[str, Any]) -> str:
    """The HTML report of a benchmark's ``results`` (as :func:`graft.deploy.benchmark.benchmark`
    returns them)."""
    rows = results["rows"]
    table = html_table(
        [
            "variant",
            "backend",
            "precision",
            "weights MB",
            "p50 ms (batch 1)",
            "p99 ms",
            "× faster",
            "throughput /s",
            "× throughput",
            "peak RSS MB",
            "test accuracy",
            "Δ points",
            "",
        ],
        [
            [
                r["variant"],
                r["backend"],
                r["precision"],
                _fmt(r["weights_mb"], 1),
                _fmt(r.get("latency_ms_p50")),
                _fmt(r.get("latency_ms_p99")),
                _fmt(r.get("speedup_b1")),
                _fmt(r.get("throughput"), 1),
                _fmt(r.get("speedup_throughput")),
                _fmt(r["peak_rss_mb"], 0),
                _fmt(100 * r["test_accuracy"]),
                _fmt(r["accuracy_change_points"]),
                Markup("<b>slower than the reference</b>") if r["slower"] else "",
            ]
            for r in rows
        ],
        numeric=range(3, 12),
    )
    fig = new_figure(6.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        if r.get("latency_ms_p50") is None:
            continue
        ax.scatter([r["latency_ms_p50"]], [100 * r["test_accuracy"]])
        ax.annotate(
            shorten(r["variant"].rstrip("/").split("/")[-1], 28),
            (r["latency_ms_p50"], 100 * r["test_accuracy"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xlabel("latency at batch 1, p50 (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    machine = results["machine"]
    facts = [
        ("CPU", machine.get("cpu")),
        (
            "cores / threads",
            f"{machine.get('cores')} / {results['options'].get('threads') or 'all'}",
        ),
        ("CPU flags", ", ".join(machine.get("cpu_flags", [])) or "none of note"),
        ("int8 kernels", machine.get("int8_kernels")),
        ("torch", machine.get("torch")),
        ("repeats / warm-up", f"{results['options']['repeats']} / {results['options']['warmup']}"),
        ("date", results.get("date")),
    ]
    return page(
        "graft benchmark",
        [
            (
                "Variants",
                table + '<p class="note">The first row is the reference; latency is '
                "the forward pass on prepared inputs, one real test example per call.</p>",
            ),
            ("Accuracy against latency", figure_to_img_tag(fig, "accuracy against latency")),
            ("Machine", key_value_table(facts, numeric=False)),
        ],
    )
