"""OpenTelemetry tracing, configured only by the standard ``OTEL_*`` environment variables.

Export is off unless configured (and then no span is created at all):

- ``OTEL_TRACES_EXPORTER``: ``otlp`` or ``console`` (``none`` = off). When unset, setting
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` implies ``otlp``.
- ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf``
  (default) or ``grpc``; endpoint, headers, timeout and compression are read by the exporter
  from the usual ``OTEL_EXPORTER_OTLP_*`` variables.
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``),
  ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SDK_DISABLED=true`` turns it off.

Why our own provider and server spans: BentoML's ASGI middleware traces every request with
BentoML's tracer provider, which is configured from BentoML's config file, ignores ``OTEL_*``, is
not registered globally, and records four spans per request even at sample rate 0 (a quarter of a
worker's event-loop time for single-instance requests, measured). We replace that provider before
the worker builds its middleware, register it globally, and take the prediction routes out of
BentoML's middleware: their handlers open one SERVER span themselves (continuing an incoming W3C
``traceparent``), with child spans for validation, the model call and the log enqueue. With export
off no span is created (see ``_exporting``): the request's context is the caller's, when it sent
one, whose trace id the access log and the prediction log keep.

Spans that never reach the collector are counted (:data:`SPAN_COUNTS`, exported as the
``trace_spans_*`` metrics by ``service.metrics.TraceMetrics``): the exporter is wrapped to count
what each export returns (:class:`CountingSpanExporter`), and the batch processor to count the
spans its full queue pushes out (:class:`CountingSpanProcessor`).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.environment_variables import OTEL_BSP_MAX_QUEUE_SIZE
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.util.http import ExcludeList

log = logging.getLogger(__name__)
TRACER_NAME = "credit_risk_service"
UNTRACED_ROUTES = [r"/livez\b", r"/readyz\b", r"/metrics\b"]
# The SDK's default for OTEL_BSP_MAX_QUEUE_SIZE.
DEFAULT_MAX_QUEUE_SIZE = 2048


class UnsupportedTracingSetting(ValueError):
    """An ``OTEL_*`` variable names an exporter or protocol this service does not offer."""


def _env(name: str) -> str:
    return os.environ.get(name, "").strip().lower()


def exporter_from_env() -> SpanExporter | None:
    """The span exporter the ``OTEL_*`` variables ask for, or None when tracing is off."""
    if _env("OTEL_SDK_DISABLED") == "true":
        return None
    kind = _env("OTEL_TRACES_EXPORTER")
    if not kind:
        endpoint_set = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        kind = "otlp" if endpoint_set else "none"
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        raise UnsupportedTracingSetting(
            f"OTEL_TRACES_EXPORTER={kind!r} is not supported: use otlp, console or none"
        )
    # The per-signal variable wins; the message names the one that was read.
    protocol_variable = next(
        (
            v
            for v in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
            if _env(v)
        ),
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    )
    protocol = _env(protocol_variable)
    if protocol in ("", "http/protobuf"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    raise UnsupportedTracingSetting(
        f"{protocol_variable}={protocol!r} is not supported: use http/protobuf or grpc"
    )


# Whether spans go anywhere (an exporter is configured). When not, server_span() and span() take a
# fast path: no spans are created, only the caller's trace id is kept (measured here: 4 unexported
# SDK spans per request cost about 50 us, a tenth of a single-instance request's CPU).
_exporting = False


def configure_tracing(default_service_name: str, self_traced: list[str]) -> TracerProvider:
    """Install the tracer provider BentoML and this service use; return it.

    Must run in the worker before BentoML builds its ASGI middleware (i.e. at service import).
    BentoML's tracing middleware leaves out the probes and ``/metrics`` (a trace every few
    seconds per probe is noise) and the ``self_traced`` routes (regular expressions over the URL),
    whose handlers open their own server span (:func:`server_span`).
    """
    from bentoml._internal.configuration.containers import BentoMLContainer

    excluded = BentoMLContainer.tracing_excluded_urls.get()
    BentoMLContainer.tracing_excluded_urls.set(
        ExcludeList([*getattr(excluded, "_excluded_urls", []), *UNTRACED_ROUTES, *self_traced])
    )
    global _exporting
    exporter = exporter_from_env()
    _exporting = exporter is not None
    if exporter is None:
        # For BentoML's middleware on the routes left to it: nothing recorded. The service's own
        # routes create no span at all then (server_span); the logs keep the caller's trace id.
        provider = TracerProvider(sampler=ALWAYS_OFF)
    else:
        resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
        if SERVICE_NAME not in _explicit_resource_keys():
            resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
        provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
        provider.add_span_processor(CountingSpanProcessor(exporter, SPAN_COUNTS))
        log.info("tracing: exporting spans with %s", type(exporter).__name__)
    BentoMLContainer.tracer_provider.set(provider)
    trace.set_tracer_provider(provider)
    get_tracer.cache_clear()
    return provider


def _explicit_resource_keys() -> set[str]:
    keys = {SERVICE_NAME} if os.environ.get("OTEL_SERVICE_NAME") else set()
    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        if "=" in pair:
            keys.add(pair.split("=", 1)[0].strip())
    return keys


@cache
def get_tracer() -> trace.Tracer:
    """The tracer of the provider BentoML's middleware uses (ours once configured)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.tracer_provider.get().get_tracer(TRACER_NAME)


@contextmanager
def server_span(
    name: str,
    carrier: Mapping[str, str],
    attributes: dict[str, Any],
    *,
    status_on_exception: bool = True,
) -> Iterator[trace.Span]:
    """A SERVER span continuing the caller's W3C ``traceparent`` found in ``carrier``.

    ``status_on_exception=False`` for gRPC, where aborting with INVALID_ARGUMENT raises but is
    the caller's error: the servicer sets the status itself. Without an exporter the span is the
    caller's context only (non-recording, so attributes cost nothing), current for the request
    so that :func:`current_trace_id` finds the caller's trace id; without a caller's trace, none.
    """
    if not _exporting:
        caller = _caller_span(carrier.get("traceparent"))
        if caller is trace.INVALID_SPAN:  # no trace to continue: leave the context alone
            yield caller
            return
        with trace.use_span(caller, end_on_exit=False):
            yield caller
        return
    parent = propagate.extract(carrier)
    with get_tracer().start_as_current_span(
        name,
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
        record_exception=status_on_exception,
        set_status_on_exception=status_on_exception,
    ) as span:
        yield span


def span(name: str, **attributes: Any) -> AbstractContextManager[trace.Span]:
    """A child span of the current one (nothing, when spans are not exported)."""
    if not _exporting:
        return _NO_SPAN
    return get_tracer().start_as_current_span(name, attributes=attributes)


_NO_SPAN = nullcontext(trace.INVALID_SPAN)


def _caller_span(traceparent: str | None) -> trace.Span:
    """The caller's span context from a W3C ``traceparent``, or the invalid span. Any version but
    the invalid ``ff`` is read as version 00's four fields, as the W3C spec asks of a parser."""
    if traceparent is None:
        return trace.INVALID_SPAN
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return trace.INVALID_SPAN
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return trace.INVALID_SPAN
    if len(parts[1]) != 32 or len(parts[2]) != 16 or not trace_id or not span_id:
        return trace.INVALID_SPAN
    context = trace.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags)
    )
    return trace.NonRecordingSpan(context)


def end_status(current: trace.Span, status: int) -> None:
    """Record an HTTP-style status on a server span; 5xx marks it failed (4xx is the caller's)."""
    current.set_attribute("http.response.status_code", status)
    if status >= 500:
        current.set_status(trace.StatusCode.ERROR)


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, or None outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class SpanCounts:
    """What became of this process's exported spans since the last :meth:`take`.

    Plain integers under a lock, so that counting costs the request path (a span's end) no more
    than an increment; the worker's metrics thread takes them into Prometheus counters.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exported = 0
        self.failed = 0
        self.dropped = 0

    def add(self, *, exported: int = 0, failed: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.exported += exported
            self.failed += failed
            self.dropped += dropped

    def take(self) -> tuple[int, int, int]:
        """(exported, failed, dropped) since the last call; they start again from 0."""
        with self._lock:
            counts = (self.exported, self.failed, self.dropped)
            self.exported = self.failed = self.dropped = 0
        return counts


# The worker's counts (the tracer provider is configured once per process, at import).
SPAN_COUNTS = SpanCounts()


class CountingSpanExporter(SpanExporter):
    """``exporter``, counting the spans of each export by its result: exported on SUCCESS,
    failed on FAILURE or an exception (the OTLP exporters return FAILURE once their retries are
    spent, or at once for a response they cannot retry)."""

    def __init__(
        self,
        exporter: SpanExporter,
        counts: SpanCounts,
        on_export: Callable[[int], None] | None = None,
    ) -> None:
        self._exporter = exporter
        self._counts = counts
        self._on_export = on_export  # told how many spans left the processor's queue

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._on_export is not None:
            self._on_export(len(spans))
        try:
            result = self._exporter.export(spans)
        except Exception:
            self._counts.add(failed=len(spans))
            raise
        if result is SpanExportResult.SUCCESS:
            self._counts.add(exported=len(spans))
        else:
            self._counts.add(failed=len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class CountingSpanProcessor(SpanProcessor):
    """The SDK's ``BatchSpanProcessor`` around ``exporter``, counting the spans it loses.

    Its queue holds ``OTEL_BSP_MAX_QUEUE_SIZE`` spans; a span ending with the queue full pushes
    the oldest out, unexported, with nothing but a log line. This processor keeps its own count
    of the spans waiting (one in per sampled span ended, the batch out when the exporter gets it)
    and counts a drop for each span ended while that count is at the queue's size, and, at
    shutdown, the spans still waiting. Exact but for one window: between the SDK taking a batch
    from a full queue and handing it to the exporter, a span ending is counted dropped although
    it found room (the queue is full then, so spans are being lost already).
    """

    def __init__(self, exporter: SpanExporter, counts: SpanCounts) -> None:
        self.max_queue_size = _max_queue_size()
        self._counts = counts
        self._lock = threading.Lock()
        self._pending = 0
        self._processor = BatchSpanProcessor(
            CountingSpanExporter(exporter, counts, on_export=self._left_queue),
            max_queue_size=self.max_queue_size,
        )
        self._closed = False
        if hasattr(os, "register_at_fork"):  # the SDK empties its queue in a forked child
            forget = weakref.WeakMethod(self._forget_pending)
            os.register_at_fork(after_in_child=lambda: (f := forget()) and f())

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return  # not queued by the batch processor either
        with self._lock:
            if self._closed:
                dropped = True  # refused by the processor once shut down
            elif self._pending >= self.max_queue_size:
                dropped = True  # the oldest waiting span is pushed out for this one
            else:
                dropped = False
                self._pending += 1
        if dropped:
            self._counts.add(dropped=1)
        self._processor.on_end(span)

    def _left_queue(self, spans: int) -> None:
        with self._lock:
            self._pending = max(self._pending - spans, 0)

    def _forget_pending(self) -> None:
        self._lock = threading.Lock()
        self._pending = 0

    def shutdown(self) -> None:
        self._processor.shutdown()
        # What the processor could not export before its timeout is lost with the process.
        with self._lock:
            lost, self._pending, self._closed = self._pending, 0, True
        if lost:
            self._counts.add(dropped=lost)
            log.warning("tracing: %d spans not exported at shutdown", lost)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._processor.force_flush(timeout_millis)


def _max_queue_size() -> int:
    """OTEL_BSP_MAX_QUEUE_SIZE as the SDK reads it (the default when unset or not a number; the
    processor refuses a size below 1)."""
    try:
        return int(os.environ.get(OTEL_BSP_MAX_QUEUE_SIZE, DEFAULT_MAX_QUEUE_SIZE))
    except ValueError:  # the SDK logs it and takes the default
        return DEFAULT_MAX_QUEUE_SIZE


def exporting() -> bool:
    """Whether this process exports spans (configure_tracing found an exporter)."""
    return _exporting
