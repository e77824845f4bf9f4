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
_BODY = orjson.dumps({"error": "invalid_request", "message": _MESSAGE})
_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)
_installed = False


def install() -> None:
    """Bound the head of every request that uvicorn's httptools protocol reads (once)."""
    global _installed
    if _installed:
        return
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # without httptools, uvicorn runs h11, which bounds heads itself
        return
    _bound(HttpToolsProtocol)
    _installed = True


def _bound(protocol: Any) -> None:
    data_received = protocol.data_received
    on_message_begin = protocol.on_message_begin
    on_headers_complete = protocol.on_headers_complete
    # Whether a head is being read, and its bytes received in the pieces after the one it
    # began in: that one may also hold the end of the previous request, which must not count.
    # The head is thus bounded to MAX_HEAD_BYTES plus one piece (at most 256 KB with uvloop).
    protocol._head_open = False
    protocol._head_bytes = 0

    def bounded_data_received(self: Any, data: bytes) -> None:
        counted = self._head_open
        data_received(self, data)
        if not (counted and self._head_open):
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._head_open = False
            log.warning("refused a request whose head exceeds %d bytes (431)", MAX_HEAD_BYTES)
            self.transport.write(_RESPONSE)
            self.transport.close()

    def bounded_on_message_begin(self: Any) -> None:
        self._head_open = True
        self._head_bytes = 0
        on_message_begin(self)

    def bounded_on_headers_complete(self: Any) -> None:
        self._head_open = False
        on_headers_complete(self)

    protocol.data_received = bounded_data_received
    protocol.on_message_begin = bounded_on_message_begin
    protocol.on_headers_complete = bounded_on_headers_complete
