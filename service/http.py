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

import asyncio
import logging
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
from service.inference import (
    MODEL_FAILED,
    SERVER_FAILED,
    Predictor,
    RequestContext,
    server_failure,
)
from service.timeout import TIMEOUT_ANSWER
from service.validation import RequestRejected

log = logging.getLogger(__name__)

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
            status, body, request_id = await self._predict(scope, headers, receive)
            tracing.end_status(span, status)
        await send_response(send, status, body, request_id)

    async def _predict(
        self, scope: Scope, headers: dict[str, str], receive: Receive
    ) -> tuple[int, bytes, str]:
        predictor = self._get_predictor()
        ctx = RequestContext.start("http", PREDICT_ENDPOINT, headers.get("x-request-id"))
        scope[TIMEOUT_ANSWER] = (ctx, error_body)  # BentoML's timeout answers in our shape
        body = b""
        try:
            predictor.check_room()
            # Outside `validate`, as on the v2 and gRPC routes: a slow upload is the client's
            # time, not validation's.
            body = await read_body(
                receive,
                headers.get("content-length"),
                self._max_body_bytes,
                headers.get("content-encoding"),
            )
            with tracing.span("validate"):
                instances = predictor.validator.validate_payload(decode_json(body))
        except RequestRejected as exc:
            predictor.reject(ctx, exc, *seen_body(exc, body))
            return exc.status, error_body(ctx, exc), ctx.request_id
        except asyncio.CancelledError:
            # BentoML's request timeout, while a slow client was still sending the body:
            # answered 504 by its middleware (service/timeout.py), recorded here like a timeout
            # in the model queue.
            predictor.reject(ctx, ctx.cancellation())
            raise
        except Exception:
            # A defect of ours: answered and recorded now, not left to BentoML's timeout
            # middleware (REQUEST_TIMEOUT_SECONDS, then a bare text 500 without request id or
            # log row).
            log.exception("request %s failed before the model call", ctx.request_id)
            predictor.reject(ctx, server_failure(), body)
            return 500, internal_error_body(ctx, SERVER_FAILED), ctx.request_id
        try:
            predictions = await predictor.predict(ctx, instances)
        except RequestRejected as exc:  # e.g. 503 while shutting down; already recorded
            return exc.status, error_body(ctx, exc), ctx.request_id
        except Exception:
            return 500, internal_error_body(ctx), ctx.request_id
        return 200, orjson.dumps(predictor.render(ctx, predictions)), ctx.request_id


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
