"""Start and stop of the gRPC server inside `bentoml serve`: a taken port stops the service, a
SIGTERM turns health to NOT_SERVING before the server stops, and GRPC_ENABLED=false serves HTTP
only. Each test runs its own `bentoml serve`."""

from __future__ import annotations

import socket
import threading

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import ServedService, free_port


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "so_reuseport"])
def test_a_taken_grpc_port_stops_the_service(model_tag: str, reuseport: bool) -> None:
    """Also when the holder set SO_REUSEPORT (say, a stale copy of this service), with which our
    workers' sockets could silently share the port."""
    with socket.socket() as holder:
        if reuseport:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = ServedService(env={"GRPC_PORT": str(port)}, workers=1)
        with pytest.raises(RuntimeError, match="exited early") as info:
            service.start()
    assert f"GRPC_PORT 0.0.0.0:{port} is in use" in str(info.value)
    assert "GRPC_ENABLED=false" in str(info.value)


def test_a_grpc_port_that_is_the_http_port_stops_the_service(model_tag: str) -> None:
    """BentoML binds the HTTP port after the check: without a word, every worker would fail to
    bind gRPC, and be restarted, forever."""
    service = ServedService(workers=1)
    service.env["GRPC_PORT"] = str(service.port)
    with pytest.raises(RuntimeError, match="exited early") as info:
        service.start(timeout=60)
    assert f"GRPC_PORT {service.port} is also the HTTP port" in str(info.value)


def test_sigterm_reports_not_serving_then_stops(model_tag: str) -> None:
    env = {"GRPC_SHUTDOWN_GRACE_SECONDS": "1"}
    with ServedService(env=env, workers=1) as service:
        channel = grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        statuses = [next(watch).status]
        stopped: list[int] = []
        stopper = threading.Thread(target=lambda: stopped.append(service.stop()))
        stopper.start()
        ended: grpc.StatusCode | None = None
        try:
            for update in watch:
                statuses.append(update.status)
        except grpc.RpcError as exc:  # the stream is cut when the grace period ends
            ended = exc.code()
        stopper.join(60)
        channel.close()
    serving = health_pb2.HealthCheckResponse
    assert statuses == [serving.SERVING, serving.NOT_SERVING]
    assert ended in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert stopped == [0]
    assert "Traceback" not in service.output
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", service.grpc_port)) != 0


def test_grpc_can_be_turned_off(model_tag: str) -> None:
    grpc_port = free_port()
    env = {"GRPC_ENABLED": "false", "GRPC_PORT": str(grpc_port)}
    with ServedService(env=env, workers=1) as service:
        assert httpx.get(f"{service.url}/v2/health/ready").status_code == 200
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", grpc_port)) != 0
