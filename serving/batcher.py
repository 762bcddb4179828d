"""The micro-batcher: concurrent requests become one model call.

Requests queue up while the model is busy; when it is free, everything queued (up to `max_batch_rows`
candidate rows) runs as one batch. `max_wait_ms` > 0 additionally holds a batch open for that long to let it
fill, which trades latency for batch size; 0 (the default) adds no wait, so a lone request is never delayed
and batching happens exactly when there is a queue. A request larger than the limit runs alone.

Admission: the queue is bounded twice, and a request that would pass either bound is refused at once with
`serving.errors.Overloaded` (HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED), so overload costs a parse and a
refusal instead of growing memory and latency without bound:
- in time, `max_queue_ms`: the wait the queue means at the rate the model has been going (seconds per row, a
  moving average over the recent model calls). This is the bound that acts in a burst: an admitted request
  waits about that long at most, whatever the request sizes; the rest is answered 503 in well under a
  millisecond of server time;
- in rows, `max_queue_rows`: a hard bound on the memory the queue holds, whatever the speed.
A request larger than a bound is still taken when the queue is empty (it would run alone anyway, and
`--max_candidates` bounds it).

A failed model call fails its requests, never the worker. When the batch had several requests and the failure
can be one request's fault, they are retried one by one so that one bad request does not fail the others; a
failure that says nothing about the requests (`retry_singly` returns False: the predictor is unreachable, the
server is overloaded) fails the whole batch at once instead of costing one more failed call per request.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kserve.logging import logger
from prometheus_client import Counter, Gauge, Histogram

from serving.errors import Overloaded, ServiceUnavailable, ShuttingDown

__all__ = ["BATCH_REQUESTS", "BATCH_ROWS", "CPU_MAX_BATCH_ROWS", "REFUSED", "WORKER_REQUESTS", "T", "BatchSettings",
           "MicroBatcher", "retry_singly"]

T = TypeVar("T")

BATCH_ROWS = Histogram("shoprank_batch_rows", "Candidate rows per model call", ["model_name"],
                       buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 4000, 8000, 16000))
BATCH_REQUESTS = Histogram("shoprank_batch_requests", "Requests per model call", ["model_name"],
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128))
# Per live process (multiprocess mode adds the `pid` label): shows how the workers share the traffic, which the
# summed counters cannot.
WORKER_REQUESTS = Gauge("shoprank_worker_requests", "Requests this worker process has run through the model",
                        ["model_name"], multiprocess_mode="liveall")
REFUSED = Counter("shoprank_refused_requests", "Requests refused by admission (queue full: answered 503)",
                  ["model_name"])


# The CPU model server's largest batch (`python -m serving`; the transformer keeps BatchSettings' 8,192, which a
# GPU predictor wants). Measured (2 workers, 100 candidates per request, `make bench-serve`'s bodies): at c=32 the
# same throughput as 8,192 (4,609-4,682 against 4,616-4,633 req/s; batches hold ~7-16 requests there anyway);
# under a 3x open-loop burst, 8,192-row calls (82 requests) cost the most per row and left a standing queue: p50
# 300-430 ms for 5 s after the burst, against 4 ms from 0.5 s after it with 1,600 (800: the same recovery, 3% less
# at c=32). In process, 32 requests per call cost 1.4x more per request than 8 (cache).
CPU_MAX_BATCH_ROWS = 1600


@dataclass(frozen=True)
class BatchSettings:
    max_batch_rows: int = 8192
    max_wait_ms: float = 0.0
    # Candidate rows waiting, at most (~160 requests of 100 candidates): the memory bound.
    max_queue_rows: int = 16384
    # The longest wait the queue may mean (0: no time bound). Well above a normal queue (32 connections of 100
    # candidates are ~10 ms of model time per worker here), well below a client's timeout.
    max_queue_ms: float = 200.0


def retry_singly(error: Exception) -> bool:
    """Default for MicroBatcher: retry a failed batch request by request unless the failure is a refusal that
    would repeat for each of them."""
    return not isinstance(error, ServiceUnavailable)


class _Pending(Generic[T]):
    __slots__ = ("item", "rows", "future")

    def __init__(self, item: T, rows: int, future: asyncio.Future):
        self.item, self.rows, self.future = item, rows, future


class MicroBatcher(Generic[T]):
    """Queue + one worker task on the running event loop. `run_batch(items)` returns one result per item."""

    def __init__(self, run_batch: Callable[[list[T]], Awaitable[list[Any]]], settings: BatchSettings,
                 name: str = "model", retry_singly: Callable[[Exception], bool] = retry_singly):
        self._run_batch = run_batch
        self._retry_singly = retry_singly
        self.settings = settings
        self._labels = {"model_name": name}
        self._queue: collections.deque[_Pending[T]] = collections.deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.batches = 0  # model calls made
        self.requests = 0  # requests served through them
        self.refused = 0  # requests refused because the queue was full
        self.queued_rows_peak = 0  # the most rows ever waiting (tests and the benchmark read it)
        self.seconds_per_row: float | None = None  # moving average over recent model calls

    def _start(self) -> None:
        # Created lazily on the loop that serves requests (each uvicorn worker process has its own).
        self._loop = asyncio.get_running_loop()
        self._wakeup, self._full = asyncio.Event(), asyncio.Event()
        self._worker = self._loop.create_task(self._work(), name="shoprank-microbatcher")

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def queue_ms(self, rows: int = 0) -> float:
        """The wait, in ms, that the queue (plus `rows`) means at the recent model speed (0 before any call)."""
        return (self._queued_rows + rows) * (self.seconds_per_row or 0.0) * 1000

    def full(self) -> bool:
        """True when no request can be admitted now: checked before parsing, so overload is refused cheaply."""
        s = self.settings
        return self._queued_rows >= s.max_queue_rows or (s.max_queue_ms > 0 and self.queue_ms() >= s.max_queue_ms)

    def admit(self, rows: int) -> None:
        """Raise Overloaded when `rows` more would take the queue past max_queue_rows or max_queue_ms (an empty
        queue admits any request: it runs alone)."""
        if self._closed:
            raise ShuttingDown("the model is shutting down")
        if not self._queue:
            return
        s = self.settings
        if self._queued_rows + rows > s.max_queue_rows or (s.max_queue_ms > 0 and self.queue_ms(rows) > s.max_queue_ms):
            self.refuse()

    def refuse(self) -> None:
        """Count a refusal and raise Overloaded."""
        self.refused += 1
        REFUSED.labels(**self._labels).inc()
        raise Overloaded(f"overloaded: {self._queued_rows} candidate rows are queued, ~{self.queue_ms():.0f} ms of "
                         f"work (limits {self.settings.max_queue_rows} rows, --max_queue_rows, and "
                         f"{self.settings.max_queue_ms:.0f} ms, --max_queue_ms); retry later")

    async def submit(self, item: T, rows: int) -> Any:
        self.admit(rows)
        if self._worker is None or self._loop is not asyncio.get_running_loop():
            self._start()
        fut = self._loop.create_future()
        self._queue.append(_Pending(item, rows, fut))
        self._queued_rows += rows
        if self._queued_rows > self.queued_rows_peak:
            self.queued_rows_peak = self._queued_rows
        self._wakeup.set()
        if self._queued_rows >= self.settings.max_batch_rows:
            self._full.set()
        return await fut

    def _take(self) -> list[_Pending[T]]:
        batch, rows, limit = [], 0, self.settings.max_batch_rows
        while self._queue and (not batch or rows + self._queue[0].rows <= limit):
            p = self._queue.popleft()
            self._queued_rows -= p.rows
            if p.future.done():  # the client went away
                continue
            batch.append(p)
            rows += p.rows
        if self._queued_rows < limit:
            self._full.clear()
        return batch

    async def _work(self) -> None:
        wait_s = self.settings.max_wait_ms / 1000
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if wait_s > 0 and self._queued_rows < self.settings.max_batch_rows:
                deadline = time.monotonic() + wait_s
                try:
                    await asyncio.wait_for(self._full.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    pass
            batch = self._take()
            if not batch:
                continue
            await self._run(batch)

    async def _run(self, batch: list[_Pending[T]]) -> None:
        self.batches += 1
        self.requests += len(batch)
        BATCH_REQUESTS.labels(**self._labels).observe(len(batch))
        BATCH_ROWS.labels(**self._labels).observe(sum(p.rows for p in batch))
        WORKER_REQUESTS.labels(**self._labels).inc(len(batch))
        t0 = time.perf_counter()
        try:
            results = await self._run_batch([p.item for p in batch])
            rows = sum(p.rows for p in batch)
            if rows:
                per_row = (time.perf_counter() - t0) / rows
                self.seconds_per_row = per_row if self.seconds_per_row is None else \
                    0.8 * self.seconds_per_row + 0.2 * per_row
        except Exception as e:  # a failed model call fails its requests, never the worker
            if len(batch) > 1 and self._retry_singly(e):
                # One request that breaks the model must not fail the others: run them one by one.
                logger.warning("model call failed for a batch of %d requests (%s); retrying them one by one",
                               len(batch), e)
                for p in batch:
                    await self._run([p])
                return
            if isinstance(e, ServiceUnavailable):
                logger.warning("model call failed for %d request(s): %s", len(batch), e)
            else:
                logger.exception("model call failed")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        for p, r in zip(batch, results):
            if not p.future.done():
                p.future.set_result(r)

    async def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._closed = True
        if self._worker is None:
            return
        while self._queue:
            batch = self._take()
            if batch:
                await self._run(batch)
        self._worker.cancel()
