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
"""

from __future__ import annotations

from typing import Any

from bentoml._internal.configuration.containers import BentoMLContainer

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
