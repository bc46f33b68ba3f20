"""The micro-batcher on its own (no HTTP): when a batch starts, what it holds, what is refused.
The model is a stand-in that records each batch, so the batches can be checked exactly."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from graft.serve.batcher import MicroBatcher, QueueFull


class Recorder:
    """A model that answers one row per input (the input itself) and records its batches."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.seconds = seconds

    def __call__(self, inputs: list[Any]) -> np.ndarray:
        self.batches.append(list(inputs))
        time.sleep(self.seconds)
        return np.asarray([[float(x)] for x in inputs])


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def batcher(model: Recorder, **kw: Any) -> MicroBatcher:
    options = {"max_batch": 4, "max_wait": 0.2, "max_queue": 16} | kw
    return MicroBatcher(model, ThreadPoolExecutor(1), **options)


def test_a_lone_input_waits_max_wait_then_goes_alone() -> None:
    async def go() -> tuple[float, Any]:
        model = Recorder()
        b = batcher(model, max_wait=0.2)
        b.start()
        start = time.monotonic()
        (result,) = await asyncio.gather(*b.submit([7]))
        elapsed = time.monotonic() - start
        await b.stop()
        return elapsed, (model.batches, result)

    elapsed, (batches, result) = run(go())
    assert batches == [[7]] and result.batch_size == 1 and result.probabilities[0] == 7.0
    assert 0.18 <= elapsed < 1.0


def test_a_full_batch_goes_at_once_and_the_rest_follows_in_order() -> None:
    async def go() -> tuple[float, list[list[Any]], list[Any]]:
        model = Recorder()
        b = batcher(model, max_batch=4, max_wait=5.0)
        b.start()
        start = time.monotonic()
        futures = b.submit([0, 1, 2, 3, 4, 5, 6, 7])  # two full batches: no waiting
        results = await asyncio.gather(*futures)
        elapsed = time.monotonic() - start
        await b.stop()
        return elapsed, model.batches, results

    elapsed, batches, results = run(go())
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [r.probabilities[0] for r in results] == list(range(8))
    assert elapsed < 2.0  # far below max_wait


def test_inputs_arriving_while_the_model_computes_form_the_next_batch() -> None:
    async def go() -> list[list[Any]]:
        model = Recorder(seconds=0.3)
        b = batcher(model, max_batch=8, max_wait=0.0)
        b.start()
        first = b.submit([0])
        await asyncio.sleep(0.1)  # the model is busy with [0]
        rest = [f for i in range(1, 6) for f in b.submit([i])]
        await asyncio.gather(*first, *rest)
        await b.stop()
        return model.batches

    assert run(go()) == [[0], [1, 2, 3, 4, 5]]


def test_a_request_that_does_not_fit_is_refused_whole() -> None:
    async def go() -> tuple[int, int, list[list[Any]]]:
        model = Recorder()
        b = batcher(model, max_queue=5, max_wait=10.0)  # not started: nothing leaves the queue
        b.submit([1, 2, 3])
        with pytest.raises(QueueFull) as refused:
            b.submit([4, 5, 6])
        depth = b.depth
        await b.stop()
        return depth, refused.value.retry_after, model.batches

    depth, retry_after, batches = run(go())
    assert depth == 3 and retry_after >= 1 and batches == []


def test_abandoned_inputs_are_not_computed() -> None:
    async def go() -> list[list[Any]]:
        model = Recorder()
        b = batcher(model, max_batch=4, max_wait=0.3)
        b.start()
        gone = b.submit([1, 2])
        for f in gone:
            f.cancel()  # what a timed-out request does
        kept = b.submit([3])
        await asyncio.gather(*kept)
        await b.stop()
        return model.batches

    assert run(go()) == [[3]]


def test_a_failing_model_fails_its_batch_and_the_next_batch_still_runs() -> None:
    class Flaky(Recorder):
        def __call__(self, inputs: list[Any]) -> np.ndarray:
            if -1 in inputs:
                raise RuntimeError("boom")
            return super().__call__(inputs)

    async def go() -> tuple[list[Any], list[list[Any]]]:
        model = Flaky()
        b = batcher(model, max_batch=2, max_wait=0.0)
        b.start()
        bad = await asyncio.gather(*b.submit([-1]), return_exceptions=True)
        good = await asyncio.gather(*b.submit([5]))
        await b.stop()
        return [*bad, good[0].probabilities[0]], model.batches

    outcome, batches = run(go())
    assert isinstance(outcome[0], RuntimeError) and outcome[1] == 5.0 and batches == [[5]]


def test_texts_computed_in_length_sorted_sub_batches_equal_one_batch(text_model: Any) -> None:
    """--sub-batch changes how the texts of a gathered batch are grouped for the model, never
    their answers (padding is masked), and each answer stays in its input's place."""
    from graft.artifact import load_model
    from graft.serve.engine import Engine

    predictor = load_model(text_model)
    texts = [" ".join(["word"] * n) + f" {n}" for n in (1, 12, 3, 9, 2, 14, 5, 7)]
    whole = Engine(predictor, "m", "torch", torch.device("cpu"), "fp32", sub_batch=8)
    split = Engine(predictor, "m", "torch", torch.device("cpu"), "fp32", sub_batch=2)
    one_by_one = np.concatenate([whole.infer([t]) for t in texts])
    np.testing.assert_allclose(split.infer(texts), whole.infer(texts), atol=1e-6)
    np.testing.assert_allclose(split.infer(texts), one_by_one, atol=1e-6)
