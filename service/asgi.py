"""The ASGI plumbing both HTTP APIs share: ``POST /predict`` (service/http.py) and the Open
Inference Protocol's v2 REST routes (service/oip/rest.py), so that both refuse a request the same
way.

Reading the body (413 as soon as it is too large, 415 when compressed, 499 when the client leaves),
decoding it as JSON, writing an answer straight to the ASGI server, answering the methods a
route does not take with a JSON 405 and a path no route serves with a JSON 404. The OpenAPI and
drift routes use :class:`JSONResponse`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Receive, Scope, Send

from service.inference import BODY_EXCERPT_BYTES, request_id_or_new
from service.validation import (
    CLIENT_CLOSED,
    MAX_NAME_ECHO,
    REQUEST_FIELD,
    FieldError,
    Reason,
    RequestRejected,
)

# The request headers the prediction endpoints read; names as ASGI gives them (lower case).
_READ_HEADERS = frozenset(
    (
        b"content-length",
        b"content-encoding",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"inference-header-content-length",
    )
)
Header = tuple[bytes, bytes]
JSON_CONTENT: Header = (b"content-type", b"application/json")
# On every 503 (model queue full, or shutting down): when a client or load balancer may retry.
RETRY_AFTER: Header = (b"retry-after", b"1")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def request_headers(scope: Scope) -> dict[str, str]:
    """The few request headers the prediction endpoints use (Starlette's ``Headers`` decodes and
    scans every header on each lookup: a tenth of a single-instance request, profiled)."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in _READ_HEADERS
    }


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The body (``headers`` as :func:`request_headers` gives them: lower-case names), refused
    with 413 as soon as it is known to exceed ``limit`` bytes, and with 415 when it is compressed
    (tritonclient's ``request_compression_algorithm``): read as it came, it was refused as
    invalid JSON or a wrong header length, not for its encoding.

    A client that closes its connection before the whole body is refused with 499
    (:class:`ClientClosed`)."""
    content_length = headers.get("content-length")
    content_encoding = headers.get("content-encoding")
    if content_encoding is not None and content_encoding.strip().lower() not in ("", "identity"):
        raise RequestRejected.request_level(
            Reason.INVALID_BODY,
            f"Content-Encoding {content_encoding[:MAX_NAME_ECHO]!r} is not supported: "
            "send the body uncompressed",
            status=415,
        )
    # isascii(): isdigit() alone accepts digits such as "²" that int() refuses.
    declared = content_length is not None and content_length.isascii() and content_length.isdigit()
    if declared and int(content_length) > limit:
        raise _too_large(int(content_length), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _client_closed(size, b"".join(chunks)[:BODY_EXCERPT_BYTES])
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, b"".join([*chunks, chunk])[:BODY_EXCERPT_BYTES])
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


class BodyTooLarge(RequestRejected):
    """The 413 of :func:`read_body`, with what was seen of the body for the log: the size
    declared or read so far, and the first bytes read (none when refused on Content-Length)."""

    def __init__(self, errors: list[FieldError], size: int, head: bytes) -> None:
        super().__init__(errors, status=413)
        self.size = size
        self.head = head


class ClientClosed(RequestRejected):
    """The client closed its connection before sending the whole body: recorded as a 499 (nginx's
    "client closed request"), with the size read and the first bytes, like :class:`BodyTooLarge`.

    Answered too, though nobody reads it (the server drops what is sent on a closed connection):
    BentoML's timeout middleware waits for an answer, not for the endpoint to return, so an
    endpoint that raised instead held the request in flight
    (``bentoml_service_request_in_progress``) until REQUEST_TIMEOUT_SECONDS, and it was neither
    logged nor counted.
    """

    def __init__(self, errors: list[FieldError], size: int, head: bytes) -> None:
        super().__init__(errors, status=CLIENT_CLOSED)
        self.size = size
        self.head = head


def _client_closed(size: int, head: bytes) -> ClientClosed:
    message = f"the client closed the connection after {size} bytes of the body"
    error = FieldError(None, REQUEST_FIELD, Reason.CANCELLED, message, REQUEST_FIELD)
    return ClientClosed([error], size, head)


def _too_large(size: int, limit: int, head: bytes = b"") -> BodyTooLarge:
    message = (
        f"the body has {'at least ' if size > limit else ''}{size} bytes; at most {limit} are "
        "accepted: send fewer instances per request"
    )
    error = FieldError(None, REQUEST_FIELD, Reason.BODY_TOO_LARGE, message, REQUEST_FIELD)
    return BodyTooLarge([error], size, head)


def seen_body(exc: RequestRejected, body: bytes) -> tuple[bytes, int | None]:
    """The body and size to record for a refusal: the read body, or what :func:`read_body`
    saw of one it refused (``body`` is still empty then)."""
    if isinstance(exc, BodyTooLarge | ClientClosed):
        return exc.head, exc.size
    return body, None


def decode_json(body: bytes, expected: str = '{"instances": [...]}') -> object:
    """The decoded body; ``expected`` is what an empty body is told to send."""
    if not body.strip():
        raise RequestRejected.request_level(
            Reason.INVALID_JSON, f"the body is empty; send {expected}"
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected.request_level(
            Reason.INVALID_JSON, f"the body is not valid JSON: {_syntax_error(body, exc)}"
        ) from exc


# What Python, JavaScript and numpy write for a non-finite float, which JSON has no literal for.
_NON_FINITE = re.compile(r"-?(?:nan|inf(?:inity)?)\b", re.IGNORECASE)
# The member name right before a value: `"name": ` (its value is what the parser stopped at).
_NAME_BEFORE = re.compile(r'"((?:[^"\\]|\\.){1,200})"\s*:\s*-?$')


def _syntax_error(body: bytes, exc: orjson.JSONDecodeError) -> str:
    """orjson's message, told in the client's terms where it is obscure: bytes that are not
    UTF-8 (orjson speaks of surrogates, at char 0, wherever they are), and ``NaN``/``Infinity``
    ("unexpected character", "no digit after sign"); with the member whose value it stopped at."""
    if not exc.doc:  # orjson could not decode the body as UTF-8
        try:
            body.decode()
        except UnicodeDecodeError as bad:
            return (
                f"it is not UTF-8: byte 0x{body[bad.start]:02x} at offset {bad.start} "
                f"({bad.reason}); send JSON encoded in UTF-8"
            )
    doc, pos = exc.doc, exc.pos
    start = pos - 1 if doc[pos - 1 : pos] == "-" else pos  # orjson stops after a sign
    where = f"line {exc.lineno} column {exc.colno - (pos - start)} (char {start})"
    named = _NAME_BEFORE.search(doc, max(0, start - 256), pos)
    member = f"the value of {named.group(1)[:MAX_NAME_ECHO]!r}: " if named else ""
    literal = _NON_FINITE.match(doc, start)
    if literal:
        return (
            f"{member}{literal.group()} is not a JSON value (JSON has no NaN or Infinity); "
            f"send a finite number: {where}"
        )
    return f"{member}{exc.msg}: {where}"


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    request_id: str | None,
    headers: Sequence[Header] = (JSON_CONTENT,),
) -> None:
    """An answer written straight to the ASGI server, with ``X-Request-ID`` when known, and
    ``Retry-After`` on a 503."""
    raw = [*headers, (b"content-length", b"%d" % len(body))]
    if status == 503:
        raw.append(RETRY_AFTER)
    if request_id is not None:
        raw.append((b"x-request-id", request_id.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# The name of those 405 routes: they are no operation of the API.
METHOD_NOT_ALLOWED = "method_not_allowed"


# How much of a request's path an error message echoes (a path may be as long as the head).
_MAX_PATH_ECHO = 200


def shown_path(request: Request) -> str:
    """The request's path, shortened for an error message."""
    path = request.url.path
    return path if len(path) <= _MAX_PATH_ECHO else path[: _MAX_PATH_ECHO - 3] + "..."


def route_refusal(
    request: Request, body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A refusal answered before any prediction endpoint (a 404 or 405 of the router, an unknown
    model's metadata): ``body`` with a request id, in the body and ``X-Request-ID`` as in the
    service's other errors, the client's when usable. Neither logged nor counted as a
    request (BentoML's request metrics aside): the id lets a client tie the answer to its call."""
    request_id = request_id_or_new(request.headers.get("x-request-id"))
    return JSONResponse(
        {**body, "request_id": request_id},
        status_code=status,
        headers={**(headers or {}), "x-request-id": request_id},
    )


def method_not_allowed_body(message: str) -> dict[str, Any]:
    """The 405 body of ``/predict`` and ``/model`` (the v2 routes give their own): ``error`` holds
    a code, as in other errors."""
    return {"error": "method_not_allowed", "message": message}


def refuse_other_methods(
    routes: Sequence[BaseRoute],
    body_of: Callable[[str], dict[str, Any]] = method_not_allowed_body,
) -> list[BaseRoute]:
    """``routes``, each path followed by a route answering the methods none of them takes with a
    JSON 405 naming the ones it does (``body_of`` the message) and ``Allow``.

    Starlette answers those with a plain-text "Method Not Allowed", which a client that parses
    every answer as JSON (tritonclient among them) reports as a decoding error rather than as
    the mistake it made. Placed right after the path's last route: a later catch-all route
    (``/v2/{path}``) would otherwise take them as unknown paths.
    """
    taken: dict[str, set[str]] = {}
    last: dict[str, int] = {}
    refused: set[str] = set()  # paths with a route of any method already: refused their own way
    for index, route in enumerate(routes):
        if isinstance(route, Route) and route.methods:
            taken.setdefault(route.path, set()).update(route.methods)
            last[route.path] = index
        elif isinstance(route, Route):
            refused.add(route.path)
    refusals = {
        last[path]: _method_not_allowed(path, methods, body_of)
        for path, methods in taken.items()
        if path not in refused
    }
    result: list[BaseRoute] = []
    for index, route in enumerate(routes):
        result.append(route)
        if index in refusals:
            result.append(refusals[index])
    return result


def _method_not_allowed(
    path: str, methods: set[str], body_of: Callable[[str], dict[str, Any]]
) -> Route:
    allowed = ", ".join(sorted(methods))

    async def refuse(request: Request) -> Response:
        message = f"{request.method} {shown_path(request)}: this route takes {allowed}"
        return route_refusal(request, body_of(message), 405, {"allow": allowed})

    return any_method(Route(path, refuse, name=METHOD_NOT_ALLOWED))


def any_method(route: Route) -> Route:
    """``route``, matching every method, TRACE, CONNECT and WebDAV's too: a method no route of
    the path takes got Starlette's plain-text 405 otherwise. Routes
    before it on the same path still take their own methods (Starlette's router answers with
    the first route that matches both path and method)."""
    # Starlette gives a function endpoint ["GET"] when methods is None; None matches any.
    route.methods = None
    return route


# The routes BentoML serves before the mounted app (service/service.py does not change them).
_BENTOML_ROUTES = frozenset(("/livez", "/readyz", "/healthz", "/metrics", "/schema.json"))


class UnknownPath(BaseRoute):
    """The last route of the mounted app: a path that no route of the service serves is answered
    with a JSON 404 (``error``, ``message``, ``request_id``, and ``X-Request-ID``) instead of
    Starlette's plain-text "Not Found", which a client parsing every answer as JSON reports as a
    decoding error rather than as a mistyped path. A trailing slash is told where the route is:
    Starlette redirected it (307 to a URL built from the Host header, wrong behind a proxy that
    rewrites it, and a POST's body sent twice).

    It matches every path only partially, as a route taking none of the request's methods does:
    BentoML's router takes a partial match only when no route matches in full, so its routes
    placed after this app (its UI's static files) still answer, and
    no prediction route is slower (the router stops at the first full match). ``/`` is left out:
    it is BentoML's index page, and its other methods get BentoML's 405 (in JSON too:
    service/route_errors.py); so are BentoML's probes and metrics with a trailing slash.

    Not a :class:`Route`, so that BentoML's request metrics label these requests ``other``
    (service/bentoml_metrics.py) rather than with a path template matching every path.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes  # the app's other routes, to find the one a trailing slash hides

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        # BentoML's index page; and its probes and metrics with a trailing slash, which its router
        # redirects to theirs (a probe or scraper configured so kept working).
        if path in ("", "/") or path.rstrip("/") in _BENTOML_ROUTES:
            return Match.NONE, {}
        return Match.PARTIAL, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        message = f"{request.method} {shown_path(request)}: no such route"
        path = scope["path"]
        other = path.rstrip("/") if path.endswith("/") else path + "/"
        if any(route.matches({**scope, "path": other})[0] is Match.FULL for route in self._routes):
            message += f"; the route is {other} (mind the trailing slash)"
        else:
            message += "; GET /docs.json lists the routes"
        response = route_refusal(request, {"error": "not_found", "message": message}, 404)
        await response(scope, receive, send)
