"""OpenTelemetry tracing, configured only by the standard ``OTEL_*`` environment variables.

Export is off unless configured, and then costs only the creation of non-recording spans:

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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.util.http import ExcludeList

log = logging.getLogger(__name__)
TRACER_NAME = "credit_risk_service"
UNTRACED_ROUTES = [r"/livez\b", r"/readyz\b", r"/metrics\b"]


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
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={kind!r} is not supported: use otlp, console or none"
        )
    protocol = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol in ("", "http/protobuf"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    raise ValueError(f"OTLP protocol {protocol!r} is not supported: use http/protobuf or grpc")


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
        # Not recording, but spans still get (or inherit from traceparent) trace ids, which the
        # access log and the prediction log keep.
        provider = TracerProvider(sampler=ALWAYS_OFF)
    else:
        resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
        if SERVICE_NAME not in _explicit_resource_keys():
            resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
        provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
        provider.add_span_processor(BatchSpanProcessor(exporter))
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
    """The caller's span context from a W3C ``traceparent`` (version 00), or the invalid span."""
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
