"""Merge concurrent requests into shared model calls, without waiting for a batch to fill.

A model call costs nearly the same for 1 row as for hundreds (fixed pandas/sklearn overhead), so
throughput comes from merging. Timer-based batchers wait up to a deadline for more requests, which
puts the wait on every request at low load and, when the estimate of the deadline is off, in the
tail at high load. This one never waits: one call runs at a time per process; requests that
arrive while it runs queue up, and when it returns everything queued (up to ``max_rows``) becomes
the next call. At low load a request pays one model call; under load batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Row = TypeVar("Row")
Result = TypeVar("Result")
log = logging.getLogger(__name__)

BatchObserver = Callable[[int, int, float], None]  # (rows, requests, seconds)


@dataclass(frozen=True, slots=True)
class Batched(Generic[Result]):
    """A request's results and the model call that produced them."""

    results: Sequence[Result]
    rows: int  # rows of the merged call
    requests: int  # requests merged into it


class BatcherClosed(RuntimeError):
    """The batcher is shut down and takes no more work."""


class BatcherFull(RuntimeError):
    """The rows waiting for the model would exceed the batcher's bound: refused, not queued."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(
            f"the server is overloaded: {queued} rows are waiting for the model (at most "
            f"{limit}); retry later"
        )


class MicroBatcher(Generic[Row, Result]):
    def __init__(
        self,
        fn: Callable[[list[Sequence[Row]]], Sequence[Result]],
        max_rows: int,
        on_batch: BatchObserver | None = None,
        max_queued_rows: int = 0,
    ) -> None:
        """``fn`` maps the merged requests' rows (a list of the submitted sequences, in order) to
        one result per row, in order; it runs on one thread. It gets the sequences as they were
        submitted, not one list of rows, so that what a request carries beside its rows (the
        validator's columns) reaches the model call.

        ``max_queued_rows`` bounds the rows waiting for a model call (0: no bound): a request
        that would exceed it raises :class:`BatcherFull`, unless nothing waits (so that any
        request can run). Without a bound, overload queues without limit: memory grows with
        every connection and each request waits longer, until the clients' or the server's
        timeouts answer them all too late."""
        self._fn = fn
        self._max_rows = max_rows
        self._max_queued_rows = max_queued_rows
        self._queued_rows = 0  # rows in _pending, cancelled callers' included until dropped
        self._on_batch = on_batch
        self._pending: deque[tuple[Sequence[Row], asyncio.Future[Batched[Result]]]] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a model call."""
        return self._queued_rows

    def check_room(self) -> None:
        """Raise :class:`BatcherFull` if the queue is at its bound, when no request can join it:
        a transport refuses such a request before reading and decoding its body."""
        if self._max_queued_rows and self._queued_rows >= self._max_queued_rows:
            raise BatcherFull(self._queued_rows, self._max_queued_rows)

    async def submit(self, rows: Sequence[Row]) -> Batched[Result]:
        """Results for ``rows``, computed in a call shared with other concurrent requests."""
        if self._closed:
            raise BatcherClosed("the model is shutting down")
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="batcher")
        limit = self._max_queued_rows
        if limit and self._queued_rows and self._queued_rows + len(rows) > limit:
            raise BatcherFull(self._queued_rows, limit)
        future: asyncio.Future[Batched[Result]] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        self._queued_rows += len(rows)
        self._wakeup.set()
        return await future

    async def aclose(self) -> None:
        """Finish every submitted request, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task
        self._executor.shutdown(wait=True)

    def _take_batch(self) -> list[tuple[Sequence[Row], asyncio.Future[Batched[Result]]]]:
        """The next call's requests; empty when every pending one is gone."""
        # A caller cancelled while queued (BentoML's request timeout, a gRPC deadline or cancel)
        # is not computed: under overload the queue fills with requests that time out, and
        # scoring them anyway spent the model thread on answers nobody reads while the live
        # requests behind them timed out in turn.
        self._drop_gone()
        if not self._pending:
            return []
        batch = [self._pending.popleft()]
        rows = len(batch[0][0])
        while True:
            self._drop_gone()
            if not self._pending or rows + len(self._pending[0][0]) > self._max_rows:
                self._queued_rows -= rows
                return batch
            item = self._pending.popleft()
            rows += len(item[0])
            batch.append(item)

    def _drop_gone(self) -> None:
        while self._pending and self._pending[0][1].done():
            self._queued_rows -= len(self._pending.popleft()[0])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._take_batch()
                if not batch:
                    break
                parts = [rows for rows, _ in batch]
                total = sum(map(len, parts))
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, self._fn, parts)
                    if len(results) != total:
                        raise RuntimeError(f"model returned {len(results)} for {total} rows")
                except Exception as exc:
                    log.exception("model call on %d rows failed", total)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                if self._on_batch is not None:
                    try:
                        self._on_batch(total, len(batch), time.perf_counter() - started)
                    except Exception:
                        log.exception("batch observer failed")
                offset = 0
                for rows, future in batch:
                    # Done already: its caller was cancelled during the call (BentoML's request
                    # timeout, a gRPC deadline or cancel). An HTTP client that closes its
                    # connection cancels nothing: its request is answered as usual.
                    if not future.done():
                        future.set_result(
                            Batched(results[offset : offset + len(rows)], total, len(batch))
                        )
                    offset += len(rows)
            if self._closed:
                return
