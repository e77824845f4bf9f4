"""A bound on the size of an HTTP request's head (its request line and headers).

BentoML's workers serve HTTP with uvicorn's httptools protocol, which buffers a head of any size:
a client that sent a single 200 MB header had the worker hold all of it, and, the parser joining
each piece it receives to what it already had (a copy of the whole each time), spend 57 s of CPU
on it, during which the worker's event loop served nothing else (100 MB: 12 s). BentoML offers no
way to configure uvicorn (h11 has such a limit, but BentoML does not let one choose it), so the
limit is set on the protocol class itself, in each worker, when the service module is imported,
as ``service.bentoml_metrics`` does for BentoML's request metrics.

A head that grows beyond MAX_HEAD_BYTES is answered 431 and its connection closed, as uvicorn
answers a malformed request (400): the request never reaches the application, so it has neither
a request id nor a row in the prediction log; it is logged as a warning.

The head must also arrive within a timeout (the service's REQUEST_TIMEOUT_SECONDS), counted from
the connection's opening or from the first byte of each later request: uvicorn closes a
connection idle after an answer (its keep-alive timeout), but waited without end for the first
request, or for the rest of a head once one byte of it had come, so that a client opening
connections and sending nothing, or a byte now and then, held them (and their file descriptors)
for good. A partial head is answered 408, an idle connection just closed.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
_MESSAGE = (
    f"the request line and headers exceed {MAX_HEAD_BYTES} bytes; send them shorter (the body "
    "is not limited by this)"
)
_installed = False


def _response(status: bytes, message: str) -> bytes:
    body = orjson.dumps({"error": "invalid_request", "message": message})
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, len(body), body)
    )


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
    too_large = _response(b"431 Request Header Fields Too Large", _MESSAGE)
    timed_out = _response(
        b"408 Request Timeout",
        f"the request line and headers did not arrive within {timeout_seconds:g} s",
    )
    # Whether a head is being read, and its bytes received in the pieces after the one it
    # began in: that one may also hold the end of the previous request, which must not count.
    # The head is thus bounded to MAX_HEAD_BYTES plus one piece (at most 256 KB with uvloop).
    protocol._head_open = False
    protocol._head_bytes = 0
    # The timer of the head awaited (from the connection's opening or a head's first byte).
    protocol._head_timer = None

    def arm(self: Any) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(timeout_seconds, expire, self)

    def disarm(self: Any) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def expire(self: Any) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_open:
            log.warning("refused a request whose head took over %g s (408)", timeout_seconds)
            self.transport.write(timed_out)
        self.transport.close()

    def bounded_connection_made(self: Any, transport: Any) -> None:
        connection_made(self, transport)
        arm(self)

    def bounded_connection_lost(self: Any, exc: Exception | None) -> None:
        disarm(self)
        connection_lost(self, exc)

    def bounded_data_received(self: Any, data: bytes) -> None:
        counted = self._head_open
        data_received(self, data)
        if not (counted and self._head_open):
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._head_open = False
            log.warning("refused a request whose head exceeds %d bytes (431)", MAX_HEAD_BYTES)
            self.transport.write(too_large)
            self.transport.close()

    def bounded_on_message_begin(self: Any) -> None:
        self._head_open = True
        self._head_bytes = 0
        arm(self)
        on_message_begin(self)

    def bounded_on_headers_complete(self: Any) -> None:
        self._head_open = False
        disarm(self)
        on_headers_complete(self)

    protocol.data_received = bounded_data_received
    protocol.connection_made = bounded_connection_made
    protocol.connection_lost = bounded_connection_lost
    protocol.on_message_begin = bounded_on_message_begin
    protocol.on_headers_complete = bounded_on_headers_complete
