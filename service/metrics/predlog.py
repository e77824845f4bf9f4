"""The prediction log's metrics, from its observer interface (service/predlog/observer.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from service.predlog.observer import DropReason, Operation


class PredictionLogMetrics:
    """The prediction log's ``LogObserver`` (service/predlog/observer.py) as Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        r = registry

        def rows(name: str, what: str, extra: Sequence[str] = ()) -> Counter:
            return Counter(f"prediction_log_rows_{name}", what, ["table", *extra], registry=r)

        self._written = rows("written", "Rows committed to the store from the queue.")
        self._spooled = rows(
            "spooled", "Rows written to the local spool (store down or queue full)."
        )
        self._replayed = rows("replayed", "Rows committed to the store from the spool.")
        self._dropped = rows(
            "dropped",
            "Rows lost, by reason: spool_full (spool over its cap or disk refusing), corrupt "
            "(damaged spool line), refused (the store rejected the row; kept in quarantine), "
            "worker_died (queued in the memory of a worker killed outright).",
            ["reason"],
        )
        self._pruned = rows("pruned", "Rows deleted by retention.")
        self._failures = Counter(
            "prediction_log_store_errors",
            "Failed store operations, by operation (write, replay, prune, connect).",
            ["operation"],
            registry=r,
        )
        self._up = Gauge(
            "prediction_log_store_up",
            "1 while every worker's store connection takes writes, else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self._queue = Gauge(
            "prediction_log_queue_rows",
            "Rows waiting in memory to be written, summed over workers.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self._spool = Gauge(
            "prediction_log_spool_bytes",
            "Bytes in the spool directory (records waiting for the store).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self._age = Gauge(
            "prediction_log_backlog_age_seconds",
            "Age of the oldest record not yet in the store (0 when all are written).",
            multiprocess_mode="livemax",
            registry=r,
        )

        # Every series at zero from the start, so that rates and alerts see the first event.
        for table in ("predictions", "rejections"):
            for counter in (self._written, self._spooled, self._replayed, self._pruned):
                counter.labels(table)
            for reason in get_args(DropReason):
                self._dropped.labels(table, reason)
        # A damaged spool line cannot tell its table: the replay counts it under "unknown".
        self._dropped.labels("unknown", "corrupt")
        for operation in get_args(Operation):
            self._failures.labels(operation)

    def written(self, table: str, rows: int) -> None:
        self._written.labels(table).inc(rows)

    def spooled(self, table: str, rows: int) -> None:
        self._spooled.labels(table).inc(rows)

    def replayed(self, table: str, rows: int) -> None:
        self._replayed.labels(table).inc(rows)

    def dropped(self, table: str, rows: int, reason: DropReason) -> None:
        self._dropped.labels(table, reason).inc(rows)

    def pruned(self, table: str, rows: int) -> None:
        self._pruned.labels(table).inc(rows)

    def write_failed(self, operation: Operation) -> None:
        self._failures.labels(operation).inc()

    def store_up(self, up: bool) -> None:
        self._up.set(1 if up else 0)

    def queue_depth(self, rows: int) -> None:
        self._queue.set(rows)

    def spool_bytes(self, size: int) -> None:
        self._spool.set(size)

    def backlog_age(self, seconds: float) -> None:
        self._age.set(seconds)
