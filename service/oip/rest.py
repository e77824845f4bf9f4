"""The Open Inference Protocol's v2 REST API, served on the HTTP port beside ``/predict``.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``,
``.../ready`` and ``POST .../infer``. Tensors are JSON (``data``: flat row-major, or nested to
match ``shape``) or, with the binary tensor data extension that tritonclient uses by default, raw
bytes after the JSON header (``Inference-Header-Content-Length``).

Errors keep the body of ``POST /predict`` errors (``message``, ``error_count``, ``errors`` with
instance, field and reason, ``request_id``), except that ``error`` holds the one-line message, as
the protocol specifies and as clients such as tritonclient display it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from service import tracing
from service.asgi import (
    JSON_CONTENT,
    Header,
    JSONResponse,
    any_method,
    decode_json,
    read_body,
    refuse_other_methods,
    request_headers,
    route_refusal,
    seen_body,
    send_response,
    shown_path,
)
from service.inference import RequestContext, RequestFailed
from service.oip.protocol import (
    InferenceProtocol,
    InferRequest,
    InferResult,
    MalformedInferRequest,
)
from service.oip.tensors import Tensor, check_tensor_counts, encode_raw, input_error
from service.timeout import TIMEOUT_ANSWER
from service.validation import MAX_NAME_ECHO, Reason, RequestRejected

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
_INFER_SPAN_ATTRIBUTES = {"http.request.method": "POST", "http.route": "/v2/models/{name}/infer"}


def infer_endpoint(model_name: str) -> str:
    """The endpoint label of the v2 infer requests for ``model_name`` (metrics, logs)."""
    return f"/v2/models/{model_name}/infer"


def v2_error(exc: RequestRejected, request: Request) -> JSONResponse:
    """A refusal of a metadata or readiness route (not a logged request)."""
    return route_refusal(request, {**exc.to_dict(), "error": exc.summary}, exc.status)


def v2_error_body(ctx: RequestContext, exc: RequestRejected) -> bytes:
    """An infer request's error body (arguments as ``service.timeout.ErrorBody`` takes them)."""
    return orjson.dumps({**exc.to_dict(), "error": exc.summary, "request_id": ctx.request_id})


def v2_failure_body(ctx: RequestContext, message: str) -> bytes:
    """The 500 body of an infer request the server or the model failed on (no details)."""
    return orjson.dumps({"error": message, "request_id": ctx.request_id})


def _invalid(message: str) -> RequestRejected:
    return RequestRejected.request_level(Reason.INVALID_BODY, message)


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a JSON object")
    return value


def _parameters(value: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    return _object(value.get("parameters", {}), f"{where}.parameters")


def _json_echo(value: Any) -> str:
    """``value`` as the client wrote it in JSON, cut short."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
        return "a deeply nested " + ("array" if isinstance(value, list) else "object")
    return text[:MAX_NAME_ECHO]


def _flatten(data: Any, shape: Any, name: str, known: Collection[str] = ()) -> list[Any]:
    """``data`` flat, or nested exactly as ``shape`` says (the protocol allows both)."""
    if not isinstance(data, list):
        raise input_error(name, f"input {name!r}: data must be an array", known)
    if not any(isinstance(v, list) for v in data):
        return data
    dims = shape if isinstance(shape, list) else []
    if len(dims) > 2:
        # Checked before walking: data nested hundreds deep would exhaust the recursion limit.
        raise input_error(
            name,
            f"input {name!r}: shape of {len(dims)} dimensions is not accepted: each input is "
            "one feature, of shape [batch] or [batch, 1]",
            known,
        )

    def walk(value: Any, depth: int) -> list[Any]:
        if depth == len(dims):
            if isinstance(value, list):
                raise _ragged(name, known)
            return [value]
        if not isinstance(value, list) or len(value) != dims[depth]:
            raise _ragged(name, known)
        return [leaf for item in value for leaf in walk(item, depth + 1)]

    return walk(data, 0)


def _ragged(name: str, known: Collection[str]) -> RequestRejected:
    return input_error(
        name,
        f"input {name!r}: nested data does not match the shape (ragged or mis-shaped arrays)",
        known,
    )


def parse_rest_infer(
    body: bytes,
    header_length: str | None,
    model_name: str,
    model_version: str,
    known: Collection[str] = (),
    model_tensors: tuple[int, int, str] | None = None,
) -> InferRequest:
    """An :class:`InferRequest` from a v2 JSON body, with binary tensor data if announced;
    ``known`` are the input names that may label metrics; ``model_tensors``, how many inputs and
    outputs the model has and what lists them (see :func:`check_tensor_counts`)."""
    binary = b""
    if header_length is not None:
        # isdigit() alone accepts digits such as "²" that int() refuses.
        valid = header_length.isascii() and header_length.isdigit()
        if not valid or int(header_length) > len(body):
            raise _invalid(f"{HEADER_LENGTH} must be the JSON header's size, at most {len(body)}")
        body, binary = body[: int(header_length)], body[int(header_length) :]
    payload = _object(decode_json(body, '{"inputs": [...]}'), "the body")
    # Read first, so that a refusal of the rest still answers and logs under the client's id.
    request_id = payload.get("id", "")
    if not isinstance(request_id, str):
        raise _invalid('"id" must be a string')
    try:
        return _parse_payload(
            payload, binary, model_name, model_version, request_id, known, model_tensors
        )
    except RequestRejected as exc:
        raise MalformedInferRequest(exc, request_id) from exc


def _parse_payload(
    payload: Mapping[str, Any],
    binary: bytes,
    model_name: str,
    model_version: str,
    request_id: str,
    known: Collection[str],
    model_tensors: tuple[int, int, str] | None,
) -> InferRequest:
    inputs = payload.get("inputs")
    if not isinstance(inputs, list):
        raise _invalid('"inputs" must be an array of input tensors')
    if model_tensors is not None:
        outputs = payload.get("outputs")
        check_tensor_counts(
            len(inputs), len(outputs) if isinstance(outputs, list) else 0, *model_tensors
        )
    tensors: list[Tensor] = []
    offset = 0
    for index, value in enumerate(inputs):
        where = f"inputs[{index}]"
        spec = _object(value, where)
        name = spec.get("name")
        if not isinstance(name, str):
            raise _invalid(f"{where}.name must be a string")
        size = _parameters(spec, where).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise input_error(
                    name,
                    f"input {name!r}: binary_data_size must be a non-negative integer, "
                    f"got {_json_echo(size)}",
                    known,
                )
            if offset + size > len(binary):
                raise input_error(
                    name,
                    f"input {name!r}: binary_data_size {size!r} exceeds the binary data sent",
                    known,
                )
            data: Sequence[Any] | bytes = binary[offset : offset + size]
            offset += size
        elif "data" in spec:
            data = _flatten(spec["data"], spec.get("shape"), name, known)
        else:
            raise input_error(name, f"input {name!r} has neither data nor binary_data_size", known)
        shape = spec.get("shape")
        if not isinstance(shape, list):
            got = "; it is missing" if "shape" not in spec else f", got {_json_echo(shape)}"
            raise input_error(
                name,
                f"input {name!r}: shape must be an array of dimensions, e.g. [batch]{got}",
                known,
            )
        tensors.append(Tensor(name, str(spec.get("datatype")), shape, data))
    if offset != len(binary):
        raise RequestRejected.request_level(
            Reason.INVALID_TENSOR,
            f"{len(binary) - offset} bytes of binary data are not claimed by any input",
        )
    outputs, binary_outputs = _requested_outputs(payload)
    return InferRequest(model_name, model_version, request_id, tensors, outputs, binary_outputs)


def _requested_outputs(payload: Mapping[str, Any]) -> tuple[list[str], frozenset[str]]:
    specs = payload.get("outputs", [])
    if not isinstance(specs, list):
        raise _invalid('"outputs" must be an array')
    names: list[str] = []
    binary: set[str] = set()
    for index, value in enumerate(specs):
        spec = _object(value, f"outputs[{index}]")
        name = spec.get("name")
        if not isinstance(name, str):
            raise _invalid(f"outputs[{index}].name must be a string")
        names.append(name)
        if _parameters(spec, f"outputs[{index}]").get("binary_data") is True:
            binary.add(name)
    if _parameters(payload, "the body").get("binary_data_output") is True:
        binary = {"*"}
    return names, frozenset(binary)


_OCTETS = (b"content-type", b"application/octet-stream")


def render_infer(protocol: InferenceProtocol, result: InferResult) -> tuple[bytes, list[Header]]:
    """JSON, or JSON followed by the raw outputs that the request asked for in binary; with the
    response headers."""
    binary = result.request.binary_outputs
    rendered: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in result.outputs:
        out: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if "*" in binary or tensor.name in binary:
            raw = encode_raw(tensor.datatype, tensor.data)
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = list(tensor.data)
        rendered.append(out)
    answer = orjson.dumps(
        {
            "model_name": protocol.model_name,
            "model_version": protocol.model_version,
            "id": result.response_id,
            "outputs": rendered,
        }
    )
    if not chunks:
        return answer, [JSON_CONTENT]
    length = (HEADER_LENGTH.lower().encode(), b"%d" % len(answer))
    return b"".join([answer, *chunks]), [_OCTETS, length]


class InferEndpoint:
    """``POST /v2/models/{name}[/versions/{version}]/infer`` as a bare ASGI app (see
    ``service.http.PredictEndpoint`` for why)."""

    def __init__(self, get_protocol: Callable[[], InferenceProtocol], max_body_bytes: int) -> None:
        self._get_protocol = get_protocol
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope)
        params = scope["path_params"]
        with tracing.server_span(
            "POST /v2/models/{name}/infer", headers, _INFER_SPAN_ATTRIBUTES
        ) as span:
            protocol = self._get_protocol()
            ctx = RequestContext.start(
                "http", infer_endpoint(protocol.model_name), headers.get("x-request-id")
            )
            scope[TIMEOUT_ANSWER] = (ctx, v2_error_body)  # BentoML's timeout answers in our shape
            extra = [JSON_CONTENT]
            try:
                predictions, call = await protocol.infer(
                    ctx,
                    _parser(protocol, params, headers),
                    seen_body,
                    read=lambda: read_body(receive, headers, self._max_body_bytes),
                )
            except RequestRejected as exc:
                status, body = exc.status, v2_error_body(ctx, exc)
            except RequestFailed as exc:
                status, body = 500, v2_failure_body(ctx, exc.message)
            else:
                status = 200
                body, extra = render_infer(protocol, protocol.result(ctx, call, predictions))
            tracing.end_status(span, status)
        await send_response(send, status, body, ctx.request_id, extra)


def _parser(
    protocol: InferenceProtocol, params: Mapping[str, str], headers: Mapping[str, str]
) -> Callable[[bytes], InferRequest]:
    """:func:`parse_rest_infer` for a request to ``params``' model, with these headers."""
    name, version = params["name"], params.get("version", "")
    header_length = headers.get(HEADER_LENGTH.lower())
    codec = protocol.codec
    counts = (len(codec.inputs), len(codec.outputs), f"GET /v2/models/{protocol.model_name}")
    return lambda body: parse_rest_infer(
        body, header_length, name, version, codec.input_names, counts
    )


def v2_routes(
    get_protocol: Callable[[], InferenceProtocol], max_body_bytes: int
) -> list[BaseRoute]:
    """The v2 routes; ``get_protocol`` returns the worker's :class:`InferenceProtocol`."""

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(get_protocol().server_metadata(EXTENSIONS))

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if get_protocol().ready else 503)

    async def model_metadata(request: Request) -> Response:
        protocol = get_protocol()
        try:
            protocol.check_model(*_model_of(request))
        except RequestRejected as exc:
            return v2_error(exc, request)
        return JSONResponse(protocol.model_metadata())

    async def model_ready(request: Request) -> Response:
        try:
            is_ready = get_protocol().model_ready(*_model_of(request))
        except RequestRejected as exc:
            return v2_error(exc, request)
        return Response(status_code=200 if is_ready else 503)

    async def unknown_route(request: Request) -> Response:
        # JSON with the message in "error", as the protocol's clients read every error (a plain
        # "Not Found" reached tritonclient's users as "an exception occurred in the client while
        # decoding the response"), e.g. for the model configuration or statistics extensions.
        message = (
            f"{request.method} {shown_path(request)}: no such route; this server serves the Open "
            f"Inference Protocol's health, metadata and infer routes for model "
            f"{get_protocol().model_name!r}"
        )
        return route_refusal(request, {"error": message}, 404)

    infer = InferEndpoint(get_protocol, max_body_bytes)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        *refuse_other_methods(
            [
                Route("/v2", server_metadata, methods=["GET"]),
                Route("/v2/health/live", live, methods=["GET"]),
                Route("/v2/health/ready", ready, methods=["GET"]),
                *(Route(path, model_metadata, methods=["GET"]) for path in (model, versioned)),
                *(
                    Route(f"{path}/ready", model_ready, methods=["GET"])
                    for path in (model, versioned)
                ),
                *(Route(f"{path}/infer", infer, methods=["POST"]) for path in (model, versioned)),
            ],
            lambda message: {"error": message},
        ),
        # Last: any other path under /v2 (the routes above, and their 405s, match first).
        any_method(Route("/v2/{path:path}", unknown_route)),
    ]


def _model_of(request: Request) -> tuple[str, str]:
    return request.path_params["name"], request.path_params.get("version", "")
