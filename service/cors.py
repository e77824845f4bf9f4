"""Cross-origin requests from browser apps (CORS), answered by BentoML's own CORS middleware.

BentoML's ``http.cors`` configuration wraps the whole app, the mounted routes included: a
preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered by the
middleware before any route, so it is neither validated, logged nor counted as a prediction, and
every answer of a route (errors, 404s and 405s included) gets ``Access-Control-Allow-Origin``. Two
things are added here:

- :func:`bentoml_http_config`: the service decorator's ``http`` configuration for
  ``CORS_ALLOW_ORIGINS``, with the methods and headers this API needs (BentoML's defaults allow
  only ``GET``, so a browser's ``POST /predict`` fails its preflight, and expose no header, so
  ``X-Request-ID`` is unreadable). BentoML's own configuration (``BENTOML_CONFIG_OPTIONS``,
  ``BENTOML_CONFIG``) still applies, and overrides it.
- :func:`answer_options`: the same options for the 504 of the request timeout
  (``service/timeout.py``), whose middleware is outside BentoML's CORS middleware: without them a
  browser could read neither that 504 nor its request id.
- :func:`refusal_headers`: the headers that middleware gives an answer, for the 431, 408 and 400
  written before the app (``service/header_limit.py``), by the same middleware's code.
"""

from __future__ import annotations

import functools
from typing import Any

from bentoml._internal.configuration.containers import BentoMLContainer
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

# Every route of the service takes GET or POST.
ALLOW_METHODS = ("GET", "POST")
# The request headers the service reads (Content-Type is always allowed): the client's request id,
# W3C trace context, and the v2 binary extension's JSON header length.
ALLOW_HEADERS = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "inference-header-content-length",
)
# Response headers a browser app may read besides the CORS-safelisted ones: the request id (in
# every answer, errors included) and the 503's Retry-After.
EXPOSE_HEADERS = ("x-request-id", "retry-after")
# How long a browser may reuse a preflight's answer (Starlette's default; Chromium caps it at 2 h).
MAX_AGE_SECONDS = 600


def bentoml_http_config(origins: tuple[str, ...]) -> dict[str, Any]:
    """The ``http`` configuration of the service decorator for ``CORS_ALLOW_ORIGINS``: BentoML's
    CORS middleware for ``origins``; nothing when there are none, so that BentoML's own
    configuration, off by default, decides."""
    if not origins:
        return {}
    return {
        "cors": {
            "enabled": True,
            "access_control_allow_origins": list(origins),
            "access_control_allow_methods": list(ALLOW_METHODS),
            "access_control_allow_headers": list(ALLOW_HEADERS),
            "access_control_expose_headers": list(EXPOSE_HEADERS),
            "access_control_max_age": MAX_AGE_SECONDS,
        }
    }


def answer_options() -> dict[str, Any] | None:
    """The options of BentoML's CORS middleware as the worker runs it (from CORS_ALLOW_ORIGINS or
    BentoML's configuration), for Starlette's ``CORSMiddleware``; None when CORS is off."""
    if not BentoMLContainer.http.cors.enabled.get():
        return None
    return dict(BentoMLContainer.access_control_options.get())


@functools.cache
def _middleware() -> CORSMiddleware | None:
    # Built at the first refusal, once the worker has loaded BentoML's configuration.
    options = answer_options()
    return None if options is None else CORSMiddleware(_no_app, **options)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise NotImplementedError  # only the middleware's `send` is used


async def _sent(message: Message) -> None:
    pass


def refusal_headers(origin: bytes | None) -> list[tuple[bytes, bytes]]:
    """The CORS headers BentoML's middleware adds to an answer of the app for a request from
    ``origin`` (none when CORS is off or the request has no ``Origin``), for an answer written
    outside the app."""
    middleware = _middleware()
    if middleware is None or origin is None:
        return []
    message: Message = {"type": "http.response.start", "headers": []}
    # The middleware's own code for the app's answers; it awaits only `_sent`, which returns at
    # once, so that the coroutine ends at its first step.
    step = middleware.send(message, _sent, Headers(raw=[(b"origin", origin)]))
    try:
        step.send(None)
    except StopIteration:
        return list(message["headers"])
    step.close()
    raise RuntimeError("CORSMiddleware.send suspended")
