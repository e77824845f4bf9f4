"""How long the gRPC server keeps a connection: an idle one is closed, an old one is rotated
without failing its calls, and the calls in flight on it get GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS
to finish. Real clients against a real `bentoml serve`, limits set short through the environment;
connections are observed as the client's TCP sockets."""

from __future__ import annotations

import threading
import time

import grpc
import psutil
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models.contract import CONTRACT
from tests.oip_support import triton_inputs
from tests.support import ServedService, example_rows, wait_until

# Each channel its own connection: gRPC would otherwise share one among the test's channels.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def open_connections(port: int) -> set[int]:
    """The local ports of this process's established connections to ``port``."""
    return {
        c.laddr.port
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    }


def live(channel: grpc.Channel) -> bool:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    return stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def test_an_idle_connection_is_closed_and_a_busy_one_is_not(model_tag: str) -> None:
    """A client that went quiet (or away) no longer holds a connection and its file descriptor
    for good; one with a call in flight (a health Watch) is not idle. The next call of a client
    whose connection was closed simply reconnects."""
    env = {"GRPC_MAX_CONNECTION_IDLE_SECONDS": "1"}
    with ServedService(env=env, workers=1) as service:
        target = f"127.0.0.1:{service.grpc_port}"
        idle = grpc.insecure_channel(target, options=OWN_CONNECTION)
        busy = grpc.insecure_channel(target, options=OWN_CONNECTION)
        try:
            watch = health_pb2_grpc.HealthStub(busy).Watch(
                health_pb2.HealthCheckRequest(), timeout=60
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            (busy_port,) = open_connections(service.grpc_port)
            assert live(idle)
            (idle_port,) = open_connections(service.grpc_port) - {busy_port}

            # 1 s, +-10% jitter; the server's GOAWAY, then its close.
            wait_until(lambda: idle_port not in open_connections(service.grpc_port), timeout=10)
            time.sleep(1.5)  # the busy connection is as old now as the idle one was then
            assert busy_port in open_connections(service.grpc_port)
            assert live(idle)
            watch.cancel()
        finally:
            idle.close()
            busy.close()


def test_calls_are_answered_across_max_age_rotations(model_tag: str) -> None:
    """A long-lived client is moved to new connections (which a load balancer may place on
    replicas added since) without a call failing: the channel reconnects by itself."""
    env = {
        "GRPC_MAX_CONNECTION_AGE_SECONDS": "1",
        "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "5",
    }
    with ServedService(env=env, workers=1) as service:
        client = triton_grpc.InferenceServerClient(
            f"127.0.0.1:{service.grpc_port}", channel_args=OWN_CONNECTION
        )
        inputs = triton_inputs(triton_grpc, example_rows(10))
        seen: set[int] = set()
        answered = 0
        try:
            end = time.monotonic() + 5
            while time.monotonic() < end:
                result = client.infer(CONTRACT.model_name, inputs, client_timeout=10)
                assert result.as_numpy("label") is not None
                answered += 1
                seen |= open_connections(service.grpc_port)
                time.sleep(0.01)
        finally:
            client.close()
    assert answered >= 20
    assert len(seen) >= 3, f"{answered} calls on {len(seen)} connection(s) in 5 s"


def test_a_call_in_flight_when_max_age_comes_finishes_on_the_old_connection(
    model_tag: str,
) -> None:
    """The GOAWAY sent at max age takes no new call on the old connection but lets the one in
    flight (here a health Watch, which lasts) go on within the grace: at SIGTERM, well after max
    age, its client still learns NOT_SERVING on it, as graceful shutdown promises."""
    env = {
        "GRPC_MAX_CONNECTION_AGE_SECONDS": "1",
        "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "60",
        "GRPC_SHUTDOWN_GRACE_SECONDS": "1",
    }
    service = ServedService(env=env, workers=1).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}", options=OWN_CONNECTION)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=60
        )
        statuses = [next(watch).status]
        (old,) = open_connections(service.grpc_port)
        time.sleep(2.5)  # past max age (1 s, +-10%)
        assert live(channel)  # on a new connection: the old one takes no new call
        assert open_connections(service.grpc_port) - {old}, "the old connection took the call"
        assert old in open_connections(service.grpc_port)

        stopped: list[int] = []
        stopper = threading.Thread(target=lambda: stopped.append(service.stop()))
        stopper.start()
        try:
            for update in watch:
                statuses.append(update.status)
        except grpc.RpcError:  # the stream is cut when the shutdown grace ends
            pass
        stopper.join(60)
    finally:
        service.stop()
        channel.close()
    serving = health_pb2.HealthCheckResponse
    assert statuses == [serving.SERVING, serving.NOT_SERVING]
    assert stopped == [0]


def test_a_call_still_running_when_the_max_age_grace_ends_is_cut(model_tag: str) -> None:
    """GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS bounds how long an old connection lingers: a call
    that never ends cannot hold a worker or replica for good. Its client gets UNAVAILABLE (and
    may call again: the channel reconnects)."""
    env = {
        "GRPC_MAX_CONNECTION_AGE_SECONDS": "1",
        "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "1",
    }
    with ServedService(env=env, workers=1) as service:
        channel = grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}", options=OWN_CONNECTION)
        try:
            started = time.monotonic()
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=20
            )
            statuses = []
            ended: grpc.StatusCode | None = None
            try:
                for update in watch:
                    statuses.append(update.status)
            except grpc.RpcError as exc:
                ended = exc.code()
            lasted = time.monotonic() - started
            assert statuses == [health_pb2.HealthCheckResponse.SERVING]
            assert ended == grpc.StatusCode.UNAVAILABLE
            assert lasted < 10, lasted  # 1 s (+-10%) and 1 s of grace, on a busy machine
            assert live(channel)
        finally:
            channel.close()


def test_a_client_sending_keepalive_pings_every_few_seconds_keeps_its_calls(
    served: ServedService,
) -> None:
    """Clients and proxies set keepalive pings to find dead connections early (grpc-go allows
    one every 10 s). gRPC's default server policy allows one every 5 minutes: at the third ping
    too early it closed the connection (GOAWAY "too_many_pings") and failed the calls in flight
    on it. A call that sends nothing for a while (here a health Watch) must keep its connection."""
    pinging = [
        *OWN_CONNECTION,
        ("grpc.keepalive_time_ms", 6_000),
        ("grpc.http2.max_pings_without_data", 0),  # else the client stops after 2 pings
    ]
    # The shared service has the default connection settings this is about.
    earlier = open_connections(served.grpc_port)  # of earlier tests' clients, if any
    channel = grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}", options=pinging)
    try:
        # Four pings in the meantime: the third strike under gRPC's default comes at 24 s.
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=28
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        (connection,) = open_connections(served.grpc_port) - earlier
        ended: grpc.StatusCode | None = None
        try:
            for _ in watch:
                pass
        except grpc.RpcError as exc:
            ended = exc.code()
        assert ended == grpc.StatusCode.DEADLINE_EXCEEDED  # its own deadline, not a GOAWAY
        assert open_connections(served.grpc_port) - earlier == {connection}
        assert live(channel)
    finally:
        channel.close()


def test_one_connection_runs_at_most_100_calls_at_once(served: ServedService) -> None:
    """A client (or a proxy multiplexing many) cannot pile an unbounded number of calls, each up
    to MAX_BODY_BYTES, onto one connection: the 101st waits, in the client, for one to end."""
    # The shared service has the default connection settings this is about.
    earlier = open_connections(served.grpc_port)  # of earlier tests' clients, if any
    channel = grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}", options=OWN_CONNECTION)
    stub = health_pb2_grpc.HealthStub(channel)
    watches = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=60) for _ in range(101)]
    answered: list[int] = []
    lock = threading.Lock()

    def first_answer(index: int) -> None:
        try:
            next(watches[index])
        except grpc.RpcError:
            return
        with lock:
            answered.append(index)

    readers = [threading.Thread(target=first_answer, args=(i,)) for i in range(101)]
    try:
        for reader in readers:
            reader.start()
        wait_until(lambda: len(answered) >= 100, timeout=30)
        time.sleep(2)
        assert len(answered) == 100
        assert len(open_connections(served.grpc_port) - earlier) == 1
        with lock:
            watches[answered[0]].cancel()
        wait_until(lambda: len(answered) == 101, timeout=30)
    finally:
        for watch in watches:
            watch.cancel()
        for reader in readers:
            reader.join(10)
        channel.close()
