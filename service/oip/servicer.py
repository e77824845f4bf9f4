"""``inference.GRPCInferenceService``: the gRPC transport of the Open Inference Protocol.

A thin adapter: protobuf messages in and out, :class:`InferenceProtocol` for the semantics.
Refused requests end with a gRPC status carrying the same one-line message as the HTTP error body
(``RequestRejected.summary``) and, in the standard ``grpc-status-details-bin`` trailer, a
``google.rpc.Status`` whose ``google.rpc.BadRequest`` lists the field errors (what grpcurl, and the
Go and Java clients' ``status.FromError``/``StatusProto.fromThrowable``, decode).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from service import tracing
from service.inference import RequestContext, RequestFailed
from service.oip.generated import grpc_predict_v2_pb2 as pb
from service.oip.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from service.oip.outcome import ShutdownCancel, cancellation, final_code
from service.oip.protocol import (
    InferenceProtocol,
    InferRequest,
    InferResult,
    MalformedInferRequest,
)
from service.oip.tensors import Tensor, check_tensor_counts, encode_raw, input_error
from service.validation import Reason, RequestRejected

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
REQUEST_ID_METADATA = "x-request-id"
STATUS_DETAILS_METADATA = "grpc-status-details-bin"
# Trailers share an 8 KiB default limit with the other headers: list violations up to this size.
_MAX_DETAILS_BYTES = 4096
_INFER_SPAN_NAME = f"{SERVICE_NAME}/ModelInfer"
# The endpoint label of ModelInfer calls (metrics, logs).
INFER_RPC = "ModelInfer"
_INFER_SPAN_ATTRIBUTES = {
    "rpc.system": "grpc",
    "rpc.service": SERVICE_NAME,
    "rpc.method": INFER_RPC,
}
# Codes that report the caller's mistake or choice: the span of such a call is not marked failed
# (OpenTelemetry's gRPC conventions; a passed deadline, DEADLINE_EXCEEDED, is the server's).
_CALLER_ERRORS = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.CANCELLED,
    }
)
_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    # batch too large: the client must split it; RESOURCE_EXHAUSTED would suggest a retry later
    413: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The typed-contents field of each datatype (the protocol's table).
_CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_infer_request(
    message: pb.ModelInferRequest,
    known: Collection[str] = (),
    model_tensors: tuple[int, int] | None = None,
) -> InferRequest:
    """Tensors from typed contents or from ``raw_input_contents`` (tritonclient's default);
    ``known`` are the input names that may label metrics (a mapping: with their datatypes, for
    the codec to refuse another datatype before its contents are read); ``model_tensors``, how
    many inputs and outputs the model has (see :func:`_check_counts`)."""
    try:
        return _parse_infer_request(message, known, model_tensors)
    except RequestRejected as exc:  # answered and logged under the client's id all the same
        raise MalformedInferRequest(exc, message.id) from exc


def _parse_infer_request(
    message: pb.ModelInferRequest, known: Collection[str], model_tensors: tuple[int, int] | None
) -> InferRequest:
    if model_tensors is not None:
        _check_counts(message, *model_tensors)
    raw = message.raw_input_contents
    if raw:
        if len(raw) != len(message.inputs):
            raise RequestRejected.request_level(
                Reason.INVALID_TENSOR,
                f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
                "give one per input, in the order of inputs",
            )
        if any(t.contents.ByteSize() for t in message.inputs):
            raise RequestRejected.request_level(
                Reason.INVALID_TENSOR,
                "the request mixes raw_input_contents and typed contents: use one of them",
            )
        tensors = [
            Tensor(t.name, t.datatype, list(t.shape), data)
            for t, data in zip(message.inputs, raw, strict=True)
        ]
    else:
        tensors = [
            Tensor(t.name, t.datatype, list(t.shape), _typed_contents(t, known))
            for t in message.inputs
        ]
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        inputs=tensors,
        outputs=[o.name for o in message.outputs],
    )


def _check_counts(message: pb.ModelInferRequest, inputs: int, outputs: int) -> None:
    check_tensor_counts(len(message.inputs), len(message.outputs), inputs, outputs, "ModelMetadata")


def decode_infer_request(data: bytes) -> pb.ModelInferRequest:
    """The request message, decoded here rather than by grpc (see :func:`add_to_server`)."""
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise RequestRejected.request_level(
            Reason.INVALID_BODY,
            f"the message is not a valid ModelInferRequest ({exc}); "
            "its string fields (model_name, id, names) must be UTF-8",
        ) from exc


def _typed_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, known: Collection[str]
) -> Sequence[object]:
    """The elements, from the datatype's field: elements in another field are refused, not
    ignored (INT64 elements in INT32's ``int_contents`` were reported as no elements at all)."""
    field = _CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        return ()  # not a protocol datatype: the codec refuses it
    if isinstance(known, Mapping) and known.get(tensor.name, tensor.datatype) != tensor.datatype:
        # Another datatype than the input's: the codec refuses it, naming the right one. Told
        # "INT32 elements go in int_contents only" instead, a client moved INT64 values the
        # wrong way.
        return ()
    others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if others:
        raise input_error(
            tensor.name,
            f"input {tensor.name!r}: {tensor.datatype} elements go in {field} only; "
            f"it has {', '.join(others)}",
            known,
        )
    return getattr(tensor.contents, field)


def describe_request(message: pb.ModelInferRequest) -> bytes:
    """A readable line about a refused request for the log (the message itself is binary)."""
    inputs = ", ".join(f"{t.name}:{t.datatype}{list(t.shape)}" for t in message.inputs[:40])
    raw = " raw" if message.raw_input_contents else ""
    return f"ModelInfer model={message.model_name!r} inputs{raw}=[{inputs}]".encode()


def build_infer_response(
    protocol: InferenceProtocol, result: InferResult, raw: bool
) -> pb.ModelInferResponse:
    """Raw output contents when the request came raw (as tritonclient expects), else typed."""
    response = pb.ModelInferResponse(
        model_name=protocol.model_name,
        model_version=protocol.model_version,
        id=result.response_id,
    )
    for tensor in result.outputs:
        out = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            response.raw_output_contents.append(encode_raw(tensor.datatype, tensor.data))
        elif tensor.datatype == "BYTES":
            out.contents.bytes_contents.extend(str(v).encode() for v in tensor.data)
        else:
            getattr(out.contents, _CONTENTS_FIELDS[tensor.datatype]).extend(tensor.data)
    return response


def status_details(exc: RequestRejected, code: grpc.StatusCode) -> bytes:
    """A serialized ``google.rpc.Status``, with a ``BadRequest`` for invalid arguments."""
    status = status_pb2.Status(code=code.value[0], message=exc.summary)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        bad_request = error_details_pb2.BadRequest()
        for error in exc.errors:
            where = "" if error.instance is None else f"instances[{error.instance}]."
            bad_request.field_violations.add(
                field=f"{where}{error.field}", description=error.message, reason=error.reason
            )
            if bad_request.ByteSize() > _MAX_DETAILS_BYTES:
                del bad_request.field_violations[-1]
                break
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    return status.SerializeToString()


def _metadata_request_id(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA and isinstance(value, str):
            return value
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, protocol: InferenceProtocol, shutdown: ShutdownCancel | None = None) -> None:
        self._protocol = protocol
        self._shutdown = shutdown
        codec = protocol.codec
        self._datatypes = {t.name: t.datatype for t in codec.inputs}
        self._counts = (len(codec.inputs), len(codec.outputs))

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._protocol.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            return pb.ModelReadyResponse(
                ready=self._protocol.model_ready(request.name, request.version)
            )
        except RequestRejected as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.summary)
            raise  # abort() raises; this tells readers and type checkers

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._protocol.server_metadata(extensions=()))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            self._protocol.check_model(request.name, request.version)
        except RequestRejected as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.summary)
            raise  # abort() raises
        metadata = self._protocol.model_metadata()
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
        )

    async def ModelInfer(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        metadata = context.invocation_metadata() or ()
        carrier = {m.key: m.value for m in metadata if isinstance(m.value, str)}
        with tracing.server_span(
            _INFER_SPAN_NAME, carrier, _INFER_SPAN_ATTRIBUTES, status_on_exception=False
        ) as span:
            error: BaseException | None = None
            try:
                return await self._model_infer(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = final_code(context, error, self._shutdown)
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code not in _CALLER_ERRORS:
                    span.set_status(tracing.trace.StatusCode.ERROR)

    async def _model_infer(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        ctx = RequestContext.start(
            "grpc",
            INFER_RPC,
            _metadata_request_id(context),
            classify_cancel=lambda: cancellation(context, self._shutdown),
        )
        request: pb.ModelInferRequest | None = None

        def parse(data: bytes) -> InferRequest:
            nonlocal request
            request = decode_infer_request(data)
            return parse_infer_request(request, self._datatypes, self._counts)

        def seen(exc: RequestRejected, data: bytes) -> tuple[bytes, int | None]:
            # The message is binary: its log excerpt is a readable account of it, once decoded.
            return data if request is None else describe_request(request), len(data)

        try:
            predictions, call = await self._protocol.infer(ctx, parse, seen, body=data)
        except RequestRejected as exc:
            code = _STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL)
            await context.abort(
                code,
                exc.summary,
                trailing_metadata=(
                    (REQUEST_ID_METADATA, ctx.request_id),
                    (STATUS_DETAILS_METADATA, status_details(exc, code)),
                ),
            )
            raise  # abort() raises
        except RequestFailed as exc:
            await context.abort(
                grpc.StatusCode.INTERNAL,
                exc.message,
                trailing_metadata=((REQUEST_ID_METADATA, ctx.request_id),),
            )
            raise  # abort() raises
        context.set_trailing_metadata(((REQUEST_ID_METADATA, ctx.request_id),))
        assert request is not None  # parsed, or infer() would have raised
        return build_infer_response(
            self._protocol,
            self._protocol.result(ctx, call, predictions),
            raw=bool(request.raw_input_contents),
        )


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """``add_GRPCInferenceServiceServicer_to_server``, except that every method gets the message's
    bytes: grpc's own decoding of an invalid message (a string field that is not UTF-8, bytes that
    are no protobuf) fails before any handler runs, answering UNKNOWN ("Unexpected <class
    'google.protobuf.message.DecodeError'>"), counted as a server error, not INVALID_ARGUMENT.
    ModelInfer decodes its own (to answer and log under the client's request id); the others are
    decoded by :func:`_decoding`."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name)
            if method.name == INFER_RPC
            else _decoding(getattr(servicer, method.name), getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _decoding(
    handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], message_type: Any
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    """``handler``, taking the message's bytes: an invalid message is INVALID_ARGUMENT."""

    async def call(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = message_type.FromString(data)
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the message is not a valid {message_type.DESCRIPTOR.name} ({exc}); its string "
                "fields must be UTF-8",
            )
        return await handler(request, context)

    return call
