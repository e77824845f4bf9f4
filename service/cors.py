"""Cross-origin requests from browser apps (CORS), answered by BentoML's own CORS middleware.

BentoML's ``http.cors`` configuration wraps the whole app, the mounted routes included: a
preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered by the
middleware before any route, so it is neither validated, logged nor counted as a prediction, and
every answer of a route (errors, 404s and 405s included) gets ``Access-Control-Allow-Origin``.

:func:`bentoml_http_config` is the service decorator's ``http`` configuration for
``CORS_ALLOW_ORIGINS``, with the methods and headers this API needs (BentoML's defaults allow only
``GET``, so a browser's ``POST /predict`` fails its preflight, and expose no header, so
``X-Request-ID`` is unreadable). BentoML's own configuration (``BENTOML_CONFIG_OPTIONS``,
``BENTOML_CONFIG``) still applies, and overrides it.
"""

from __future__ import annotations

from typing import Any

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
