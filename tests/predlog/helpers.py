"""Helpers for the prediction log tests: events, stores, and a TCP proxy to cut PostgreSQL off."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select

from models.contract import CONTRACT
from service.events import Prediction, PredictionEvent, RejectionEvent, RequestInfo
from service.predlog.records import new_event_id
from service.predlog.schema import predictions, rejections
from service.predlog.store import Store
from service.validation import FieldError, Reason
from tests.support import example_rows

T = TypeVar("T")
R = TypeVar("R")
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def request_info(request_id: str | None = None, received_at: datetime | None = None) -> RequestInfo:
    return RequestInfo(
        request_id=request_id or new_event_id(),
        transport="http",
        received_at=received_at or datetime.now(UTC),
        latency_seconds=0.004,
        model_tag="credit_risk:test",
        trace_id=None,
        endpoint="/predict",
    )


@functools.cache
def _example_rows() -> tuple[dict[str, Any], ...]:
    return tuple(example_rows())


def prediction_event(
    n: int = 1, request_id: str | None = None, received_at: datetime | None = None
) -> PredictionEvent:
    rows = [dict(row) for row in _example_rows()[:n]]
    positive, negative = CONTRACT.positive_label, CONTRACT.negative_label
    answers = [
        Prediction(positive if i % 3 == 0 else negative, 0.5 + i / (2 * n)) for i in range(n)
    ]
    return PredictionEvent(request_info(request_id, received_at), rows, answers)


def rejection_event(
    request_id: str | None = None, received_at: datetime | None = None
) -> RejectionEvent:
    error = FieldError(0, "age_in_years", Reason.OUT_OF_RANGE, "17 is outside 18..120", "age")
    return RejectionEvent(request_info(request_id, received_at), 400, [error], 42, '{"instances"')


def row_keys(store: Store) -> tuple[set[tuple[str, int]], set[str]]:
    """(request_id, instance_index) of every prediction row, request_id of every rejection row."""
    with store.engine.connect() as conn:
        preds = {
            (r.request_id, r.instance_index)
            for r in conn.execute(select(predictions.c.request_id, predictions.c.instance_index))
        }
        rejected = [r for (r,) in conn.execute(select(rejections.c.request_id))]
    assert len(rejected) == len(set(rejected)), "a rejection was recorded twice"
    return preds, set(rejected)


def row_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return sum(conn.execute(select(func.count()).select_from(t)).scalar_one()
                   for t in (predictions, rejections))  # fmt: skip


def concurrently(fn: Callable[[T], R], args: Sequence[T]) -> list[R]:
    """``fn(arg)`` for every arg, each on a thread of its own, all released at once (as workers
    starting together); re-raises the first failure."""
    barrier = threading.Barrier(len(args))

    def run(arg: T) -> R:
        barrier.wait()
        return fn(arg)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(run, args))


class TcpProxy:
    """A TCP relay in front of a real server, which a test can cut (connections refused and
    existing ones reset), pause (bytes held: a hung server) and restore."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        # Bound, never listening, whenever the relay does not listen: connections are refused,
        # and the port stays the relay's. Left free during a cut, it was taken by another socket
        # (an outgoing connection's local port), and restore() failed "address already in use".
        self._placeholder: socket.socket | None = _reusable_socket()
        self._placeholder.bind(("127.0.0.1", 0))
        self.port = self._placeholder.getsockname()[1]

    def url_for(self, url: str) -> str:
        host, port = self.upstream
        return url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}")

    def start(self) -> TcpProxy:
        listener = _reusable_socket()
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        placeholder, self._placeholder = self._placeholder, None
        if placeholder is not None:
            placeholder.close()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    restore = start

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            self._placeholder = _reusable_socket()
            self._placeholder.bind(("127.0.0.1", self.port))
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self.resume()
        self.cut()
        placeholder, self._placeholder = self._placeholder, None
        if placeholder is not None:
            placeholder.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _reusable_socket() -> socket.socket:
    # SO_REUSEPORT: the relay's listener and its placeholder hold the port in turn, overlapping.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock
