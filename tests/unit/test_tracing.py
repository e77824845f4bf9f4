"""Which exporter the standard OTEL_* variables select, what a request keeps without one, and
how the spans the pipeline exports, fails to send or drops are counted."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from service import tracing
from service.tracing import CountingSpanProcessor, SpanCounts, exporter_from_env

OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, HttpExporter),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, HttpExporter),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, HttpExporter),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GrpcExporter),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            GrpcExporter,
        ),
        ({"OTEL_TRACES_EXPORTER": "console"}, ConsoleSpanExporter),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_exporter_follows_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: type | None
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporter = exporter_from_env()
    assert (type(exporter) if exporter else None) is expected


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    ],
)
def test_unsupported_choices_are_refused_loudly(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="not supported"):
        exporter_from_env()


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f"00-{TRACE}-00f067aa0ba902b7-00", TRACE),  # not sampled upstream: still the caller's
        (None, None),
        ("garbage", None),
        (f"00-{TRACE}-0000000000000000-01", None),  # invalid parent span id
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # invalid trace id
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # forbidden version
        (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
    ],
)
def test_without_an_exporter_a_request_keeps_only_the_callers_trace_id(
    traceparent: str | None, trace_id: str | None
) -> None:
    # No exporter configured (the default): no span is created, children are no-ops, and the
    # logs get the caller's trace id when it sent a valid one.
    carrier = {} if traceparent is None else {"traceparent": traceparent}
    with tracing.server_span("POST /predict", carrier, {}) as server:
        assert not server.is_recording()
        with tracing.span("validate") as child:
            assert child is trace.INVALID_SPAN
        assert tracing.current_trace_id() == trace_id
    assert tracing.current_trace_id() is None


# -- what becomes of exported spans ---------------------------------------------------------------


class GatedExporter(SpanExporter):
    """An exporter answering ``result`` once ``gate`` is open (a collector down or slow)."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.result = result
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.gate.wait(30)
        self.spans += len(spans)
        return self.result


def pipeline(
    monkeypatch: pytest.MonkeyPatch, exporter: SpanExporter, queue: int = 2048
) -> tuple[TracerProvider, SpanCounts]:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", str(queue))
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", str(min(queue, 512)))
    counts = SpanCounts()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(CountingSpanProcessor(exporter, counts))
    return provider, counts


def end_spans(provider: TracerProvider, n: int) -> None:
    tracer = provider.get_tracer("test")
    for i in range(n):
        with tracer.start_as_current_span(f"span-{i}"):
            pass


def test_exported_spans_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = GatedExporter()
    provider, counts = pipeline(monkeypatch, exporter)
    end_spans(provider, 7)
    provider.force_flush()
    assert counts.take() == (7, 0, 0)
    assert counts.take() == (0, 0, 0)  # taken: the next take starts from 0
    provider.shutdown()
    assert exporter.spans == 7


def test_spans_the_exporter_fails_to_send_are_counted_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider, counts = pipeline(monkeypatch, GatedExporter(SpanExportResult.FAILURE))
    end_spans(provider, 5)
    provider.force_flush()
    assert counts.take() == (0, 5, 0)
    provider.shutdown()


def test_an_exporter_raising_counts_its_spans_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Raising(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            raise ConnectionError("collector gone")

    provider, counts = pipeline(monkeypatch, Raising())
    end_spans(provider, 3)
    provider.force_flush()
    assert counts.take() == (0, 3, 0)
    provider.shutdown()


def test_a_full_queue_counts_every_span_it_pushes_out(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = GatedExporter()
    exporter.gate.clear()  # a hung collector
    provider, counts = pipeline(monkeypatch, exporter, queue=4)
    end_spans(provider, 4)  # a full batch wakes the export thread, which blocks in export
    assert exporter.entered.wait(10)
    end_spans(provider, 10)  # the queue (4) is empty again, 6 of these push the oldest out
    assert counts.take() == (0, 0, 6)
    exporter.gate.set()
    provider.force_flush()
    exported, failed, dropped = counts.take()
    assert (exported, failed, dropped) == (8, 0, 0)  # the first batch and the queue's last 4
    provider.shutdown()


def test_spans_ended_after_the_shutdown_are_counted_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = GatedExporter()
    provider, counts = pipeline(monkeypatch, exporter)
    end_spans(provider, 2)
    provider.shutdown()  # exports what is queued
    assert counts.take() == (2, 0, 0)
    end_spans(provider, 3)
    assert counts.take() == (0, 0, 3)
    assert exporter.spans == 2
