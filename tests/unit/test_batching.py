from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from service.batching import BatcherClosed, BatcherFull, MicroBatcher


class Recorder:
    """A model stand-in that records the batches it gets; the first call can be held open."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.entered = threading.Event()  # a call has started (and is held while not released)
        self.release = threading.Event()
        self.release.set()

    def __call__(self, parts: list[list[int]]) -> list[int]:
        self.entered.set()
        self.release.wait(30)
        rows = [r for part in parts for r in part]
        self.calls.append(rows)
        return [r * 10 for r in rows]


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the event loop run until ``condition`` holds (a bound on a hang, not a speed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_requests_arriving_during_a_call_share_the_next_call() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_rows=100)
    model.release.clear()
    first = asyncio.create_task(batcher.submit([1]))
    await until(model.entered.is_set)  # the first call is now running, held open
    rest = [asyncio.create_task(batcher.submit([i, i + 100])) for i in range(2, 6)]
    await until(lambda: batcher.queued_rows == 8)  # all four wait for the next call
    model.release.set()
    alone = await first
    assert (alone.results, alone.rows, alone.requests) == ([10], 1, 1)
    merged = [await t for t in rest]
    assert [m.results for m in merged] == [[i * 10, (i + 100) * 10] for i in range(2, 6)]
    assert {(m.rows, m.requests) for m in merged} == {(8, 4)}
    assert model.calls == [[1], [2, 102, 3, 103, 4, 104, 5, 105]]
    await batcher.aclose()


async def test_batches_respect_max_rows_and_oversized_requests_run_alone() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_rows=4)
    model.release.clear()
    first = asyncio.create_task(batcher.submit([0]))
    await until(model.entered.is_set)
    tasks = [asyncio.create_task(batcher.submit(rows)) for rows in ([1, 2], [3, 4], [5] * 6, [7])]
    await until(lambda: batcher.queued_rows == 11)
    model.release.set()
    await asyncio.gather(first, *tasks)
    assert model.calls == [[0], [1, 2, 3, 4], [5] * 6, [7]]
    await batcher.aclose()


async def test_observer_sees_rows_requests_and_duration() -> None:
    seen: list[tuple[int, int, float]] = []
    recorder = Recorder()

    def slow_model(parts: list[list[int]]) -> list[int]:
        time.sleep(0.05)
        return recorder(parts)

    batcher = MicroBatcher(slow_model, 10, on_batch=lambda *a: seen.append(a))
    await batcher.submit([1, 2, 3])
    assert seen[0][:2] == (3, 1)
    assert seen[0][2] >= 0.05  # the model call's duration, at least what the call took
    await batcher.aclose()


async def test_a_failing_call_fails_its_requests_only() -> None:
    def model(parts: list[list[int]]) -> list[int]:
        rows = [r for part in parts for r in part]
        if 13 in rows:
            raise ValueError("unlucky")
        return rows

    batcher = MicroBatcher(model, max_rows=1)
    results = await asyncio.gather(
        batcher.submit([13]), batcher.submit([1]), return_exceptions=True
    )
    assert isinstance(results[0], ValueError)
    assert results[1].results == [1]
    assert (await batcher.submit([2])).results == [2]  # the loop survives
    await batcher.aclose()


async def test_the_model_gets_each_request_as_it_was_submitted() -> None:
    # What a request carries beside its rows (the validator's columns) must reach the call.
    class Tagged(list[int]):
        tag = "kept"

    seen: list[list[object]] = []

    def model(parts: list[list[int]]) -> list[int]:
        seen.append([getattr(p, "tag", None) for p in parts])
        return [r for part in parts for r in part]

    batcher = MicroBatcher(model, max_rows=10)
    first, second = await asyncio.gather(batcher.submit(Tagged([1, 2])), batcher.submit([3]))
    assert (first.results, second.results) == ([1, 2], [3])
    assert seen == [["kept", None]] or seen == [["kept"], [None]]
    await batcher.aclose()


async def test_a_wrong_length_answer_is_an_error_not_a_misalignment() -> None:
    batcher = MicroBatcher(lambda parts: parts[0][:-1], max_rows=10)
    with pytest.raises(RuntimeError, match="returned 1 for 2 rows"):
        await batcher.submit([1, 2])
    await batcher.aclose()


async def test_close_answers_what_was_submitted_then_refuses() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_rows=100)
    model.release.clear()
    pending = [asyncio.create_task(batcher.submit([i])) for i in range(3)]
    await until(model.entered.is_set)
    closing = asyncio.create_task(batcher.aclose())
    await asyncio.sleep(0)  # aclose() runs up to its wait for the batcher's loop
    model.release.set()
    await closing
    assert [(await t).results for t in pending] == [[0], [10], [20]]
    with pytest.raises(BatcherClosed):
        await batcher.submit([4])


async def test_a_cancelled_caller_does_not_break_the_others() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_rows=100)
    model.release.clear()
    first = asyncio.create_task(batcher.submit([1]))
    await until(model.entered.is_set)
    gone = asyncio.create_task(batcher.submit([2]))
    kept = asyncio.create_task(batcher.submit([3]))
    await until(lambda: batcher.queued_rows == 2)
    gone.cancel()
    model.release.set()
    assert (await first).results == [10]
    assert (await kept).results == [30]
    await batcher.aclose()


async def test_a_caller_cancelled_while_queued_is_not_computed() -> None:
    # Requests that timed out in the queue (BentoML's timeout cancels them) cost no model time.
    model = Recorder()
    batcher = MicroBatcher(model, max_rows=100)
    model.release.clear()
    first = asyncio.create_task(batcher.submit([1]))
    await until(model.entered.is_set)
    gone = [asyncio.create_task(batcher.submit([i])) for i in (2, 3)]
    kept = asyncio.create_task(batcher.submit([4]))
    last_gone = asyncio.create_task(batcher.submit([5]))
    await until(lambda: batcher.queued_rows == 4)
    for task in (*gone, last_gone):
        task.cancel()
    model.release.set()
    assert (await first).results == [10]
    merged = await kept
    assert (merged.results, merged.rows, merged.requests) == ([40], 1, 1)
    assert model.calls == [[1], [4]]
    await batcher.aclose()


async def test_a_queue_of_cancelled_callers_makes_no_call() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_rows=100)
    model.release.clear()
    first = asyncio.create_task(batcher.submit([1]))
    await until(model.entered.is_set)
    gone = [asyncio.create_task(batcher.submit([i])) for i in (2, 3)]
    await until(lambda: batcher.queued_rows == 2)
    for task in gone:
        task.cancel()
    model.release.set()
    assert (await first).results == [10]
    assert (await batcher.submit([6])).results == [60]
    assert model.calls == [[1], [6]]
    await batcher.aclose()


async def test_rows_beyond_the_queue_bound_are_refused_not_queued() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_rows=100, max_queued_rows=3)
    model.release.clear()
    running = asyncio.create_task(batcher.submit([1, 2, 3, 4]))  # taken at once: not queued
    await until(model.entered.is_set)
    queued = [asyncio.create_task(batcher.submit([i])) for i in (5, 6)]
    await until(lambda: batcher.queued_rows == 2)
    batcher.check_room()  # room for one more row
    with pytest.raises(BatcherFull, match="2 rows are waiting for the model"):
        await batcher.submit([7, 8])
    fits = asyncio.create_task(batcher.submit([9]))
    await until(lambda: batcher.queued_rows == 3)
    with pytest.raises(BatcherFull, match="3 rows are waiting"):
        batcher.check_room()  # full: no request can join, whatever its size
    model.release.set()
    assert (await running).results == [10, 20, 30, 40]
    assert [(await t).results for t in (*queued, fits)] == [[50], [60], [90]]
    assert batcher.queued_rows == 0
    # an empty queue takes any request, larger than the bound too
    assert (await batcher.submit([1, 2, 3, 4, 5])).results == [10, 20, 30, 40, 50]
    await batcher.aclose()


async def test_cancelled_callers_free_their_place_in_the_queue() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_rows=100, max_queued_rows=2)
    model.release.clear()
    running = asyncio.create_task(batcher.submit([1]))
    await until(model.entered.is_set)
    gone = [asyncio.create_task(batcher.submit([i])) for i in (2, 3)]
    await until(lambda: batcher.queued_rows == 2)
    for task in gone:
        task.cancel()
    model.release.set()
    assert (await running).results == [10]
    assert (await batcher.submit([4, 5])).results == [40, 50]
    assert batcher.queued_rows == 0
    await batcher.aclose()
