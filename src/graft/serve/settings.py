"""What ``graft serve`` is told: the model, where to listen, and every limit, checked once.

The settings travel to worker processes as JSON (``--workers N`` starts each worker fresh), so
they are plain values only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass

from graft.errors import UsageError

#: Environment variable that carries the settings to worker processes.
SETTINGS_ENV = "GRAFT_SERVE_SETTINGS"
#: The API key may come from the environment instead of the command line (which ``ps`` shows).
API_KEY_ENV = "GRAFT_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """Every knob of the server. Sizes in bytes, times in seconds (``max_wait_ms`` excepted)."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    #: The most inputs in one forward pass, and how long the first input of a batch waits
    #: for others to join it.
    max_batch: int = 32
    max_wait_ms: float = 10.0
    #: Texts of a gathered batch are sorted by length and computed this many at a time, so a
    #: long text does not pad every short one (images have one size: computed all at once).
    sub_batch: int = 16
    #: ``auto``: bf16 where the hardware computes it natively (not for CNNs on a CPU), as in
    #: training; ``fp32`` gives exactly ``graft predict``'s numbers.
    precision: str = "auto"
    device: str = "auto"
    #: Inputs waiting for a forward pass; a request that does not fit is answered 503.
    max_queue: int = 256
    #: Inputs in one request.
    max_items: int = 64
    max_body: int = 4_000_000
    max_text_chars: int = 10_000
    #: Pixels of one uploaded image (width × height), checked before it is decoded.
    max_pixels: int = 16_000_000
    #: Seconds from a request's arrival to its answer before it is answered 504.
    timeout: float = 30.0
    workers: int = 1
    #: Intra-op threads per worker (default: the cores divided by the workers).
    threads: int | None = None
    api_key: str | None = None
    #: Whether request logs hold the inputs (texts; images are never logged).
    log_inputs: bool = False
    #: The id answers carry (default: the model folder's name and a hash of its files).
    model_id: str | None = None

    def check(self) -> None:
        """Refuse values no server can run with, naming the option."""
        positive = {
            "--max-batch": self.max_batch,
            "--sub-batch": self.sub_batch,
            "--max-queue": self.max_queue,
            "--max-items": self.max_items,
            "--max-body": self.max_body,
            "--max-text-chars": self.max_text_chars,
            "--max-pixels": self.max_pixels,
            "--timeout": self.timeout,
            "--workers": self.workers,
        }
        for option, value in positive.items():
            if value <= 0:
                raise UsageError(f"{option} must be positive, not {value}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UsageError(f"--precision {self.precision!r}: choose auto, fp32 or bf16")
        if self.max_wait_ms < 0:
            raise UsageError(f"--max-wait-ms must be 0 or more, not {self.max_wait_ms}")
        if self.threads is not None and self.threads <= 0:
            raise UsageError(f"--threads must be positive, not {self.threads}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: a port is 0 (any free one) to 65535")
        if self.max_queue < self.max_items:
            raise UsageError(
                f"--max-queue {self.max_queue} is below --max-items {self.max_items}: a "
                "request of the largest allowed size could never be queued"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("--api-key is empty")
        cores = len(os.sched_getaffinity(0))
        if self.workers > cores:
            raise UsageError(
                f"--workers {self.workers} is more than this machine's {cores} cores",
                hint="each worker holds a model copy and computes with its own threads",
            )

    @property
    def loopback(self) -> bool:
        """Whether the server is reachable from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def intra_op_threads(self) -> int:
        """Threads each worker computes with: ``threads``, or an equal share of the cores."""
        return self.threads or max(1, len(os.sched_getaffinity(0)) // self.workers)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        return cls(**json.loads(text))
