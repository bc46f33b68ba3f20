"""Dynamic micro-batching: the inputs of concurrent requests share one forward pass.

Every input waits in one bounded queue. A batch starts when ``max_batch`` inputs are waiting,
or when the oldest waiting input has waited ``max_wait`` seconds, whichever comes first; while
the model computes one batch the next one gathers, so under load batches fill up without any
added wait. The forward pass runs on one dedicated thread (torch and ONNX Runtime release the
GIL while they compute), so the event loop keeps reading and answering requests meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: One batch's inputs → one row of class probabilities per input.
Infer = Callable[[list[Any]], np.ndarray]
#: Called after each forward pass with its batch size and its seconds.
OnBatch = Callable[[int, float], None]
#: Called with the queue's depth whenever it changes (a gauge: every worker keeps its own).
OnDepth = Callable[[int], None]


class QueueFull(Exception):
    """The queue has no room for a request's inputs; ``retry_after`` is an estimate in whole
    seconds of when it will."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Result:
    """One input's probabilities and the size of the batch it was computed in."""

    probabilities: np.ndarray
    batch_size: int


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future[Result]
    since: float  # loop time of its arrival


@dataclass
class MicroBatcher:
    """The queue and the loop that empties it into forward passes (see the module's doc)."""

    infer: Infer
    #: The one thread that runs every forward pass (see :func:`compute_thread`).
    executor: ThreadPoolExecutor
    max_batch: int
    max_wait: float  # seconds
    max_queue: int  # inputs
    on_batch: OnBatch | None = None
    on_depth: OnDepth | None = None
    _queue: collections.deque[_Waiting] = field(default_factory=collections.deque)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    # Recent throughput (inputs per second of forward pass), for Retry-After.
    _rate: float = 0.0

    @property
    def depth(self) -> int:
        """Inputs waiting for a forward pass."""
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="graft-batcher")

    async def stop(self) -> None:
        """Stop after the batch in progress; inputs still waiting are cancelled (the server
        stops only once every accepted request was answered, so normally there are none)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiting in self._queue:
            waiting.future.cancel()
        self._queue.clear()

    def submit(self, items: Sequence[Any]) -> list[asyncio.Future[Result]]:
        """Queue a request's inputs together (all or none); their futures, in order.
        Raises :class:`QueueFull` when they do not fit."""
        if self.depth + len(items) > self.max_queue:
            raise QueueFull(self.retry_after())
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[Result]] = []
        for item in items:
            future: asyncio.Future[Result] = loop.create_future()
            self._queue.append(_Waiting(item, future, now))
            futures.append(future)
        self._arrived.set()
        self._depth_changed()
        return futures

    def retry_after(self) -> int:
        """Whole seconds until the inputs waiting now have been computed (at least 1)."""
        if self._rate <= 0:
            return 1
        return max(1, math.ceil(self.depth / self._rate))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            # Wait for more inputs until the batch is full or the oldest has waited long
            # enough. Under load the oldest has already waited through the previous forward
            # pass, so the batch goes at once with what has gathered.
            deadline = self._queue[0].since + self.max_wait
            while len(self._queue) < self.max_batch and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._compute(loop, batch)

    def _take(self) -> list[_Waiting]:
        """Up to ``max_batch`` inputs from the front, skipping those whose request gave up
        (timed out or disconnected)."""
        batch: list[_Waiting] = []
        while self._queue and len(batch) < self.max_batch:
            waiting = self._queue.popleft()
            if not waiting.future.done():
                batch.append(waiting)
        self._depth_changed()
        return batch

    def _depth_changed(self) -> None:
        if self.on_depth is not None:
            self.on_depth(len(self._queue))

    async def _compute(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        start = time.perf_counter()
        try:
            probabilities = await loop.run_in_executor(
                self.executor, self.infer, [w.item for w in batch]
            )
        except Exception as e:  # the requests answer 500; the server goes on
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        # An exponential average over the last few batches.
        rate = len(batch) / max(seconds, 1e-6)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        for waiting, row in zip(batch, probabilities, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(Result(row, len(batch)))


def compute_thread() -> ThreadPoolExecutor:
    """The single thread on which a server runs *every* torch operation: loading, warm-up and
    each forward pass. Each thread that runs an OpenMP-parallel torch op gets its own team of
    OpenMP workers, and two teams on 2 cores spin against each other: after torch had run once
    on a second thread, a MiniLM forward pass of one text took 27.5 ms instead of 15.3 ms
    (2 intra-op threads, 2-core EPYC, ``benchmarks/b11_serve_engine.py``)."""
    return ThreadPoolExecutor(1, thread_name_prefix="graft-compute")
