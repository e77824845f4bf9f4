"""Request and model-health metrics, and the info gauges of the model and the build.

Request metrics come from the one event per answered request (:meth:`ServiceMetrics.publish`, an
``EventSink``), for every transport alike; model-health metrics from each merged model call
(:meth:`ServiceMetrics.observe_batch` on the event loop, :meth:`ServiceMetrics.observe_model_call`
on the model thread, with the call's input columns and scores), and requests refused before they
reach the service from each :class:`~service.header_limit.Refusal` (:meth:`ServiceMetrics.refused`,
on the event loop). The caller only appends a tuple;
the worker's flusher (service/metrics/flusher.py) applies them, grouped and vectorised, in the same
turn as BentoML's request metrics (service/bentoml_metrics.py).
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections import Counter as Tally
from collections import deque
from collections.abc import Mapping, Sequence
from itertools import chain

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from service.contract import FeatureContract
from service.events import Event, PredictionEvent
from service.header_limit import STATUSES, Refusal
from service.metrics import flusher
from service.metrics.flusher import Flusher, observe_many, take_all
from service.model import LoadedModel
from service.validation import CLIENT_CLOSED, FieldError

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
# One answered request, as the request path hands it over: transport, endpoint, status, latency,
# instances (accepted requests) and field errors (refused ones).
_Answered = tuple[str, str, int, float, int | None, Sequence[FieldError] | None]
# One model call: its rows, the requests merged into it, its duration.
_Batch = tuple[int, int, float]
# One model call's input columns, scores and labels.
_Call = tuple[Mapping[str, np.ndarray], np.ndarray, Sequence[str]]


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
        self.refusals = Counter(
            "http_requests_refused",
            "HTTP requests refused before they reach the service (no endpoint, no request "
            "metrics): malformed (400), head_too_large (431), head_timeout (408).",
            ["reason", "code"],
            registry=r,
        )
        # Every series from the start, at 0, as the server errors below: increase() sees the
        # first burst of them.
        for reason, status in STATUSES.items():
            self.refusals.labels(reason, str(status))
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
        self._refused: deque[str] = deque()
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

    # Refusal observer (service/header_limit.py): on the event loop, one append per refusal.
    def refused(self, refusal: Refusal) -> None:
        self._refused.append(refusal.reason)

    def start(self) -> None:
        """Apply published requests every REQUEST_FLUSH_SECONDS, on the worker's FLUSHER."""
        self._flusher = flusher.FLUSHER
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
        for reason, n in Tally(take_all(self._refused)).items():
            self.refusals.labels(reason, str(STATUSES[reason])).inc(n)

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


def _label(package: str) -> str:
    return package.replace("-", "_") + "_version"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
