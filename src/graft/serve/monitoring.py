"""The server's Prometheus metrics (``GET /metrics``), through prometheus-client.

Each app has its own registry, so two servers in one process (tests) do not mix counts. With
``--workers N`` every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by
``graft serve`` before the workers start) and ``/metrics`` adds up all workers, whichever one
answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: from a cached answer (~1 ms) to the default 30 s timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Metrics:
    """Request counts by endpoint and status, latency and batch-size histograms, queue depth,
    forward passes and inputs computed, and whether the model is ready."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "graft_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "graft_request_duration_seconds",
            "Time from a request's arrival to its answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "graft_batch_size", "Inputs per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.forward_seconds = Histogram(
            "graft_forward_seconds", "Time of one forward pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inputs = Counter("graft_inputs", "Inputs computed", registry=r)
        self.queue_depth = Gauge(
            "graft_queue_depth",
            "Inputs waiting for a forward pass",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.ready = Gauge(
            "graft_ready",
            "1 once the model is loaded and warmed up",
            multiprocess_mode="livemin",
            registry=r,
        )

    def batch_done(self, size: int, seconds: float) -> None:
        """A forward pass of ``size`` inputs took ``seconds``."""
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)
        self.inputs.inc(size)

    def exposition(self) -> tuple[bytes, str]:
        """The text ``/metrics`` answers, and its content type: every worker's values added up
        when there are several."""
        if os.environ.get(MULTIPROCESS_ENV):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
