"""Span export metrics: what became of the spans the tracing pipeline (service/tracing.py) sent."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from service.metrics import flusher
from service.metrics.flusher import Flusher
from service.tracing import SpanCounts


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
        self._flusher = flusher.FLUSHER
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
