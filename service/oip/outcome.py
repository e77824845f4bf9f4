"""How a gRPC call ended: the status its client sees, and who cancelled it.

A call cancelled under its handler raises the same ``CancelledError`` whoever cancelled it: the
client itself, its passed deadline, or the server at the end of its shutdown grace. Two places
must tell these apart the same way: the call's gRPC status, for the call metrics and the span
(:func:`final_code`), and the request's record in the log and the request metrics
(:func:`cancellation`, which the servicer hands to its ``RequestContext``).

One more cancel cannot be told apart, and counts as the client's: gRPC core's, when a connection's
GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS ends under a call (its client sees UNAVAILABLE). It comes at
a moment this process does not know (the age is jittered inside gRPC core, the connection's opening
is not reported), and the connection is closed by then just as when a client closes its channel or
cancels the last call of a connection that had its GOAWAY (docs/grpc.md, "Connections").
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from service.inference import timed_out
from service.validation import CLIENT_CLOSED, Reason, RequestRejected


class ShutdownCancel:
    """When the server itself cancels the calls still running at shutdown.

    ``grpc.aio.Server.stop(grace)`` cancels every call left once ``grace`` has passed, and the
    client sees UNAVAILABLE ("Cancelling all calls"); the handler gets the same CancelledError as
    for the client's own cancel, and nothing in the call's context tells them apart.
    """

    def __init__(self) -> None:
        self._at: float | None = None

    def schedule(self, grace: float) -> None:
        """Called just before ``stop(grace)``: its cancel comes ``grace`` from now, or later."""
        self._at = time.monotonic() + grace

    def due(self) -> bool:
        """Whether the server's cancel may have come: a call cancelled from now on is its."""
        return self._at is not None and time.monotonic() >= self._at


def final_code(
    context: grpc.aio.ServicerContext,
    error: BaseException | None,
    shutdown: ShutdownCancel | None = None,
) -> grpc.StatusCode:
    """The status the client sees for a call that ended with ``error`` (None: returned)."""
    if isinstance(error, asyncio.CancelledError):
        # The call was cancelled under the handler: UNAVAILABLE when the server cancelled it at
        # the end of its shutdown grace, DEADLINE_EXCEEDED when the client's deadline passed,
        # else the client's own CANCELLED. context.code() knows none of them.
        if shutdown is not None and shutdown.due():
            return grpc.StatusCode.UNAVAILABLE
        passed = deadline_passed(context)
        return grpc.StatusCode.DEADLINE_EXCEEDED if passed else grpc.StatusCode.CANCELLED
    # An abort() sets the code before raising; a handler may also set_code() and return.
    code = context.code() or (grpc.StatusCode.UNKNOWN if error else grpc.StatusCode.OK)
    return _status_code(code)


def cancellation(
    context: grpc.aio.ServicerContext, shutdown: ShutdownCancel | None
) -> RequestRejected:
    """How a call cancelled under its handler is recorded: a 503 when the server cancelled it at
    the end of its shutdown grace (the client sees UNAVAILABLE), a 504 timeout when the client's
    deadline passed, or a 499 when the client cancelled its call itself (nginx's "client closed
    request"). ``final_code`` tells the same causes apart for the call's gRPC status."""
    if shutdown is not None and shutdown.due():
        return RequestRejected.request_level(
            Reason.UNAVAILABLE,
            "the worker shut down before the answer (GRPC_SHUTDOWN_GRACE_SECONDS passed)",
            status=503,
        )
    if deadline_passed(context):
        return timed_out()
    return RequestRejected.request_level(
        Reason.CANCELLED, "the client cancelled the call", status=CLIENT_CLOSED
    )


# gRPC's deadline timer cancels a call a little before ``time_remaining()`` reaches 0 (6 ms
# measured here, in about one call in four): without a margin such a call was recorded as its
# client's cancel (499, outside the SLO) instead of the deadline it missed (504). A client that
# cancels its call itself this close to its deadline is counted as missing it.
DEADLINE_MARGIN_SECONDS = 0.05


def deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's deadline has passed (no deadline: it has not)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= DEADLINE_MARGIN_SECONDS


def _status_code(code: Any) -> grpc.StatusCode:
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
