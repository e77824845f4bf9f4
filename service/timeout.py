"""BentoML's request timeout (``REQUEST_TIMEOUT_SECONDS``), answered in the service's error shape.

BentoML's ``TimeoutMiddleware`` answers a request it stops waiting for with
``{"error": "Not able to process the request in 30 seconds"}``: no message, reason or request
id, though the prediction endpoint records that request (prediction log, metrics, access log)
as a 504 ``timeout`` under its request id, which the client then cannot find (unless it chose
the id itself). :class:`TimeoutMiddleware` waits and cancels exactly as BentoML's does; a
prediction endpoint leaves in the ASGI scope (``TIMEOUT_ANSWER``) its request context and how it
writes an error body, and the 504 is then that endpoint's error body (``/predict``'s shape, or
the v2 one) with the request id, in the body and ``X-Request-ID``. Other routes, and a request
cancelled before its endpoint began, keep BentoML's answer.

BentoML places its CORS middleware inside this one, so the 504 does not pass through it: with CORS
on (``service/cors.py``), the answer goes through a CORS middleware of the same options, else a
browser app could read neither the 504 nor its request id.

:func:`install` makes BentoML use it: BentoML's app imports the class from its module when it
builds its middleware stack (``bentoml/_internal/server/base_app.py``), so replacing the module's
attribute before the worker builds its app is enough.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import cors
from service.asgi import send_response
from service.inference import RequestContext, timed_out
from service.validation import RequestRejected

# The scope key of (context, error body writer) a prediction endpoint sets when it starts.
TIMEOUT_ANSWER = "service.timeout_answer"
ErrorBody = Callable[[RequestContext, RequestRejected], bytes]

# BentoML's own class, kept before install() replaces it in its module.
BentoMLTimeoutMiddleware = traffic.TimeoutMiddleware


class TimeoutMiddleware(BentoMLTimeoutMiddleware):
    """BentoML's request timeout; the 504 of a prediction endpoint in the service's shape."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        super().__init__(app, timeout)  # type: ignore[arg-type]
        # Built with the worker's app, once BentoML's configuration is loaded.
        options = cors.answer_options()
        self._write_answer: ASGIApp = (
            self._answer if options is None else CORSMiddleware(self._answer, **options)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # type: ignore[arg-type]
            return
        # As BentoML's: the app runs as a task; the first message sent, or the timer, ends the wait.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def sent(message: Message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, sent))  # type: ignore[arg-type]
        try:
            await waiter
        except TimeoutError:
            if task.cancel():
                await self._write_answer(scope, receive, send)
        else:
            await task

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        found: tuple[RequestContext, ErrorBody] | None = scope.get(TIMEOUT_ANSWER)
        if found is None:
            response = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"},
                status_code=504,
            )
            await response(scope, receive, send)
            return
        ctx, error_body = found
        await send_response(send, 504, error_body(ctx, timed_out()), ctx.request_id)


def install() -> None:
    """Make BentoML use :class:`TimeoutMiddleware` (call before the worker builds its app, i.e.
    at import of the service module)."""
    traffic.TimeoutMiddleware = TimeoutMiddleware  # type: ignore[misc]
