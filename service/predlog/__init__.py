"""The prediction log: every request and prediction recorded durably, off the request path.

Modules, in the order data flows through them:

- ``sink``: :class:`PredictionLog`, the event sink the predictor publishes to (non-blocking);
- ``records``: events to table rows, rows to spool lines and back;
- ``writer``: the bounded queue and the background thread committing batches, with retry;
- ``spool``: the local append-only spool for what the store cannot take, replayed later;
- ``ledger``: each worker's count of the rows it holds in memory, in a file that outlives it, so
  that the rows of a worker killed outright are counted as dropped (``worker_died``);
- ``store`` and ``schema``: the SQL tables (SQLite or PostgreSQL) and how they are written;
- ``retention``: the periodic prune;
- ``observer``: the counters and gauges the log reports (for metrics);
- ``accesslog``: the one-JSON-line-per-request access log on stdout (a separate sink);
- ``cli`` (``python -m service.predlog``): export, show, status, prune, replay for operators.

docs/prediction-log.md documents the tables, settings and behaviour.
"""

from service.predlog.accesslog import AccessLog
from service.predlog.observer import CountingObserver, LogObserver
from service.predlog.sink import PredictionLog
from service.predlog.store import SchemaMismatch

__all__ = ["AccessLog", "CountingObserver", "LogObserver", "PredictionLog", "SchemaMismatch"]
