"""Start and stop of the gRPC server inside `bentoml serve`: a taken port stops the service, a
SIGTERM turns health to NOT_SERVING before the server stops, and GRPC_ENABLED=false serves HTTP
only. Each test runs its own `bentoml serve`."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from models.contract import CONTRACT
from tests.oip_support import triton_inputs
from tests.support import ServedService, example_rows, free_port, scrape, total, wait_until


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
    # An operator's mistake, said in a line: not at the end of BentoML's CLI traceback.
    assert "Traceback" not in str(info.value)
    assert service.stop() == 1


def test_a_grpc_port_that_is_the_http_port_stops_the_service(model_tag: str) -> None:
    """BentoML binds the HTTP port after the check: without a word, every worker would fail to
    bind gRPC, and be restarted, forever."""
    service = ServedService(workers=1)
    service.env["GRPC_PORT"] = str(service.port)
    with pytest.raises(RuntimeError, match="exited early") as info:
        service.start(timeout=60)
    assert f"GRPC_PORT {service.port} is also the HTTP port" in str(info.value)
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize(
    "host", ["no-such-host.invalid", "192.0.2.1"], ids=["unresolvable", "not_this_hosts"]
)
def test_a_grpc_host_that_cannot_be_bound_stops_the_service_naming_it(
    model_tag: str, host: str
) -> None:
    """The port is free: the message must send the operator to GRPC_HOST, not to a listener on
    GRPC_PORT that does not exist."""
    service = ServedService(env={"GRPC_HOST": host}, workers=1)
    with pytest.raises(RuntimeError, match="exited early") as info:
        service.start(timeout=60)
    assert f"GRPC_HOST '{host}' cannot be bound" in str(info.value)
    assert "choose another GRPC_PORT" not in str(info.value)
    assert "Traceback" not in str(info.value)
    assert service.stop() == 1


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


def test_calls_cut_by_the_end_of_the_shutdown_grace_are_recorded_as_unavailable(
    model_tag: str, tmp_path: Path
) -> None:
    """The server cancels the calls still running when GRPC_SHUTDOWN_GRACE_SECONDS ends; their
    clients get UNAVAILABLE, and the log and metrics must say so (503), not that the clients
    cancelled them (499, which no error rate counts)."""
    database = tmp_path / "predictions.db"
    env = {"GRPC_SHUTDOWN_GRACE_SECONDS": "0", "PREDICTION_LOG_URL": f"sqlite:///{database}"}
    service = ServedService(env=env, workers=1).start()
    inputs = triton_inputs(triton_grpc, example_rows(1000))  # a queue of calls waits for the model
    stop = threading.Event()
    codes: list[str] = []

    def load() -> None:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{service.grpc_port}")
        while not stop.is_set():
            try:
                client.infer(CONTRACT.model_name, inputs)
            except InferenceServerException as exc:
                codes.append(str(exc.status()))
                time.sleep(0.05)
        client.close()

    def in_flight() -> float:
        samples = scrape(service.url)
        infer = {"grpc_method": "ModelInfer"}
        started = total(samples, "grpc_server_started_total", **infer)
        return started - total(samples, "grpc_server_handled_total", **infer)

    threads = [threading.Thread(target=load) for _ in range(12)]
    try:
        for thread in threads:
            thread.start()
        # SIGTERM once calls wait for the model (not after a fixed time: the clients may not
        # have sent any yet on a busy machine, and no call would be cut).
        wait_until(lambda: in_flight() >= 4, timeout=60)
    finally:
        exit_code = service.stop()
        stop.set()
        for thread in threads:
            thread.join(30)
    assert exit_code == 0
    assert "StatusCode.UNAVAILABLE" in codes
    with sqlite3.connect(database) as db:
        statuses = [status for (status,) in db.execute("SELECT status FROM rejections")]
        errors = [e for (e,) in db.execute("SELECT errors FROM rejections WHERE status = 503")]
    assert statuses
    assert set(statuses) == {503}
    assert all('"reason":"unavailable"' in e and "GRPC_SHUTDOWN_GRACE_SECONDS" in e for e in errors)
    assert '"status":499' not in service.output


def test_grpc_can_be_turned_off(model_tag: str) -> None:
    grpc_port = free_port()
    env = {"GRPC_ENABLED": "false", "GRPC_PORT": str(grpc_port)}
    with ServedService(env=env, workers=1) as service:
        assert httpx.get(f"{service.url}/v2/health/ready").status_code == 200
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", grpc_port)) != 0
