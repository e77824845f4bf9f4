"""The prediction log as the request path sees it: an :class:`~service.events.EventSink`.

``publish`` only queues the event (see writer.py); converting it to rows, committing, spooling and
pruning all happen on the log's own threads. One :class:`PredictionLog` per worker process::

    log = PredictionLog.from_settings(settings, observer=...)   # connects, starts its threads
    predictor = Predictor(model, ..., sinks=[log, ...])
    ...
    log.close()   # after the predictor answered its last request: flush, then stop
"""

from __future__ import annotations

import logging

from service.events import Event
from service.predlog.ledger import Ledger
from service.predlog.observer import LogObserver
from service.predlog.retention import Pruner
from service.predlog.spool import Spool
from service.predlog.store import Store
from service.predlog.writer import Writer, WriterConfig
from service.settings import Settings

log = logging.getLogger(__name__)


class PredictionLog:
    def __init__(self, writer: Writer, pruner: Pruner) -> None:
        self.writer = writer
        self.pruner = pruner

    @classmethod
    def from_settings(
        cls, settings: Settings, observer: LogObserver | None = None
    ) -> PredictionLog:
        """Open the store and the spool and start the threads.

        Raises ``SchemaMismatch`` if the store holds another schema version; a store that is
        down only delays writing (records are spooled meanwhile).
        """
        # BentoML's server logging shows WARNING and above from non-BentoML loggers; the log's
        # INFO lines (tables created, shutdown summary) are worth an operator's eye.
        logging.getLogger("service.predlog").setLevel(logging.INFO)
        store = Store(settings.prediction_log_url)
        spool = Spool(settings.prediction_log_spool_dir, settings.prediction_log_spool_max_bytes)
        config = WriterConfig(
            queue_rows=settings.prediction_log_queue_size,
            batch_rows=settings.prediction_log_batch_size,
            flush_interval=settings.prediction_log_flush_interval_seconds,
            retry_max=settings.prediction_log_retry_max_seconds,
            shutdown_timeout=settings.prediction_log_shutdown_timeout_seconds,
        )
        writer = Writer(
            store, spool, config, observer, Ledger.open(settings.prediction_log_spool_dir)
        )
        pruner = Pruner(
            store,
            writer.observer,
            settings.prediction_log_retention_days,
            settings.prediction_log_max_rows,
            settings.prediction_log_prune_interval_seconds,
        )
        prediction_log = cls(writer, pruner)
        prediction_log.start()
        return prediction_log

    def start(self) -> None:
        self.writer.start()
        self.pruner.start()

    def publish(self, event: Event) -> None:
        self.writer.publish(event)

    def close(self) -> None:
        """Stop pruning, write or spool everything queued, seal the spool. Call it after the last
        event was published (the predictor is closed)."""
        self.pruner.close()
        self.writer.close()
        self.writer.store.close()
