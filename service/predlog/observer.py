"""What the prediction log reports about itself, at the moment it happens.

The writer calls a :class:`LogObserver` at every change: rows written, spooled, replayed,
dropped, pruned; a failed store operation; the store going down or coming back; and, about once
per flush interval, the queue depth, the spool size and the age of the oldest record not yet in
the store. Methods are called from the writer and pruner threads, ``queue_depth``/``backlog_age``
also from the writer's watch thread while a turn is stuck in the store, and ``spooled``/
``dropped`` also from the request path (the worker's event loop) when the queue is full; they
must be cheap and must not raise.

The interface is push-only on purpose: BentoML aggregates worker metrics with prometheus_client's
*multiprocess mode*, where only values written when they change are exported (no custom
collectors, no reads at scrape time). A Prometheus implementation maps each method onto one
metric::

    written(table, rows)            counter  rows committed from the queue
    spooled(table, rows)            counter  rows written to the local spool
    replayed(table, rows)           counter  rows committed from the spool
    dropped(table, rows, reason)    counter  rows lost, by reason (see DropReason)
    pruned(table, rows)             counter  rows deleted by retention
    write_failed(operation)         counter  failed store operations (see Operation)
    store_up(up)                    gauge    1 while the store takes writes (multiprocess: livemin)
    queue_depth(rows)               gauge    rows waiting in memory (multiprocess: livesum)
    spool_bytes(size)               gauge    bytes in the spool directory (multiprocess: livemax)
    backlog_age(seconds)            gauge    oldest unwritten record's age (multiprocess: livemax)

``table`` is ``predictions`` or ``rejections`` (``unknown`` for a damaged spool line, whose
content cannot be read); every label set is bounded. Every accepted row
ends as exactly one of written, spooled or dropped(``spool_full``, or ``worker_died`` when its
process was killed before either); every spooled row later as
replayed (possibly by another process sharing the spool directory) or dropped(``corrupt``/
``refused``). :class:`CountingObserver` keeps these numbers in memory (tests, the shutdown
summary); :class:`Observers` fans out to several.

To plug one in, pass it where the service opens the log (``service/service.py``)::

    PredictionLog.from_settings(settings, observer=MyObserver())

It is first called when the log starts, in the worker process (after BentoML has set up its
multiprocess metrics directory).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

DropReason = Literal["spool_full", "corrupt", "refused", "worker_died"]
"""``spool_full``: the spool was over its size cap, or its disk refused the write. ``corrupt``: a
spool line torn by a crash or damaged on disk. ``refused``: the store rejected the row itself
(constraint or data error); the row is kept in the spool's ``quarantine/`` directory for
inspection, not replayed. ``worker_died``: a process killed outright (SIGKILL, the OOM killer)
had the rows queued in memory; counted by the process that finds its ledger (ledger.py)."""

Operation = Literal["write", "replay", "prune", "connect"]


class LogObserver(Protocol):
    def written(self, table: str, rows: int) -> None: ...
    def spooled(self, table: str, rows: int) -> None: ...
    def replayed(self, table: str, rows: int) -> None: ...
    def dropped(self, table: str, rows: int, reason: DropReason) -> None: ...
    def pruned(self, table: str, rows: int) -> None: ...
    def write_failed(self, operation: Operation) -> None: ...
    def store_up(self, up: bool) -> None: ...
    def queue_depth(self, rows: int) -> None: ...
    def spool_bytes(self, size: int) -> None: ...
    def backlog_age(self, seconds: float) -> None: ...


class CountingObserver:
    """Keeps every count and the latest gauge values in memory; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.up: bool | None = None
        self.depth = 0
        self.spool_size = 0
        self.age = 0.0

    def _add(self, key: str, rows: int) -> None:
        with self._lock:
            self.counts[key] += rows

    def written(self, table: str, rows: int) -> None:
        self._add(f"written.{table}", rows)

    def spooled(self, table: str, rows: int) -> None:
        self._add(f"spooled.{table}", rows)

    def replayed(self, table: str, rows: int) -> None:
        self._add(f"replayed.{table}", rows)

    def dropped(self, table: str, rows: int, reason: DropReason) -> None:
        self._add(f"dropped.{table}", rows)
        with self._lock:
            self.drops[reason] += rows

    def pruned(self, table: str, rows: int) -> None:
        self._add(f"pruned.{table}", rows)

    def write_failed(self, operation: Operation) -> None:
        with self._lock:
            self.failures[operation] += 1

    def store_up(self, up: bool) -> None:
        self.up = up

    def queue_depth(self, rows: int) -> None:
        self.depth = rows

    def spool_bytes(self, size: int) -> None:
        self.spool_size = size

    def backlog_age(self, seconds: float) -> None:
        self.age = seconds

    def total(self, what: str) -> int:
        """Rows ``what`` ("written", "spooled", ...) over both tables."""
        with self._lock:
            return sum(n for key, n in self.counts.items() if key.startswith(f"{what}."))

    def summary(self) -> dict[str, int]:
        """Totals for the shutdown log line."""
        totals = {w: self.total(w) for w in ("written", "spooled", "replayed", "dropped", "pruned")}
        with self._lock:
            totals["write_errors"] = sum(self.failures.values())
        return totals


class Observers:
    """Calls every observer in turn; one that raises is logged once per method, never propagated."""

    def __init__(self, *observers: LogObserver) -> None:
        self._observers = observers
        self._failed: set[str] = set()

    def _call(self, method: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception:
                if method not in self._failed:
                    self._failed.add(method)
                    log.exception("prediction log observer %s.%s failed", observer, method)

    def written(self, table: str, rows: int) -> None:
        self._call("written", table, rows)

    def spooled(self, table: str, rows: int) -> None:
        self._call("spooled", table, rows)

    def replayed(self, table: str, rows: int) -> None:
        self._call("replayed", table, rows)

    def dropped(self, table: str, rows: int, reason: DropReason) -> None:
        self._call("dropped", table, rows, reason)

    def pruned(self, table: str, rows: int) -> None:
        self._call("pruned", table, rows)

    def write_failed(self, operation: Operation) -> None:
        self._call("write_failed", operation)

    def store_up(self, up: bool) -> None:
        self._call("store_up", up)

    def queue_depth(self, rows: int) -> None:
        self._call("queue_depth", rows)

    def spool_bytes(self, size: int) -> None:
        self._call("spool_bytes", size)

    def backlog_age(self, seconds: float) -> None:
        self._call("backlog_age", seconds)
