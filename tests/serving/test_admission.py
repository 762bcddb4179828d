"""Admission and failure handling of the micro-batcher (serving.batcher), with a real event loop and a model
call that takes real time: the queue is bounded (Overloaded, never growth), a failure that can be one request's
fault is retried request by request, and one that cannot (a refusal, an unreachable predictor) fails the batch
once. The HTTP and gRPC answers to these refusals are tested in test_serving.py and test_process.py."""

from __future__ import annotations

import asyncio

import pytest

from serving.batcher import BatchSettings, MicroBatcher
from serving.errors import Overloaded, PredictorUnavailable


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


async def close(batcher: MicroBatcher) -> None:
    await batcher.close()
    await asyncio.sleep(0)  # let the cancelled worker task finish


class SlowModel:
    """Each call takes `seconds` (the loop is free meanwhile, as with a model on a thread) and records its batch."""

    def __init__(self, seconds: float = 0.05, fail: Exception | None = None):
        self.seconds, self.fail, self.calls = seconds, fail, []

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail is not None:
            raise self.fail
        return [i * 10 for i in items]


def test_the_queue_is_bounded_and_overload_is_refused_at_once():
    async def go():
        model = SlowModel()
        batcher = MicroBatcher(model, BatchSettings(max_batch_rows=1000, max_queue_rows=300))
        first = asyncio.ensure_future(batcher.submit(0, 100))
        await asyncio.sleep(0.01)  # the first batch runs: what comes now waits in the queue
        results = await asyncio.gather(*(batcher.submit(i, 100) for i in range(1, 8)), return_exceptions=True)
        peak = batcher.queued_rows_peak
        assert batcher.full() is False  # drained
        out = await first
        await close(batcher)
        return out, results, peak, batcher, model

    first, results, peak, batcher, model = run(go())
    assert first == 0
    served = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert served == [10, 20, 30] and len(refused) == 4 and batcher.refused == 4
    assert peak == 300  # never past the bound
    assert "retry later" in str(refused[0]) and refused[0].retry_after_s >= 1
    assert model.calls == [[0], [1, 2, 3]]


def test_the_queue_is_bounded_in_time_at_the_models_recent_speed():
    async def go():
        model = SlowModel(0.1)  # 100 rows per 0.1 s: 1 ms per row
        batcher = MicroBatcher(model, BatchSettings(max_queue_rows=10**6, max_queue_ms=250))
        assert await batcher.submit(0, 100) == 0  # learns the speed
        assert batcher.seconds_per_row == pytest.approx(0.001, rel=0.5)
        first = asyncio.ensure_future(batcher.submit(1, 100))
        await asyncio.sleep(0.01)
        results = await asyncio.gather(*(batcher.submit(i, 100) for i in range(2, 6)), return_exceptions=True)
        await first
        await close(batcher)
        return results

    results = run(go())
    assert results[:2] == [20, 30] and all(isinstance(r, Overloaded) for r in results[2:]), results
    assert "ms of work" in str(results[2]) and "--max_queue_ms" in str(results[2])


def test_a_request_larger_than_the_bound_runs_when_the_queue_is_empty():
    async def go():
        batcher = MicroBatcher(SlowModel(0.0), BatchSettings(max_queue_rows=10))
        out = await batcher.submit(7, 50)
        await close(batcher)
        return out

    assert run(go()) == 70


def test_a_failure_that_may_be_one_requests_fault_is_retried_one_by_one():
    async def go():
        model = SlowModel(0.01, fail=ValueError("index out of range in one request"))
        batcher = MicroBatcher(model, BatchSettings())
        results = await asyncio.gather(*(batcher.submit(i, 1) for i in range(4)), return_exceptions=True)
        await close(batcher)
        return model, results

    model, results = run(go())
    assert all(isinstance(r, ValueError) for r in results)
    assert model.calls[0] == [0, 1, 2, 3] and model.calls[1:] == [[0], [1], [2], [3]]


@pytest.mark.parametrize("error", [PredictorUnavailable("connection refused"), Overloaded("predictor busy")])
def test_an_unreachable_predictor_fails_the_batch_once(error):
    async def go():
        model = SlowModel(0.01, fail=error)
        batcher = MicroBatcher(model, BatchSettings())
        first = asyncio.ensure_future(batcher.submit(0, 1))
        await asyncio.sleep(0)
        results = await asyncio.gather(first, *(batcher.submit(i, 1) for i in range(1, 5)),
                                       return_exceptions=True)
        await close(batcher)
        return model, results

    model, results = run(go())
    assert all(r is error for r in results)
    assert len(model.calls) == 2 and sum(map(len, model.calls)) == 5  # two batches, no one-by-one retries
