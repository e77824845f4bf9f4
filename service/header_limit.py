"""A bound on the size of an HTTP request's head (its request line and headers).

BentoML's workers serve HTTP with uvicorn's httptools protocol, which buffers a head of any size:
a client that sent a single 200 MB header had the worker hold all of it, and, the parser joining
each piece it receives to what it already had (a copy of the whole each time), spend 57 s of CPU
on it, during which the worker's event loop served nothing else (100 MB: 12 s). BentoML offers no
way to configure uvicorn (h11 has such a limit, but BentoML does not let one choose it), so the
limit is set on the protocol class itself, in each worker, when the service module is imported,
as ``service.bentoml_metrics`` does for BentoML's request metrics.

A head that grows beyond MAX_HEAD_BYTES is answered 431 and its connection closed, as uvicorn
answers a malformed request (400), whose answer is replaced here by the same JSON error: while it
is still arriving, once the socket reads after the one it began in exceed the limit (a bound on
what a worker holds), and when it is whole, whatever the reads it came in (a head of 100 KB read
at once was served).

The head must also arrive within a timeout (the service's REQUEST_TIMEOUT_SECONDS), counted from
the connection's opening or from the first byte of each later request: uvicorn closes a
connection idle after an answer (its keep-alive timeout), but waited without end for the first
request, or for the rest of a head once one byte of it had come, so that a client opening
connections and sending nothing, or a byte now and then, held them (and their file descriptors)
for good. A partial head is answered 408, an idle connection just closed.

A refused connection is closed so that its client can read the answer (a "lingering close", as
Apache's and nginx's): the answer written, the write side is shut, and what the client still
sends (the rest of its head, the body it sent with it) is read and dropped, never parsed, until
the client closes, for at most LINGER_SECONDS (2 s) and LINGER_BYTES (4 MiB), then the
connection is closed. Closed at once with bytes of the client unread, the kernel reset it, and
the client, still writing or reading, saw "connection reset by peer" and not the refusal (every
time for a 100 KB head sent with a 1 MB body). A client that sends on past either bound is cut
off (and may then lose the answer); over TLS, which has no half-close, the connection is closed
at once as before.

Such a refused request never reaches the application: it has no endpoint, no body and no model,
so it is no row of the prediction log (whose rejections are what a prediction endpoint refused).
It still gets a request id, in its answer (body and ``X-Request-ID``) and, for a 431 or 408, in
the warning logged (uvicorn logs its own, without it, for a 400), and, with CORS on, the CORS
headers an answer of the application gets for the request's ``Origin`` (if read before the
refusal), by BentoML's CORS middleware's own code (``service/cors.py``): a browser app reads the
refusal and its request id rather than a network error. A body the parser refuses (a
broken chunked encoding) is counted as malformed too, though its request had reached the
application. Each :class:`Refusal` is handed to the observers added with :func:`observe` (the
worker's request metrics and access log), on the event loop: they must only queue it. Nothing of
this runs for a request that is not refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from service.cors import refusal_headers
from service.inference import new_request_id

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
_TOO_LARGE = (
    f"the request line and headers exceed {MAX_HEAD_BYTES} bytes; send them shorter (the body "
    "is not limited by this)"
)
_MALFORMED = "the request is not valid HTTP/1.1 (request line, headers or chunked body)"
# Why a request was refused before the application: the `reason` of its metric and access-log
# line, and the status it is answered.
MALFORMED = "malformed"
HEAD_TOO_LARGE = "head_too_large"
HEAD_TIMEOUT = "head_timeout"
STATUSES = {MALFORMED: 400, HEAD_TOO_LARGE: 431, HEAD_TIMEOUT: 408}
_STATUS_LINES = {
    MALFORMED: b"400 Bad Request",
    HEAD_TOO_LARGE: b"431 Request Header Fields Too Large",
    HEAD_TIMEOUT: b"408 Request Timeout",
}
# After a refusal, what the client still sends (the rest of its head, its body) is read and
# dropped, its answer written and the write side shut, until the client closes, for at most
# LINGER_SECONDS and LINGER_BYTES: a close with the client's bytes unread resets the connection,
# and the client then saw 'connection reset by peer', not the refusal. Bounded, so that a client
# sending on holds a connection no longer than that; past either bound it is closed (and may be
# reset). The bytes: MAX_BODY_BYTES' default, a body the service would have read.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 << 20
_installed = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused before it reached the application."""

    request_id: str
    reason: str  # MALFORMED, HEAD_TOO_LARGE or HEAD_TIMEOUT
    status: int
    received_at: datetime  # UTC: the head's first byte, or the connection's opening
    latency_seconds: float  # from then to the refusal


Observer = Callable[[Refusal], None]
_observers: list[Observer] = []


def observe(observer: Observer) -> None:
    """Hand every later refusal of this process to ``observer`` (on the event loop)."""
    _observers.append(observer)


def forget(observer: Observer) -> None:
    if observer in _observers:
        _observers.remove(observer)


def _response(status: bytes, message: str, request_id: str, origin: bytes | None) -> bytes:
    body = orjson.dumps({"error": "invalid_request", "message": message, "request_id": request_id})
    # The CORS headers the app's answers get: else a browser app reports a network error, not
    # the refusal and its request id.
    cors = b"".join(b"%s: %s\r\n" % header for header in refusal_headers(origin))
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\n%sconnection: close\r\n\r\n%s"
        % (status, len(body), request_id.encode("ascii"), cors, body)
    )


def _origin(protocol: Any) -> bytes | None:
    """The request's ``Origin``, if the parser has read it (uvicorn's header names are lower
    case; the head being read, or the one whose body was refused)."""
    for name, value in protocol.headers or ():
        if name == b"origin":
            return value
    return None


def install(timeout_seconds: float) -> None:
    """Bound the size of the head of every request that uvicorn's httptools protocol reads, and
    the time it takes to arrive (once per process)."""
    global _installed
    if _installed:
        return
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # without httptools, uvicorn runs h11, which bounds heads itself
        return
    _bound(HttpToolsProtocol, timeout_seconds)
    _installed = True


def _bound(protocol: Any, timeout_seconds: float) -> None:
    data_received = protocol.data_received
    connection_made = protocol.connection_made
    connection_lost = protocol.connection_lost
    on_message_begin = protocol.on_message_begin
    on_headers_complete = protocol.on_headers_complete
    timed_out = f"the request line and headers did not arrive within {timeout_seconds:g} s"
    # Whether a head is being read, and its bytes received in the pieces after the one it
    # began in: that one may also hold the end of the previous request, which must not count.
    # The head is thus bounded to MAX_HEAD_BYTES plus one piece (at most 256 KB with uvloop)
    # while it arrives; once whole, it is measured (_whole_head_too_large).
    protocol._head_open = False
    protocol._head_bytes = 0
    # The size of the piece being parsed, and of the one the head began in: the head has at most
    # their bytes and _head_bytes, so that only a head that may exceed the limit is measured.
    protocol._piece_bytes = 0
    protocol._first_piece_bytes = 0
    # The timer of the head awaited (from the connection's opening or a head's first byte).
    protocol._head_timer = None
    # Whether the connection was refused (its answer written, its protocol now _Lingering).
    protocol._refused = False

    def arm(self: Any) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(timeout_seconds, expire, self)

    def disarm(self: Any) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def waited(self: Any) -> float:
        # Since the head's first byte (or the connection's opening), from its timer: noting
        # when each head begins would cost every request a clock read.
        if self._head_timer is None:
            return 0.0
        return max(self.loop.time() - (self._head_timer.when() - timeout_seconds), 0.0)

    def expire(self: Any) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self._head_open:
            _refuse(self, HEAD_TIMEOUT, timed_out, timeout_seconds)
        else:
            self.transport.close()

    def bounded_connection_made(self: Any, transport: Any) -> None:
        connection_made(self, transport)
        arm(self)

    def bounded_connection_lost(self: Any, exc: Exception | None) -> None:
        disarm(self)
        connection_lost(self, exc)

    def bounded_data_received(self: Any, data: bytes) -> None:
        counted = self._head_open
        self._piece_bytes = len(data)
        data_received(self, data)
        if not (counted and self._head_open):
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES and not (self._refused or self.transport.is_closing()):
            _refuse(self, HEAD_TOO_LARGE, _TOO_LARGE, waited(self))

    def bounded_on_message_begin(self: Any) -> None:
        self._head_open = True
        self._head_bytes = 0
        self._first_piece_bytes = self._piece_bytes
        arm(self)
        on_message_begin(self)

    def bounded_on_headers_complete(self: Any) -> None:
        self._head_open = False
        if (
            self._first_piece_bytes + self._head_bytes + self._piece_bytes > MAX_HEAD_BYTES
            and _whole_head_too_large(self)
        ):
            _refuse(self, HEAD_TOO_LARGE, _TOO_LARGE, waited(self))
            disarm(self)
            # Stops the parser before the request reaches the application (its task is
            # created here); uvicorn then logs an invalid request, which this one is not, and
            # calls send_400_response, which sees the connection refused.
            self.logger = _SILENT
            raise HeadTooLarge
        disarm(self)
        on_headers_complete(self)

    def send_400_response(self: Any, msg: str) -> None:
        # uvicorn's answer to what its parser refuses, in plain text and without a request id;
        # uvicorn has logged its warning already.
        if not (self._refused or self.transport.is_closing()):  # else refused already
            _refuse(self, MALFORMED, _MALFORMED, waited(self))

    protocol.data_received = bounded_data_received
    protocol.connection_made = bounded_connection_made
    protocol.connection_lost = bounded_connection_lost
    protocol.on_message_begin = bounded_on_message_begin
    protocol.on_headers_complete = bounded_on_headers_complete
    protocol.send_400_response = send_400_response


class HeadTooLarge(Exception):
    """Raised in the parser's callback of a whole head over the limit, to stop the parser."""


# The logger of a protocol whose connection was refused and closed: uvicorn's warning of the
# parser stopped by HeadTooLarge would say "Invalid HTTP request received." Not from
# getLogger: a later logging configuration (BentoML's, in the worker) would enable it again.
_SILENT = logging.Logger(f"{__name__}.refused", logging.CRITICAL + 1)
_SILENT.disabled = True


def _whole_head_too_large(protocol: Any) -> bool:
    """Whether the head just parsed exceeds MAX_HEAD_BYTES: its request line and header lines as
    the parser gave them (without optional whitespace, which only makes it larger)."""
    size = len(protocol.parser.get_method()) + len(protocol.url) + len(b"  HTTP/1.1\r\n\r\n")
    for name, value in protocol.headers:
        size += len(name) + len(value) + len(b": \r\n")
    return size > MAX_HEAD_BYTES


def _refuse(protocol: Any, reason: str, message: str, waited: float) -> None:
    """Answer ``reason``'s status with ``message``, close the connection (lingering), tell the
    observers."""
    request_id = new_request_id()
    protocol._head_open = False
    protocol._refused = True
    if protocol._head_timer is not None:
        protocol._head_timer.cancel()
        protocol._head_timer = None
    answer = _response(_STATUS_LINES[reason], message, request_id, _origin(protocol))
    _answer_and_close(protocol, answer)
    if reason != MALFORMED:
        log.warning("refused request %s (%d): %s", request_id, STATUSES[reason], message)
    refusal = Refusal(
        request_id=request_id,
        reason=reason,
        status=STATUSES[reason],
        received_at=datetime.now(UTC) - timedelta(seconds=waited),
        latency_seconds=waited,
    )
    for observer in _observers:
        try:
            observer(refusal)
        except Exception:  # an observer never takes the answer or the other observers down
            log.exception("refusal observer %r failed", observer)


def _answer_and_close(protocol: Any, answer: bytes) -> None:
    """Write ``answer`` and close the connection once the client has read it: shut the write
    side, then drop what the client still sends (:class:`_Lingering`)."""
    transport = protocol.transport
    transport.write(answer)
    if not transport.can_write_eof():  # TLS: no half-close
        transport.close()
        return
    cycle = protocol.cycle
    if cycle is not None and not cycle.response_complete:
        # A body refused (malformed) while the application reads it: it sees the client gone,
        # as uvicorn tells it when the connection is lost, and writes nothing after the refusal.
        cycle.disconnected = True
        cycle.message_event.set()
    transport.write_eof()
    transport.set_protocol(_Lingering(protocol))
    if not transport.is_reading():  # paused by uvicorn's flow control: the client's bytes wait
        transport.resume_reading()


class _Lingering(asyncio.Protocol):
    """The protocol of a refused connection: what the client still sends is dropped, never
    parsed, until the client closes, LINGER_SECONDS pass or LINGER_BYTES are read, then the
    connection is closed. uvicorn's protocol is told of the loss as before (it counts its open
    connections, and waits for them at shutdown)."""

    def __init__(self, refused: Any) -> None:
        self._refused = refused
        self._transport: asyncio.Transport = refused.transport
        self._left = LINGER_BYTES
        self._deadline = refused.loop.call_later(LINGER_SECONDS, self._transport.close)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # the client has sent all: the transport closes

    def pause_writing(self) -> None:
        self._refused.pause_writing()

    def resume_writing(self) -> None:
        self._refused.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        self._refused.connection_lost(exc)
