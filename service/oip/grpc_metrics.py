"""Prometheus metrics of gRPC calls, recorded by a server interceptor.

Names, labels and code values are those of go-grpc-prometheus (``grpc_code="InvalidArgument"``,
not ``INVALID_ARGUMENT``), so the usual gRPC dashboards and alert rules (e.g. the error-ratio
alerts matching ``grpc_code=~"Unknown|ResourceExhausted|Internal|Unavailable|..."``) apply as is:

- ``grpc_server_started_total{grpc_type, grpc_service, grpc_method}``
- ``grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}``
- ``grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}`` (histogram)

Labels are bounded: only methods the server implements are counted (a call to an unknown method
is answered UNIMPLEMENTED by grpc before any handler runs), and codes are the 17 gRPC codes.

The metrics are created on first use, inside the worker process: BentoML aggregates its workers'
metrics with prometheus_client's multiprocess mode, which must be configured before a metric is
created. One set per process, shared by every server the process starts (tests start several).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import Counter, Histogram

from service.metrics import LATENCY_BUCKETS
from service.oip.outcome import ShutdownCancel, final_code

_LABELS = ("grpc_type", "grpc_service", "grpc_method")


def code_name(code: grpc.StatusCode) -> str:
    """Go's name of a status code, as go-grpc-prometheus labels it: ``InvalidArgument``."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(word.capitalize() for word in code.name.split("_"))


@dataclass(frozen=True)
class GrpcMetrics:
    started: Counter
    handled: Counter
    handling_seconds: Histogram

    def initialize(self, services: Iterable[ServiceDescriptor]) -> None:
        """Create every method's series at zero, so rates and alerts see calls from the first."""
        for service in services:
            for method in service.methods:
                labels = (_rpc_type(method.client_streaming, method.server_streaming),)
                labels += (service.full_name, method.name)
                self.started.labels(*labels)
                self.handled.labels(*labels, "OK")
                self.handling_seconds.labels(*labels)


@cache
def grpc_metrics() -> GrpcMetrics:
    """This process's gRPC metrics, created on the first call."""
    return GrpcMetrics(
        started=Counter("grpc_server_started_total", "RPCs started on the server.", _LABELS),
        handled=Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status code.",
            (*_LABELS, "grpc_code"),
        ),
        handling_seconds=Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its completion by the server, in seconds.",
            _LABELS,
            buckets=LATENCY_BUCKETS,  # the same as the HTTP side's: comparable quantiles
        ),
    )


def _rpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming:
        return "bidi_stream" if server_streaming else "client_stream"
    return "server_stream" if server_streaming else "unary"


class _Call:
    """Timing and status of one RPC."""

    def __init__(self, metrics: GrpcMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._start = time.perf_counter()
        metrics.started.labels(*labels).inc()

    def finish(
        self,
        context: grpc.aio.ServicerContext,
        error: BaseException | None,
        shutdown: ShutdownCancel | None,
    ) -> None:
        code = final_code(context, error, shutdown)
        self._metrics.handled.labels(*self._labels, code_name(code)).inc()
        self._metrics.handling_seconds.labels(*self._labels).observe(
            time.perf_counter() - self._start
        )


Behavior = Callable[..., Any]


def _measured(
    behavior: Behavior, start: Callable[[], _Call], shutdown: ShutdownCancel | None
) -> Behavior:
    """``behavior`` (a coroutine function or an async generator function), measured."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call, error = start(), None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.finish(context, error, shutdown)

        return stream

    async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call, error = start(), None
        try:
            result = behavior(request, context)
            return await result if isinstance(result, Awaitable) else result
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.finish(context, error, shutdown)

    return single


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: GrpcMetrics, shutdown: ShutdownCancel | None = None) -> None:
        self._metrics = metrics
        self._shutdown = shutdown

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: answered UNIMPLEMENTED, not counted
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        labels = (_rpc_type(handler.request_streaming, handler.response_streaming), service, method)

        def start() -> _Call:
            return _Call(self._metrics, labels)

        kind = {
            (False, False): "unary_unary",
            (False, True): "unary_stream",
            (True, False): "stream_unary",
            (True, True): "stream_stream",
        }[(handler.request_streaming, handler.response_streaming)]
        measured = _measured(getattr(handler, kind), start, self._shutdown)
        return handler._replace(**{kind: measured})
