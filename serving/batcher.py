"""The micro-batcher: concurrent requests become one model call.

Requests queue up while the model is busy; when it is free, everything queued (up to `max_batch_rows`
candidate rows) runs as one batch. `max_wait_ms` > 0 additionally holds a batch open for that long to let it
fill, which trades latency for batch size; 0 (the default) adds no wait, so a lone request is never delayed
and batching happens exactly when there is a queue. A request larger than the limit runs alone.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kserve.logging import logger
from prometheus_client import Histogram

__all__ = ["BATCH_REQUESTS", "BATCH_ROWS", "T", "BatchSettings", "MicroBatcher"]

T = TypeVar("T")

BATCH_ROWS = Histogram("shoprank_batch_rows", "Candidate rows per model call", ["model_name"],
                       buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 4000, 8000, 16000))
BATCH_REQUESTS = Histogram("shoprank_batch_requests", "Requests per model call", ["model_name"],
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128))


@dataclass(frozen=True)
class BatchSettings:
    max_batch_rows: int = 8192
    max_wait_ms: float = 0.0


class _Pending(Generic[T]):
    __slots__ = ("item", "rows", "future")

    def __init__(self, item: T, rows: int, future: asyncio.Future):
        self.item, self.rows, self.future = item, rows, future


class MicroBatcher(Generic[T]):
    """Queue + one worker task on the running event loop. `run_batch(items)` returns one result per item."""

    def __init__(self, run_batch: Callable[[list[T]], Awaitable[list[Any]]], settings: BatchSettings,
                 name: str = "model"):
        self._run_batch = run_batch
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

    def _start(self) -> None:
        # Created lazily on the loop that serves requests (each uvicorn worker process has its own).
        self._loop = asyncio.get_running_loop()
        self._wakeup, self._full = asyncio.Event(), asyncio.Event()
        self._worker = self._loop.create_task(self._work(), name="shoprank-microbatcher")

    async def submit(self, item: T, rows: int) -> Any:
        if self._closed:
            raise RuntimeError("the model is shutting down")
        if self._worker is None or self._loop is not asyncio.get_running_loop():
            self._start()
        fut = self._loop.create_future()
        self._queue.append(_Pending(item, rows, fut))
        self._queued_rows += rows
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
        try:
            results = await self._run_batch([p.item for p in batch])
        except Exception as e:  # a failed model call fails its requests, never the worker
            if len(batch) > 1:
                # One request that breaks the model must not fail the others: run them one by one.
                logger.warning("model call failed for a batch of %d requests (%s); retrying them one by one",
                               len(batch), e)
                for p in batch:
                    await self._run([p])
                return
            logger.exception("model call failed")
            if not batch[0].future.done():
                batch[0].future.set_exception(e)
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
