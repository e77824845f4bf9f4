"""Prometheus metrics of the service: requests, model health, the prediction log, the process.

Names and labels are a public interface (dashboards and alert rules are built on them); the README
table "Metrics" lists them. All label values are bounded: transports, endpoints and status codes
of our own routes, contract feature names, the ``Reason`` vocabulary, the model's two labels.

BentoML serves ``/metrics`` from whichever worker gets the scrape and merges every worker's values
through prometheus_client's multiprocess mode, in which only values written when they change are
exported. Everything here is therefore push-style and created inside the worker
(:class:`ServiceMetrics` is built by the service's ``__init__``): counters and histograms sum over
workers; each gauge declares how workers combine (``livesum``, ``livemax``...). The service
passes ``registry=None`` (service/service.py says why); tests pass a fresh ``CollectorRegistry``.

Where the numbers come from:

- request metrics from the one event per answered request (:meth:`ServiceMetrics.publish`, an
  ``EventSink``), for every transport alike, and model-health metrics from each merged model call
  (:meth:`observe_batch` on the event loop, :meth:`observe_model_call` on the model thread, with
  the call's input columns and scores): the caller only appends a tuple, and the worker's
  :data:`FLUSHER` thread applies them every ``REQUEST_FLUSH_SECONDS``, grouped and vectorised, in
  the same turn as BentoML's request metrics (service/bentoml_metrics.py) (a counter or histogram
  update in multiprocess mode takes a lock and writes a memory-mapped file: six of them cost
  about 8 us per request, and the model-health updates 60 to 90 us per model call, which the
  model thread and the event loop then could not spend on requests);
- prediction-log metrics from its observer interface (:class:`PredictionLogMetrics`);
- drift metrics from the latest drift run in the store, which every worker reads
  (:class:`DriftMetrics`): the same values in every worker and replica;
- process metrics (CPU, memory, file descriptors) from a sampler thread, because the default
  process collector does not work in multiprocess mode;
- span export metrics, when tracing exports, from the counts the tracing pipeline keeps
  (service/tracing.py), applied by the :data:`FLUSHER` thread (:class:`TraceMetrics`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import resource
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from itertools import chain
from typing import TypeVar, get_args

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from service import prometheus_dir
from service.contract import FeatureContract
from service.drift.summary import ColumnDrift, DriftSummary
from service.events import Event, PredictionEvent
from service.model import LoadedModel
from service.predlog.observer import DropReason, Operation
from service.tracing import SpanCounts
from service.validation import CLIENT_CLOSED, FieldError

log = logging.getLogger(__name__)

# Sub-millisecond to seconds: a rejected request takes ~0.1 ms, a 1000-row call ~10 ms, a
# request queued behind a busy model under overload can take seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
INSTANCE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
CALL_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
CALL_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
# What a request the service fails is answered: internal error, unavailable, timeout.
SERVER_ERROR_CODES = ("500", "503", "504")
BUILD_PACKAGES = ("bentoml", "scikit-learn", "pandas", "numpy", "evidently", "grpcio")
PROCESS_SAMPLE_SECONDS = 5.0
# How stale the request and model-call metrics may be: far below any scrape interval.
REQUEST_FLUSH_SECONDS = 1.0
NAN = float("nan")
# One answered request, as the request path hands it over: transport, endpoint, status, latency,
# instances (accepted requests) and field errors (refused ones).
_Answered = tuple[str, str, int, float, int | None, Sequence[FieldError] | None]
# One model call: its rows, the requests merged into it, its duration.
_Batch = tuple[int, int, float]
# One model call's input columns, scores and labels.
_Call = tuple[Mapping[str, np.ndarray], np.ndarray, Sequence[str]]
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


class ServiceMetrics:
    """One worker's metrics: an ``EventSink``, a model-call observer, and the info gauges."""

    def __init__(
        self,
        model: LoadedModel,
        registry: CollectorRegistry | None = REGISTRY,
        endpoints: Sequence[tuple[str, str]] = (),
    ) -> None:
        """``endpoints``: the (transport, endpoint) pairs that answer predictions."""
        self.contract: FeatureContract = model.contract
        version = model.version
        r = registry
        self.requests = Counter(
            "inference_requests",
            "Answered inference requests, by transport, endpoint and HTTP status code "
            "(gRPC calls carry the equivalent HTTP status; grpc_server_handled_total has "
            "their gRPC codes).",
            ["transport", "endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "inference_request_duration_seconds",
            "Time from a request's arrival to its answer being ready, by transport and endpoint.",
            ["transport", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.instances = Histogram(
            "inference_request_instances",
            "Instances per accepted request.",
            ["transport"],
            buckets=INSTANCE_BUCKETS,
            registry=r,
        )
        self.validation_failures = Counter(
            "inference_validation_failures",
            "Problems found in refused requests, one per field error; field is a contract "
            "feature, $request (request level) or $unknown (a field the contract lacks).",
            ["transport", "field", "reason"],
            registry=r,
        )
        self.call_rows = Histogram(
            "model_call_rows",
            "Rows per model call (concurrent requests are merged into one call).",
            buckets=CALL_ROW_BUCKETS,
            registry=r,
        )
        self.call_requests = Histogram(
            "model_call_requests",
            "Requests merged into one model call.",
            buckets=CALL_REQUEST_BUCKETS,
            registry=r,
        )
        self.call_latency = Histogram(
            "model_call_duration_seconds",
            "Duration of one model call (DataFrame construction and scoring).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "model_predictions",
            "Predicted instances, by label.",
            ["model_version", "label"],
            registry=r,
        )
        self.scores = Histogram(
            "model_prediction_score",
            f"The model's score ({self.contract.score_name}) of each predicted instance.",
            ["model_version"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.out_of_range = Counter(
            "model_out_of_training_range",
            "Accepted values inside the contract's domain but outside the range seen in "
            "training, by feature and side (below/above).",
            ["model_version", "feature", "side"],
            registry=r,
        )
        # Server-error series from the start, at 0: rate() needs two samples of a series, so
        # one created by its first error would keep that first burst (a short outage, entirely)
        # out of the availability SLO's error ratios and burn-rate alerts.
        for transport, endpoint in endpoints:
            for code in SERVER_ERROR_CODES:
                self.requests.labels(transport, endpoint, code)
        model_info = Gauge(
            "model_info",
            "The served model (always 1): tag, version, data set hash, git commit of training.",
            ["model", "version", "tag", "dataset_sha256", "git_commit"],
            multiprocess_mode="livemax",
            registry=r,
        )
        build_info = Gauge(
            "service_build_info",
            "The service's build (always 1): its version and those of Python and key packages.",
            ["version", "python_version", *(_label(p) for p in BUILD_PACKAGES)],
            multiprocess_mode="livemax",
            registry=r,
        )
        self._score_hist = self.scores.labels(version)
        self._predicted = {
            label: self.predictions.labels(version, label) for label in self.contract.labels
        }
        self._ranges = [
            (
                f.name,
                f.training_min,
                f.training_max,
                self.out_of_range.labels(version, f.name, "below"),
                self.out_of_range.labels(version, f.name, "above"),
            )
            for f in self.contract.numeric_features()
            if f.training_min is not None and f.training_max is not None
        ]
        self._range_names = [name for name, *_ in self._ranges]
        metadata = model.metadata
        model_info.labels(
            model=self.contract.model_name,
            version=version,
            tag=model.tag,
            dataset_sha256=str(metadata.get("dataset", {}).get("sha256", "unknown")),
            git_commit=str(metadata.get("git_commit", "unknown")),
        ).set(1)
        build_info.labels(
            _version("credit-risk-service"),
            platform.python_version(),
            *(_version(p) for p in BUILD_PACKAGES),
        ).set(1)
        # append and popleft are thread-safe: callers append, the flushing thread takes
        self._answered: deque[_Answered] = deque()
        self._batches: deque[_Batch] = deque()
        self._calls: deque[_Call] = deque()
        self._flusher: Flusher | None = None

    # EventSink: one event per answered request, on the request path: one append.
    def publish(self, event: Event) -> None:
        request = event.request
        if isinstance(event, PredictionEvent):
            answer: _Answered = (
                request.transport, request.endpoint, 200, request.latency_seconds,
                len(event.instances), None,
            )  # fmt: skip
        else:
            # the problems of a refused request; not the server's failures, nor a client's cancel
            errors = event.errors if event.status < CLIENT_CLOSED else None
            answer = (
                request.transport, request.endpoint, event.status, request.latency_seconds,
                None, errors,
            )  # fmt: skip
        self._answered.append(answer)

    def start(self) -> None:
        """Apply published requests every REQUEST_FLUSH_SECONDS, on the worker's FLUSHER."""
        self._flusher = FLUSHER
        self._flusher.register(self.flush, "request metrics")

    def stop(self) -> None:
        """Leave the flusher and apply what is left (call after the last request)."""
        if self._flusher is not None:
            self._flusher.unregister(self.flush)
        self.flush()

    def flush(self) -> None:
        """Apply the requests and model calls seen so far to the metrics, grouped."""
        self._apply_requests(take_all(self._answered))
        self._apply_batches(take_all(self._batches))
        self._apply_calls(take_all(self._calls))

    def _apply_requests(self, answered: list[_Answered]) -> None:
        if not answered:
            return
        codes: Tally[tuple[str, str, str]] = Tally()
        latencies: dict[tuple[str, str], list[float]] = {}
        instances: dict[str, list[int]] = {}
        failures: Tally[tuple[str, str, str]] = Tally()
        for transport, endpoint, status, latency, count, errors in answered:
            codes[(transport, endpoint, str(status))] += 1
            latencies.setdefault((transport, endpoint), []).append(latency)
            if count is not None:
                instances.setdefault(transport, []).append(count)
            if errors:
                for e in errors:
                    failures[(transport, e.metric_field, e.reason.value)] += 1
        for labels, n in codes.items():
            self.requests.labels(*labels).inc(n)
        for labels, values in latencies.items():
            observe_many(self.latency.labels(*labels), np.asarray(values, dtype=float))
        for transport, counts in instances.items():
            observe_many(self.instances.labels(transport), np.asarray(counts, dtype=float))
        for labels, n in failures.items():
            self.validation_failures.labels(*labels).inc(n)

    def _apply_batches(self, batches: list[_Batch]) -> None:
        if not batches:
            return
        rows, requests, seconds = np.asarray(batches, dtype=float).T
        observe_many(self.call_rows, rows)
        observe_many(self.call_requests, requests)
        observe_many(self.call_latency, seconds)

    def _apply_calls(self, calls: list[_Call]) -> None:
        if not calls:
            return
        observe_many(
            self._score_hist, np.concatenate([np.asarray(s, dtype=float) for _, s, _ in calls])
        )
        for label, count in Tally(chain.from_iterable(labels for _, _, labels in calls)).items():
            self._predicted[label].inc(count)
        for name, low, high, below, above in self._ranges:
            column = np.concatenate([columns[name] for columns, _, _ in calls])
            if (n := int(np.count_nonzero(column < low))) > 0:
                below.inc(n)
            if (n := int(np.count_nonzero(column > high))) > 0:
                above.inc(n)

    # Batch observer: called by the batcher (on the event loop) after each model call.
    def observe_batch(self, rows: int, requests: int, seconds: float) -> None:
        self._batches.append((rows, requests, seconds))

    # Model-call observer: on the model thread, with the call's input columns, scores and labels.
    def observe_model_call(
        self, columns: Mapping[str, np.ndarray], scores: np.ndarray, labels: Sequence[str]
    ) -> None:
        # Only the columns checked against their training range: the others (the categorical
        # ones hold the request's strings) are let go with the call instead of a second later.
        self._calls.append(({name: columns[name] for name in self._range_names}, scores, labels))


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
            "(damaged spool line), refused (the store rejected the row; kept in quarantine).",
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


class TraceMetrics:
    """What became of the spans this worker's tracing pipeline exported (service/tracing.py).

    The exporter and the batch processor count into ``counts`` (plain integers: a span's end
    only increments one); the worker's :data:`FLUSHER` thread applies them here once per
    ``REQUEST_FLUSH_SECONDS``. Created only when spans are exported.
    """

    def __init__(self, counts: SpanCounts, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._counts = counts
        self._exported = Counter(
            "trace_spans_exported",
            "Spans the collector accepted.",
            registry=registry,
        )
        self._failed = Counter(
            "trace_spans_failed",
            "Spans lost because their export failed after the exporter's retries (collector "
            "down, slow or refusing them).",
            registry=registry,
        )
        self._dropped = Counter(
            "trace_spans_dropped",
            "Spans lost before export: pushed out of the full export queue "
            "(OTEL_BSP_MAX_QUEUE_SIZE), or still in it at shutdown.",
            registry=registry,
        )
        self._flusher: Flusher | None = None

    def start(self) -> None:
        self._flusher = FLUSHER
        self._flusher.register(self.flush, "trace metrics")

    def stop(self) -> None:
        """Leave the flusher and apply what is left (call after the tracer provider's shutdown,
        which counts the spans it could not export)."""
        if self._flusher is not None:
            self._flusher.unregister(self.flush)
        self.flush()

    def flush(self) -> None:
        exported, failed, dropped = self._counts.take()
        for counter, n in (
            (self._exported, exported),
            (self._failed, failed),
            (self._dropped, dropped),
        ):
            if n:
                counter.inc(n)


class DriftMetrics:
    """The latest drift run, as gauges; the runs this worker did, as a counter.

    Every worker sets the gauges from the same run (the newest completed row of ``drift_runs``
    for the served model), so they use ``livemostrecent``: one scrape shows one value per series,
    whichever worker answers it. Each series carries ``model_version``, as the model-call metrics
    do: during a rolling deploy the old and the new version's runs are told apart, and the
    dashboards' version selector applies to drift too. Without a verdict (before the first run,
    or a run with insufficient data) the verdict gauges are NaN: prometheus_client's
    multiprocess files cannot remove a series, and NaN makes comparisons such as ``== 1`` false,
    so no drift alert fires on missing data.
    """

    def __init__(
        self,
        features: Sequence[str],
        interval_seconds: float,
        model_version: str,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        def family(name: str, what: str, labels: Sequence[str]) -> Gauge:
            return Gauge(
                f"model_drift_{name}",
                what,
                ["model_version", *labels],
                multiprocess_mode="livemostrecent",
                registry=registry,
            )

        def gauge(name: str, what: str) -> Gauge:
            return family(name, what, ()).labels(model_version)

        self._score = family(
            "feature_score",
            "Drift score of the feature in the last run: a p-value for statistical tests, a "
            "distance for distance metrics (model_drift_feature_method_info names it).",
            ["feature"],
        )
        self._threshold = family(
            "feature_threshold",
            "Threshold the feature's drift score is compared with.",
            ["feature"],
        )
        self._drifted = family("feature_drifted", "1 if the feature drifted, else 0.", ["feature"])
        self._method = family(
            "feature_method_info",
            "1 for the drift method (Evidently's test) used for the feature; 0 for a method used "
            "before.",
            ["feature", "method"],
        )
        self._ratio = gauge("drifted_features_ratio", "Share of the features that drifted, 0..1.")
        self._dataset = gauge(
            "dataset_drifted", "1 if the dataset drifted (Evidently's verdict), else 0."
        )
        self._prediction_score = gauge(
            "prediction_score", "Drift score of the model's score column."
        )
        self._prediction_threshold = gauge(
            "prediction_threshold", "Threshold the score column's drift score is compared with."
        )
        self._prediction_drifted = gauge(
            "prediction_drifted", "1 if the model's score drifted, else 0."
        )
        self._window = gauge("window_instances", "Instances in the last run's window.")
        self._newest = gauge(
            "window_newest_timestamp_seconds",
            "Unix time the newest instance of the last run's window was received: how fresh the "
            "data drift is computed on (the run time is not); NaN if the window was empty.",
        )
        self._oldest = gauge(
            "window_oldest_timestamp_seconds",
            "Unix time the oldest instance of the last run's window was received; NaN if the "
            "window was empty.",
        )
        self._insufficient = gauge(
            "insufficient_data",
            "1 when the last run had fewer instances than DRIFT_MIN_SAMPLES (no verdict).",
        )
        self._last_run = gauge(
            "last_run_timestamp_seconds",
            "Unix time the last completed run (ok or insufficient_data) started; 0 before any.",
        )
        self._duration = gauge("last_run_duration_seconds", "Duration of the last completed run.")
        # Not a property of the model: the setting, one series per instance.
        interval = Gauge(
            "model_drift_interval_seconds",
            "DRIFT_INTERVAL_SECONDS: how often drift runs.",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        runs = Counter(
            "model_drift_runs",
            "Drift runs, by outcome: ok, insufficient_data, failed (counted by the process that "
            "ran them).",
            ["model_version", "status"],
            registry=registry,
        )
        self._runs = {
            status: runs.labels(model_version, status)
            for status in ("ok", "insufficient_data", "failed")
        }
        interval.set(interval_seconds)
        # 0 until a completed run is shown: a `mostrecent` gauge never set is left out of the
        # scrape, and DriftMonitorStale could not fire for a monitor that never completes a run
        self._last_run.set(0)
        self._version = model_version
        self._methods: dict[str, str] = {}
        # The contract's features, so that their series exist (NaN) before the first verdict.
        self._features = set(features)
        self._clear_verdict()

    def count(self, status: str) -> None:
        self._runs[status].inc()

    def show(self, summary: DriftSummary) -> None:
        """Export the run ``summary`` (a completed run)."""
        self._window.set(summary.window_size)
        self._newest.set(_timestamp(summary.window_newest_at))
        self._oldest.set(_timestamp(summary.window_oldest_at))
        self._last_run.set(summary.computed_at.timestamp())
        self._duration.set(summary.duration_seconds)
        if summary.status != "ok" or summary.prediction is None:
            self._insufficient.set(1)
            self._clear_verdict()
            return
        self._insufficient.set(0)
        self._ratio.set(summary.drifted_share if summary.drifted_share is not None else NAN)
        self._dataset.set(1 if summary.dataset_drift else 0)
        self._set_column(
            summary.prediction,
            self._prediction_score,
            self._prediction_threshold,
            self._prediction_drifted,
        )
        for name, column in summary.features.items():
            self._features.add(name)
            self._set_column(
                column,
                self._score.labels(self._version, name),
                self._threshold.labels(self._version, name),
                self._drifted.labels(self._version, name),
            )
            previous = self._methods.get(name)
            if previous is not None and previous != column.method:
                self._method.labels(self._version, name, previous).set(0)
            self._method.labels(self._version, name, column.method).set(1)
            self._methods[name] = column.method

    def _clear_verdict(self) -> None:
        for gauge in (self._ratio, self._dataset):
            gauge.set(NAN)
        for gauge in (self._prediction_score, self._prediction_threshold, self._prediction_drifted):
            gauge.set(NAN)
        for name in self._features:
            for family in (self._score, self._threshold, self._drifted):
                family.labels(self._version, name).set(NAN)

    @staticmethod
    def _set_column(column: ColumnDrift, score: Gauge, threshold: Gauge, drifted: Gauge) -> None:
        score.set(column.score)
        threshold.set(column.threshold)
        drifted.set(1 if column.drifted else 0)


class ProcessMetrics:
    """CPU, memory and file descriptors of this worker, sampled every few seconds.

    prometheus_client's process collector is not available in multiprocess mode, so each worker
    pushes its own: CPU as a counter of increments (sums over workers, dead ones included, as CPU
    spent), the rest as live-summed gauges. ``service_workers`` counts the live workers.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._cpu = Counter(
            "process_cpu_seconds", "CPU time of the worker processes.", registry=registry
        )
        self._rss = Gauge(
            "process_resident_memory_bytes",
            "Resident memory of the worker processes, summed.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._fds = Gauge(
            "process_open_fds",
            "Open file descriptors of the worker processes, summed.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._max_fds = Gauge(
            "process_max_fds",
            "File descriptor limit of a worker process.",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._workers = Gauge(
            "service_workers",
            "Live worker processes serving this instance.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._workers.set(1)
        self._max_fds.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self._cpu_seen = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-metrics", daemon=True)

    def sample(self) -> None:
        prometheus_dir.forget_dead_workers()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        self._cpu.inc(max(cpu - self._cpu_seen, 0.0))
        self._cpu_seen = cpu
        self._rss.set(_rss_bytes())
        with contextlib.suppress(OSError):  # /proc is Linux only
            self._fds.set(len(os.listdir("/proc/self/fd")))

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(PROCESS_SAMPLE_SECONDS):
            try:
                self.sample()
            except Exception:
                log.exception("sampling process metrics failed")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _label(package: str) -> str:
    return package.replace("-", "_") + "_version"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _timestamp(at: datetime | None) -> float:
    return at.timestamp() if at is not None else NAN
