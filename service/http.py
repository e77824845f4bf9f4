"""HTTP JSON routes, mounted on the BentoML service.

The routes are a plain Starlette app rather than ``@bentoml.api`` methods because every refused
request must get our error body (instance index, field, reason) and still be logged and counted:
a ``@bentoml.api`` input model is parsed by BentoML before our code runs, and BentoML 1.4 answers
its own 4xx errors with a different shape. BentoML still wraps these routes in its middleware
(request metrics, tracing, timeouts) and serves ``/livez``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from service import tracing
from service.balance import ConnectionBalancer
from service.inference import Predictor, RequestContext
from service.validation import Reason, RequestRejected

REQUEST_ID_HEADER = "X-Request-ID"
_HTTP_SPAN = {"http.request.method": "POST", "http.route": "/predict"}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> RequestRejected:
    return RequestRejected.request_level(
        Reason.BODY_TOO_LARGE,
        f"the body has {'at least ' if size > limit else ''}{size} bytes; at most {limit} are "
        "accepted: send fewer instances per request",
        status=413,
    )


def decode_json(body: bytes) -> object:
    if not body.strip():
        raise RequestRejected.request_level(
            Reason.INVALID_JSON, 'the body is empty; send {"instances": [...]}'
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected.request_level(
            Reason.INVALID_JSON, f"the body is not valid JSON: {exc}"
        ) from exc


def error_response(ctx: RequestContext, exc: RequestRejected) -> JSONResponse:
    return JSONResponse(
        {**exc.to_dict(), "request_id": ctx.request_id},
        status_code=exc.status,
        headers={REQUEST_ID_HEADER: ctx.request_id},
    )


def internal_error_response(ctx: RequestContext) -> JSONResponse:
    return JSONResponse(
        {
            "error": "internal_error",
            "message": "the model failed to answer; the server log has the details",
            "request_id": ctx.request_id,
        },
        status_code=500,
        headers={REQUEST_ID_HEADER: ctx.request_id},
    )


def build_http_app(
    get_predictor: Callable[[], Predictor],
    max_body_bytes: int,
    extra_routes: Sequence[BaseRoute] = (),
) -> MountedRoutes:
    """The routes; ``get_predictor`` returns the worker's :class:`Predictor` at request time.

    ``extra_routes`` are other APIs served on the same port (the Open Inference Protocol's v2).
    """

    async def predict(request: Request) -> Response:
        with tracing.server_span("POST /predict", request.headers, _HTTP_SPAN) as span:
            response = await _predict(request)
            tracing.end_status(span, response.status_code)
            return response

    async def _predict(request: Request) -> Response:
        predictor = get_predictor()
        ctx = RequestContext.start("http", "/predict", request.headers.get(REQUEST_ID_HEADER))
        body = b""
        try:
            with tracing.span("validate"):
                body = await read_body(request, max_body_bytes)
                instances = predictor.validator.validate_payload(decode_json(body))
        except RequestRejected as exc:
            predictor.reject(ctx, exc, body)
            return error_response(ctx, exc)
        try:
            predictions = await predictor.predict(ctx, instances)
        except RequestRejected as exc:  # e.g. 503 while shutting down; already recorded
            return error_response(ctx, exc)
        except Exception:
            return internal_error_response(ctx)
        return JSONResponse(
            predictor.render(ctx, predictions), headers={REQUEST_ID_HEADER: ctx.request_id}
        )

    async def model(request: Request) -> Response:
        return JSONResponse(get_predictor().describe())

    return MountedRoutes(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/model", model, methods=["GET"]),
            *extra_routes,
        ]
    )


class MountedRoutes(Starlette):
    """Routes mounted inside BentoML's own Starlette app, without a middleware stack of their own.

    A plain Starlette app wraps every request in its error and exception middleware a second
    time; BentoML's outer app already does both. It stays a Starlette subclass because BentoML's
    mount only delegates route matching (and lifespan) to Starlette apps. The one middleware is
    the connection balancer (service/balance.py), idle until the worker starts it.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        super().__init__(routes=routes)
        self.balancer = ConnectionBalancer(self.router)

    def build_middleware_stack(self) -> ASGIApp:
        return self.balancer
