"""Retention: delete rows older than ``PREDICTION_LOG_RETENTION_DAYS`` and beyond
``PREDICTION_LOG_MAX_ROWS``, periodically, on a thread of its own.

Every worker of every replica runs a pruner; that is safe (deletes are chunked and idempotent) and
cheap (the first run in a period deletes, the others find nothing). The first run waits a random
part of the interval so that workers started together do not prune together. On its own thread
so that a long prune never holds up the writer: the two interleave through the store's locks.
"""

from __future__ import annotations

import logging
import random
import threading

from service.predlog.observer import LogObserver
from service.predlog.store import Store

log = logging.getLogger(__name__)


class Pruner:
    def __init__(
        self,
        store: Store,
        observer: LogObserver,
        retention_days: float,
        max_rows: int,
        interval_seconds: float,
    ) -> None:
        self.store = store
        self.observer = observer
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predlog-pruner", daemon=True)

    @property
    def enabled(self) -> bool:
        return bool(self.retention_days or self.max_rows)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # A chunk in progress finishes within a short transaction; do not wait for more.
            self._thread.join(5.0)

    def prune_once(self) -> dict[str, int]:
        deleted = self.store.prune(self.retention_days or None, self.max_rows or None)
        for table, rows in deleted.items():
            if rows:
                self.observer.pruned(table, rows)
        if any(deleted.values()):
            log.info("prediction log retention deleted %s", deleted)
        return deleted

    def _run(self) -> None:
        delay = random.uniform(0, self.interval)
        while not self._stop.wait(delay):
            delay = self.interval
            try:
                self.prune_once()
            except Exception as exc:
                self.observer.write_failed("prune")
                log.warning("prediction log retention failed (%s); retrying in %.0fs", exc, delay)
