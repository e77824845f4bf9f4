"""The 404s and 405s of BentoML's own routes, answered in the service's JSON like the service's.

The service's routes answer a path no route serves and a method a route does not take with a JSON
404 or 405 (``service/asgi.py``). BentoML's routes, before and after them in BentoML's app, raised
Starlette's ``HTTPException`` instead, which Starlette answers in plain text (``Method Not
Allowed``, ``Not Found``), without a request id: a method the probes, ``/metrics``,
``/schema.json`` or the index page ``/`` do not take (``POST /livez``), a file of BentoML's UI
(``/static_content/...``) that does not exist or a method other than GET on one, and
``/metrics`` when metrics are off. :func:`install` gives BentoML's app a handler of that exception
answering as :func:`service.asgi.route_refusal` does: the ``RouteError`` body, ``X-Request-ID``,
and ``Allow`` on a 405. What those routes answer otherwise (probes, Prometheus's scrape, the UI)
is unchanged.

The handler is in the app's exception middleware, inside BentoML's CORS middleware: an allowed
origin reads these answers too. BentoML builds its app when the worker starts (and for
``to_asgi()``); its factory is wrapped, as ``service/timeout.py`` replaces BentoML's timeout
middleware, at import of the service module.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.asgi import method_not_allowed_body, route_refusal, shown_path

# What Starlette's static files take; their 405 has no Allow header.
_STATIC_METHODS = "GET, HEAD"
_installed = False


async def answer_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's ``HTTPException`` raised by a route of BentoML's (or its router), in JSON."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    what = f"{request.method} {shown_path(request)}"
    if status == 405:
        allow = (exc.headers or {}).get("Allow") or _STATIC_METHODS
        # Sorted as the service's own 405s: Starlette joins a set, in no set order.
        allowed = ", ".join(sorted(method.strip() for method in allow.split(",")))
        body = method_not_allowed_body(f"{what}: this route takes {allowed}")
        return route_refusal(request, body, 405, {"allow": allowed})
    if status == 404:
        message = f"{what}: no such route; GET /docs.json lists the routes"
        return route_refusal(request, {"error": "not_found", "message": message}, 404)
    if status < 400:  # 304 and the like carry no body (Starlette's own handling)
        return Response(status_code=status, headers=exc.headers)
    # None of BentoML's routes raises another today; the service's error shape all the same.
    error = "invalid_request" if status < 500 else "internal_error"
    return route_refusal(request, {"error": error, "message": f"{what}: {exc.detail}"}, status)


def install() -> None:
    """Answer the ``HTTPException`` of every app BentoML builds for a service in JSON (call before
    the worker builds its app, i.e. at import of the service module)."""
    global _installed
    if _installed:
        return
    from _bentoml_impl.server.app import ServiceAppFactory

    build = ServiceAppFactory.__call__

    def build_answering_in_json(self: Any) -> Starlette:
        app = build(self)
        app.add_exception_handler(HTTPException, answer_http_exception)
        return app

    ServiceAppFactory.__call__ = build_answering_in_json  # type: ignore[method-assign]
    _installed = True
