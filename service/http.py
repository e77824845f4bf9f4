"""HTTP JSON routes, mounted on the BentoML service.

The routes are plain ASGI and Starlette routes rather than ``@bentoml.api`` methods because every
refused request must get our error body (instance index, field, reason) and still be logged and
counted: a ``@bentoml.api`` input model is parsed by BentoML before our code runs, and BentoML 1.4
answers its own 4xx errors with a different shape. BentoML still wraps these routes in its
middleware (request metrics, timeouts, and tracing, except for the prediction endpoints, which
open their own server span) and serves ``/livez``, ``/readyz`` and ``/metrics``.

Reading the body, decoding it, writing the answer and the JSON 405s are shared with the v2 REST
routes (``service/oip/rest.py``): they live in ``service/asgi.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service import tracing
from service.asgi import (
    JSONResponse,
    UnknownPath,
    decode_json,
    read_body,
    refuse_other_methods,
    request_headers,
    seen_body,
    send_response,
)
from service.balance import ConnectionBalancer
from service.inference import MODEL_FAILED, Predictor, RequestContext, RequestFailed
from service.timeout import TIMEOUT_ANSWER
from service.validation import RequestRejected

# The endpoint label of /predict's requests (metrics, logs).
PREDICT_ENDPOINT = "/predict"
_PREDICT_SPAN_ATTRIBUTES = {"http.request.method": "POST", "http.route": PREDICT_ENDPOINT}


def error_body(ctx: RequestContext, exc: RequestRejected) -> bytes:
    return orjson.dumps({**exc.to_dict(), "request_id": ctx.request_id})


def internal_error_body(ctx: RequestContext, message: str = MODEL_FAILED) -> bytes:
    return orjson.dumps(
        {
            "error": "internal_error",
            "message": message,
            "request_id": ctx.request_id,
        }
    )


class PredictEndpoint:
    """``POST /predict`` as a bare ASGI app.

    Starlette's request and response objects and its per-route exception wrapper cost more than
    validating and answering a single instance (profiled); this endpoint reads the body and
    writes the answer itself. BentoML's middleware still wraps it (errors, timeout, metrics).
    """

    def __init__(self, get_predictor: Callable[[], Predictor], max_body_bytes: int) -> None:
        self._get_predictor = get_predictor
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope)
        with tracing.server_span("POST /predict", headers, _PREDICT_SPAN_ATTRIBUTES) as span:
            predictor = self._get_predictor()
            ctx = RequestContext.start("http", PREDICT_ENDPOINT, headers.get("x-request-id"))
            scope[TIMEOUT_ANSWER] = (ctx, error_body)  # BentoML's timeout answers in our shape
            try:
                predictions, _ = await predictor.answer(
                    ctx,
                    lambda body: (predictor.validator.validate_payload(decode_json(body)), None),
                    seen_body,
                    read=lambda: read_body(receive, headers, self._max_body_bytes),
                )
            except RequestRejected as exc:
                status, body = exc.status, error_body(ctx, exc)
            except RequestFailed as exc:
                status, body = 500, internal_error_body(ctx, exc.message)
            else:
                status, body = 200, orjson.dumps(predictor.render(ctx, predictions))
            tracing.end_status(span, status)
        await send_response(send, status, body, ctx.request_id)


def build_http_app(
    get_predictor: Callable[[], Predictor],
    max_body_bytes: int,
    extra_routes: Sequence[BaseRoute] = (),
) -> MountedRoutes:
    """The routes; ``get_predictor`` returns the worker's :class:`Predictor` at request time.

    ``extra_routes`` are other APIs served on the same port (the Open Inference Protocol's v2).
    Every route's other methods are answered with a JSON 405 (the paths of ``extra_routes`` that
    already refuse them their own way are left as they are), and a path no route serves with a
    JSON 404 (:class:`UnknownPath`).
    """

    async def model(request: Request) -> Response:
        return JSONResponse(get_predictor().describe())

    routes = refuse_other_methods(
        [
            Route("/predict", PredictEndpoint(get_predictor, max_body_bytes), methods=["POST"]),
            Route("/model", model, methods=["GET"]),
            *extra_routes,
        ]
    )
    return MountedRoutes(routes=[*routes, UnknownPath(routes)])


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
