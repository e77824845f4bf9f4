"""The gRPC server that each BentoML worker runs beside its HTTP server.

BentoML 1.4 cannot serve a new-style service over gRPC (``bentoml serve-grpc`` rejects it;
bentoml/BentoML#5607, #4634), so every worker starts a ``grpc.aio`` server on its own event loop
from the service's startup hook, next to the model it already loaded. All workers bind GRPC_PORT
with SO_REUSEPORT and the kernel spreads incoming connections across them, as BentoML's shared
socket does for HTTP. Because SO_REUSEPORT would also let a stale copy of the service share the
port silently, :func:`check_port_free` runs once before any worker starts and refuses a port that
anything is listening on.

Besides ``inference.GRPCInferenceService`` the server answers the standard health checking
protocol (``grpc.health.v1.Health``: "" and the inference service, NOT_SERVING once shutdown
starts) and server reflection, and counts every call (see ``grpc_metrics.py``).

Its connections do not live for ever (:class:`ConnectionLimits`; gRPC's own defaults keep every
connection, idle or not, until its client closes it): an idle one is closed, an old one is asked
to go away so that its client reconnects, possibly elsewhere, and keepalive pings and streams
per connection are bounded (docs/grpc.md, "Connections").
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from functools import cache

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.oip.generated import grpc_predict_v2_pb2 as pb
from service.oip.grpc_metrics import MetricsInterceptor, grpc_metrics
from service.oip.outcome import ShutdownCancel
from service.oip.protocol import InferenceProtocol
from service.oip.servicer import SERVICE_NAME, InferenceServicer, add_to_server

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


# Keepalive pings a client may send: one every 5 s at most, also on a connection without calls.
# gRPC's default allows one every 5 minutes, and none without a call in flight: a client or proxy
# pinging more often (grpc-go allows 10 s, a common choice) collects "ping strikes" and, at the
# third, its connection is closed with GOAWAY ENHANCE_YOUR_CALM "too_many_pings", failing every
# call in flight on it. A ping does not make a connection busy: the idle limit still applies.
MIN_PING_INTERVAL_MS = 5_000
# Calls at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; gRPC's default is no
# bound): each may hold a message of up to MAX_BODY_BYTES. A client at the bound waits for a
# stream to free (gRPC's clients queue the call, proxies open another connection); 100 is the
# least RFC 9113 recommends, and what nginx's and Apache's HTTP/2 servers announce (nginx: 128).
MAX_CONCURRENT_STREAMS = 100


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a gRPC connection may live, in seconds: idle (0: for ever, gRPC's default), in
    all (0: for ever), and then its calls in flight, before it is closed under them."""

    max_idle_seconds: float = 0
    max_age_seconds: float = 0
    max_age_grace_seconds: float = 0

    def options(self) -> list[tuple[str, int]]:
        """gRPC core's server arguments for these limits (include/grpc/impl/channel_arg_names.h)."""
        options: list[tuple[str, int]] = []
        if self.max_idle_seconds > 0:
            options.append(("grpc.max_connection_idle_ms", _ms(self.max_idle_seconds)))
        if self.max_age_seconds > 0:
            options.append(("grpc.max_connection_age_ms", _ms(self.max_age_seconds)))
            # Without it (gRPC's default: no end), one call that never ends, a forgotten health
            # Watch, keeps its connection, and whatever worker or replica it holds, for good.
            grace = _ms(self.max_age_grace_seconds)
            options.append(("grpc.max_connection_age_grace_ms", grace))
        return options


def _ms(seconds: float) -> int:
    # At least 1: gRPC reads 0 ms as "at once", which a positive setting never means.
    return max(1, round(seconds * 1000))


class GrpcPortUnavailable(RuntimeError):
    """GRPC_PORT cannot be bound: the service must not start HTTP-only."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serving_http_port() -> int | None:
    """The port ``bentoml serve`` is about to serve HTTP on (``--port``, ``BENTOML_PORT``, else
    BentoML's configured default), from its main process; None elsewhere."""
    port = _serve_option("port")
    return None if port is None else int(port)


def serving_http_host() -> str | None:
    """The address ``bentoml serve`` is about to serve HTTP on (``--host``, ``BENTOML_HOST``,
    else BentoML's configured default), from its main process; None elsewhere."""
    return _serve_option("host")


def _serve_option(name: str) -> str | None:
    """``bentoml serve``'s option ``name`` (``port``, ``host``), else BentoML's ``http.<name>``;
    None outside ``bentoml serve``'s main process (no click context holding the option)."""
    import click

    context = click.get_current_context(silent=True)
    if context is None or name not in context.params:
        return None
    if context.params[name] is not None:
        return str(context.params[name])
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(getattr(BentoMLContainer.http, name).get())


class HttpPortUnavailable(RuntimeError):
    """The HTTP port cannot be bound."""


def check_http_port_free(host: str, port: int) -> None:
    """Raise :class:`HttpPortUnavailable` if ``host:port`` cannot be bound (something listens
    on it). BentoML binds it only after the deployment hooks, and a failure there ends its CLI
    with a 50-line traceback whose last line says "Address already in use" but not which port,
    nor how to choose another."""
    if port == 0:
        return
    exc = _bind_error(host, port)
    if exc is not None:
        raise HttpPortUnavailable(
            f"HTTP port {address(host, port)} cannot be bound: {exc}; free it or choose "
            "another port (PORT in the image, BENTOML_PORT or `bentoml serve --port`)"
        ) from exc


def check_port_free(host: str, port: int, http_port: int | None = None) -> None:
    """Raise :class:`GrpcPortUnavailable` if something listens on ``host:port``, or if it is
    ``http_port``, which BentoML binds only after this check.

    The probe binds without SO_REUSEPORT, so it fails on any listener, including one that would
    share the port with our workers (another copy of this service). Port 0 (a free port per
    worker, for tests) needs no check.
    """
    if port == 0:
        return
    if port == http_port:
        raise GrpcPortUnavailable(
            f"GRPC_PORT {port} is also the HTTP port; choose another GRPC_PORT (or HTTP port), "
            "or set GRPC_ENABLED=false to serve HTTP only"
        )
    exc = _bind_error(host, port)
    if exc is None:
        return
    # A name that does not resolve, or an address of no interface here: the port is not what to
    # change, and "free it" would send the operator looking for a listener.
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        raise GrpcPortUnavailable(
            f"GRPC_HOST {host!r} cannot be bound: {exc}; set it to an address of this host "
            "(0.0.0.0 for every IPv4 address, :: for IPv6 and IPv4), or set GRPC_ENABLED=false "
            "to serve HTTP only"
        ) from exc
    reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc}"
    raise GrpcPortUnavailable(
        f"GRPC_PORT {address(host, port)} {reason}; free it, choose another GRPC_PORT, "
        "or set GRPC_ENABLED=false to serve HTTP only"
    ) from exc


def _bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound; None if it can. With SO_REUSEADDR, as servers set it
    (connections of a previous run in TIME_WAIT don't count), and without SO_REUSEPORT, so that
    any listener counts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


@cache
def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every service the server offers, for reflection clients to describe.

    Our messages live in a private pool (see codegen.py); reflection needs health and reflection
    themselves beside them.
    """
    pool = descriptor_pool.DescriptorPool()
    for file in (pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        pool.AddSerializedFile(file.serialized_pb)
    return pool


class GrpcServer:
    """One worker's gRPC server: :meth:`start` in the startup hook, :meth:`stop` at shutdown."""

    def __init__(
        self,
        protocol: InferenceProtocol,
        host: str,
        port: int,
        max_message_bytes: int,
        grace_seconds: float,
        metrics_enabled: bool = True,
        connections: ConnectionLimits | None = None,
    ) -> None:
        self.protocol = protocol
        self.host = host
        self.port = port
        self._grace = grace_seconds
        self._health = health.aio.HealthServicer()
        self._shutdown = ShutdownCancel()
        # METRICS_ENABLED=false turns every metric off: none created, none updated per call.
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if metrics_enabled:
            metrics = grpc_metrics()
            metrics.initialize([INFERENCE_SERVICE, HEALTH_SERVICE, REFLECTION_SERVICE])
            interceptors.append(MetricsInterceptor(metrics, self._shutdown))
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 1),  # grpc's default on Linux; the design relies on it
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
                ("grpc.keepalive_permit_without_calls", 1),
                *(connections or ConnectionLimits()).options(),
            ],
        )
        add_to_server(InferenceServicer(protocol, self._shutdown), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE.full_name, reflection.SERVICE_NAME),
            self._server,
            pool=_reflection_pool(),
        )

    async def start(self) -> None:
        """Bind and serve; raises :class:`GrpcPortUnavailable` if the port cannot be bound."""
        target = address(self.host, self.port)
        try:
            bound = self._server.add_insecure_port(target)
        except RuntimeError as exc:
            raise GrpcPortUnavailable(f"cannot bind GRPC_PORT {target}: {exc}") from exc
        if bound == 0:
            raise GrpcPortUnavailable(f"cannot bind GRPC_PORT {target}")
        self.port = bound
        await self._server.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC (Open Inference Protocol) listening on %s", address(self.host, bound))

    async def stop(self) -> None:
        """Report NOT_SERVING, refuse new calls, let calls in flight finish within the grace."""
        self.protocol.ready = False
        await self._health.enter_graceful_shutdown()
        # Calls still running when the grace ends are cancelled by the server, not their clients:
        # recorded and counted as UNAVAILABLE (503), as the clients see them.
        self._shutdown.schedule(self._grace)
        await self._server.stop(self._grace)
        log.info("gRPC server stopped")
