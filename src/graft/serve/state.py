"""Where one server process stands: its model (once loaded), its batcher, its metrics, and
whether it is ``loading``, ``ready``, ``failed`` or ``stopping``."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from graft.errors import GraftError
from graft.serve.batcher import MicroBatcher, compute_thread
from graft.serve.engine import Engine
from graft.serve.monitoring import Metrics
from graft.serve.responses import ApiError
from graft.serve.settings import ServeSettings

log = logging.getLogger("graft.serve")


class ServerState:
    """The model (once loaded), the batcher, the metrics, and where the server stands:
    ``loading``, ``ready``, ``failed`` or ``stopping``."""

    def __init__(
        self, settings: ServeSettings, on_fatal: Callable[[GraftError], None] | None = None
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.batcher: MicroBatcher | None = None
        self.status = "loading"
        self.on_fatal = on_fatal
        self.compute = compute_thread()  # every torch operation runs on this one thread
        self._loading: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        """Load the model and run one warm-up batch off the event loop (``/health/live``
        answers meanwhile), then start the batcher and turn ready."""
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(self.compute, load_engine, self.settings)
            start = time.perf_counter()
            await loop.run_in_executor(self.compute, engine.warm_up, self.settings.max_batch)
            warmup_ms = round((time.perf_counter() - start) * 1000, 1)
        except Exception as e:  # a model that cannot serve: the server stops, saying why
            error = (
                e
                if isinstance(e, GraftError)
                else GraftError(
                    "the model failed to load or to compute its warm-up batch "
                    f"({type(e).__name__}: {e})"
                )
            )
            self.status = "failed"
            failed = {"event": "load_failed", "error": str(error)}
            if not isinstance(e, GraftError):
                failed["traceback"] = traceback.format_exc()
            log.error("load failed", extra={"fields": failed})
            if self.on_fatal is not None:
                self.on_fatal(error)
            return
        self.engine = engine
        self.batcher = MicroBatcher(
            engine.infer,
            self.compute,
            max_batch=self.settings.max_batch,
            max_wait=self.settings.max_wait_ms / 1000,
            max_queue=self.settings.max_queue,
            on_batch=self.metrics.batch_done,
            on_depth=self.metrics.queue_depth.set,
        )
        self.batcher.start()
        if self.status == "loading":
            self.status = "ready"
            self.metrics.ready.set(1)
        ready: dict[str, Any] = {
            "event": "ready",
            "model_id": engine.model_id,
            "backend": engine.backend,
            "device": str(engine.device),
            "precision": engine.precision,
            "warmup_batch": self.settings.max_batch,
            "warmup_ms": warmup_ms,
            "pid": os.getpid(),  # with --workers, each worker says when it is ready
        }
        log.info("ready", extra={"fields": ready})

    def stopping(self) -> None:
        """The server was asked to stop: not ready any more (accepted requests still finish)."""
        self.status = "stopping"
        self.metrics.ready.set(0)

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.batcher is not None:
            await self.batcher.stop()
        self.compute.shutdown(wait=True)

    def ready_engine(self) -> tuple[Engine, MicroBatcher]:
        if self.engine is None or self.batcher is None or self.status == "failed":
            raise ApiError(503, f"the model is not ready ({self.status})", {"Retry-After": "1"})
        return self.engine, self.batcher


def load_engine(settings: ServeSettings) -> Engine:
    """Load the model, to compute with the worker's threads, on its device and precision."""
    from graft.artifact import require_classifier
    from graft.deploy.variants import inference_precision, load_predictor, resolve_variant
    from graft.runtime import keep_freed_memory, set_threads
    from graft.serve.engine import model_id

    threads = settings.intra_op_threads
    set_threads(threads)
    # Batches of other lengths allocate other sizes: kept for reuse, the heap stops growing
    # once it has served the largest batch, instead of fragmenting with every new shape.
    keep_freed_memory()
    folder, backend = resolve_variant(settings.model, settings.backend)
    predictor = load_predictor(folder, settings.backend, threads=threads)
    require_classifier(predictor, "graft serve")
    device, precision = inference_precision(predictor, backend, settings.device, settings.precision)
    return Engine(
        predictor,
        settings.model_id or model_id(folder),
        backend,
        device,
        precision,
        settings.sub_batch,
    )
