"""Metric updates buffered off the request path, and the worker's one thread that applies them.

The request path, the event loop and the model thread only append a tuple to a deque; the
worker's :data:`FLUSHER` thread wakes every ``REQUEST_FLUSH_SECONDS`` and calls every registered
``flush``, which drains its deque with :func:`take_all` and applies the values grouped and
vectorised (:func:`observe_many` for histograms). A counter or histogram update in multiprocess
mode takes a lock and writes a memory-mapped file: the six request updates cost about 8 us per
request, and the model-health updates 60 to 90 us per model call, which the model thread and the
event loop then could not spend on requests.

Users look the worker's flusher up as ``flusher.FLUSHER`` when they start, never bind it at
import: the tests replace it with one that never wakes, to flush by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from prometheus_client import Histogram

log = logging.getLogger(__name__)

# How stale the request and model-call metrics may be: far below any scrape interval.
REQUEST_FLUSH_SECONDS = 1.0
T = TypeVar("T")


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, as one update per touched bucket.

    prometheus_client has no bulk observe; this uses its (stable since 0.4) internals: a list of
    per-bucket values, non-cumulative, and a sum. The served metrics test checks the result.
    """
    if values.size == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for index in np.flatnonzero(counts):
        histogram._buckets[index].inc(int(counts[index]))
    histogram._sum.inc(float(values.sum()))


class Flusher:
    """The worker's thread that applies buffered metric updates every ``seconds``.

    Whatever buffers updates off the request path registers its ``flush`` here: one thread
    wakes once per period for all of them (each wake-up takes the interpreter lock from the
    requests), and the service's and BentoML's request metrics land in the same turn, so a scrape
    never shows the one applied and not the other. The thread starts with the first
    registration, inside the worker, and again with a registration in a process forked from one
    that had it (a fork copies no thread).
    """

    def __init__(self, seconds: float = REQUEST_FLUSH_SECONDS) -> None:
        self.seconds = seconds
        self._flushes: dict[Callable[[], None], str] = {}  # flush -> what it applies, for errors
        self._lock = threading.Lock()  # guards _flushes and _thread
        self._turn = threading.Lock()  # held while the flushes run
        self._thread: threading.Thread | None = None

    def register(self, flush: Callable[[], None], what: str) -> None:
        with self._lock:
            self._flushes[flush] = what
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="metrics-flusher", daemon=True
                )
                self._thread.start()

    def unregister(self, flush: Callable[[], None]) -> None:
        """Stop calling ``flush``; returns after a turn in progress is done with it, so that the
        caller's own last flush never runs beside the thread's."""
        with self._turn, self._lock:
            self._flushes.pop(flush, None)

    def flush(self) -> None:
        """Call every registered flush now; one that fails is logged and the others still run."""
        with self._turn:
            with self._lock:
                flushes = list(self._flushes.items())
            for flush, what in flushes:
                try:
                    flush()
                except Exception:  # metrics never take the worker down
                    log.exception("applying %s failed", what)

    def _run(self) -> None:
        while True:
            time.sleep(self.seconds)
            self.flush()


FLUSHER = Flusher()


def take_all(queue: deque[T]) -> list[T]:
    """What ``queue`` holds now (others may append meanwhile: they wait for the next turn)."""
    return [queue.popleft() for _ in range(len(queue))]
