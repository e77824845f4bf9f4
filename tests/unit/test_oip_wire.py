"""Wire formats of the Open Inference Protocol: the generated stubs, and the parsing of gRPC
messages and v2 REST bodies into tensors (the served tests cover the common paths end to end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from tritonclient.grpc import service_pb2 as triton_pb

from service.oip import codegen
from service.oip.generated import grpc_predict_v2_pb2 as pb
from service.oip.rest import HEADER_LENGTH, parse_rest_infer
from service.oip.servicer import parse_infer_request, status_details
from service.oip.tensors import encode_raw
from service.validation import UNKNOWN_FIELD, FieldError, Reason, RequestRejected


def test_committed_stubs_are_what_make_proto_generates(tmp_path: Path) -> None:
    for path in codegen.generate(tmp_path):
        committed = codegen.GENERATED / path.name
        assert committed.read_text() == path.read_text(), f"run `make proto`: {path.name} is stale"


def test_stubs_live_beside_tritonclient_in_one_process() -> None:
    """tritonclient registers the same `inference.*` names in protobuf's default pool; ours are
    in a private pool, so both import, and they speak the same wire format."""
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileByName(pb.DESCRIPTOR.name)
    assert pb.DESCRIPTOR.pool.FindMessageTypeByName("inference.ModelInferRequest")
    theirs = triton_pb.ModelInferRequest(model_name="m", id="x")
    tensor = theirs.inputs.add(name="a", datatype="INT64", shape=[2])
    tensor.contents.int64_contents.extend([3, 4])
    ours = pb.ModelInferRequest.FromString(theirs.SerializeToString())
    assert list(ours.inputs[0].contents.int64_contents) == [3, 4]


def rejected(call: Any) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        call()
    return info.value


def test_grpc_request_cannot_mix_raw_and_typed_contents() -> None:
    message = pb.ModelInferRequest(model_name="m")
    first = message.inputs.add(name="a", datatype="INT64", shape=[1])
    first.contents.int64_contents.append(1)
    message.inputs.add(name="b", datatype="INT64", shape=[1])
    message.raw_input_contents.extend([encode_raw("INT64", [1]), encode_raw("INT64", [2])])
    exc = rejected(lambda: parse_infer_request(message))
    assert exc.errors[0].reason is Reason.INVALID_TENSOR
    assert "mixes raw_input_contents and typed contents" in exc.summary


def test_grpc_typed_contents_are_read_from_the_datatype_field() -> None:
    message = pb.ModelInferRequest(model_name="m", model_version="v", id="i")
    tensor = message.inputs.add(name="a", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"x", b"y"])
    odd = message.inputs.add(name="b", datatype="STRING", shape=[1])  # not a protocol datatype
    odd.contents.bytes_contents.append(b"z")
    request = parse_infer_request(message)
    assert (request.model_name, request.model_version, request.id) == ("m", "v", "i")
    assert list(request.inputs[0].data) == [b"x", b"y"]
    assert list(request.inputs[1].data) == []  # refused later by the codec's datatype check


@pytest.mark.parametrize(
    ("fill", "found"),
    [
        (lambda c: c.int_contents.extend([30, 31]), "int_contents"),  # INT32's field
        (
            lambda c: (c.int64_contents.extend([30, 31]), c.fp64_contents.append(1.5)),
            "fp64_contents",
        ),
    ],
    ids=["other field", "another field too"],
)
def test_grpc_typed_contents_outside_the_datatype_field_are_refused(fill: Any, found: str) -> None:
    # They were ignored: "shape [2] needs 2 elements; the contents hold 0", or accepted.
    def error(name: str) -> FieldError:
        message = pb.ModelInferRequest(model_name="m")
        fill(message.inputs.add(name=name, datatype="INT64", shape=[2]).contents)
        (only,) = rejected(lambda: parse_infer_request(message, {"age_in_years"})).errors
        return only

    only = error("age_in_years")
    assert (only.field, only.reason, only.metric_field) == (
        "age_in_years",
        Reason.INVALID_TENSOR,
        "age_in_years",
    )
    assert only.message == (
        f"input 'age_in_years': INT64 elements go in int64_contents only; it has {found}"
    )
    assert error("colour").metric_field == UNKNOWN_FIELD


def test_status_details_stay_within_the_trailer_budget() -> None:
    errors = [
        FieldError(i, "purpose", Reason.UNKNOWN_CATEGORY, "x" * 200, "purpose") for i in range(50)
    ]
    details = status_details(RequestRejected(errors), grpc.StatusCode.INVALID_ARGUMENT)
    assert len(details) < 5000
    status = status_pb2.Status.FromString(details)
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    assert 0 < len(bad_request.field_violations) < 50
    assert bad_request.field_violations[0].field == "instances[0].purpose"


def test_not_found_has_no_bad_request_detail() -> None:
    exc = RequestRejected.request_level(Reason.UNKNOWN_MODEL, "unknown model", status=404)
    status = status_pb2.Status.FromString(status_details(exc, grpc.StatusCode.NOT_FOUND))
    assert (status.code, status.message, list(status.details)) == (5, "request: unknown model", [])


def parse(body: Any, header_length: str | None = None, binary: bytes = b"") -> Any:
    raw = (body if isinstance(body, bytes) else json.dumps(body).encode()) + binary
    if header_length == "auto":
        header_length = str(len(raw) - len(binary))
    return parse_rest_infer(raw, header_length, "m", "")


def test_rest_binary_tensor_data() -> None:
    body = {
        "id": "r1",
        "inputs": [
            {
                "name": "a",
                "datatype": "INT64",
                "shape": [2],
                "parameters": {"binary_data_size": 16},
            },
            {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["x"]},
        ],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "p"}],
    }
    request = parse(body, "auto", encode_raw("INT64", [7, 8]))
    assert request.inputs[0].data == encode_raw("INT64", [7, 8])
    assert request.inputs[1].data == ["x"]
    assert (request.id, list(request.outputs)) == ("r1", ["label", "p"])
    assert request.binary_outputs == {"label"}
    body["parameters"] = {"binary_data_output": True}
    assert parse(body, "auto", encode_raw("INT64", [7, 8])).binary_outputs == {"*"}


@pytest.mark.parametrize(
    ("data", "shape", "flat"),
    [
        ([1, 2, 3], [3], [1, 2, 3]),
        ([[1], [2], [3]], [3, 1], [1, 2, 3]),
        ([1, 2, 3], [3, 1], [1, 2, 3]),  # flat data, any shape: the codec checks the count
    ],
)
def test_rest_data_flat_or_nested_like_the_shape(data: Any, shape: Any, flat: Any) -> None:
    body = {"inputs": [{"name": "a", "datatype": "INT64", "shape": shape, "data": data}]}
    assert parse(body).inputs[0].data == flat


@pytest.mark.parametrize(
    ("body", "header_length", "binary", "reason", "text"),
    [
        (b"[]", None, b"", Reason.INVALID_BODY, "the body must be a JSON object"),
        ({"inputs": {}}, None, b"", Reason.INVALID_BODY, '"inputs" must be an array'),
        ({"inputs": [{"datatype": "INT64"}]}, None, b"", Reason.INVALID_BODY, "name must be"),
        ({"inputs": [{"name": "a"}]}, None, b"", Reason.INVALID_TENSOR, "neither data nor"),
        (
            {"inputs": [{"name": "a", "shape": [2, 1], "data": [[1], [2, 3]]}]},
            None,
            b"",
            Reason.INVALID_TENSOR,
            "ragged",
        ),
        ({"inputs": [{"name": "a", "data": 5}]}, None, b"", Reason.INVALID_TENSOR, "an array"),
        (
            {"inputs": [{"name": "a", "parameters": {"binary_data_size": 9}}]},
            "auto",
            b"\x00" * 8,
            Reason.INVALID_TENSOR,
            "exceeds the binary data",
        ),
        ({"inputs": []}, "auto", b"\x00", Reason.INVALID_TENSOR, "not claimed by any input"),
        # The shape was taken as [] ("shape [] is not accepted") and a binary_data_size that is
        # not an integer said to exceed the binary data sent, whatever was sent.
        (
            {"inputs": [{"name": "a", "datatype": "INT64", "data": [1]}]},
            None,
            b"",
            Reason.INVALID_TENSOR,
            "input 'a': shape must be an array of dimensions, e.g. [batch]; it is missing",
        ),
        (
            {"inputs": [{"name": "a", "datatype": "INT64", "shape": "1", "data": [1]}]},
            None,
            b"",
            Reason.INVALID_TENSOR,
            "input 'a': shape must be an array of dimensions, e.g. [batch], got \"1\"",
        ),
        (
            {"inputs": [{"name": "a", "shape": [1], "parameters": {"binary_data_size": "8"}}]},
            "auto",
            b"\x00" * 8,
            Reason.INVALID_TENSOR,
            "input 'a': binary_data_size must be a non-negative integer, got \"8\"",
        ),
        ({"inputs": []}, "99999", b"", Reason.INVALID_BODY, HEADER_LENGTH),
        ({"inputs": [], "id": 5}, None, b"", Reason.INVALID_BODY, '"id" must be a string'),
        ({"inputs": [], "outputs": [{}]}, None, b"", Reason.INVALID_BODY, "outputs[0].name"),
    ],
)
def test_rest_malformed_bodies(
    body: Any, header_length: str | None, binary: bytes, reason: Reason, text: str
) -> None:
    exc = rejected(lambda: parse(body, header_length, binary))
    assert exc.errors[0].reason is reason
    assert text in exc.summary


DEEP = 300  # within what orjson reads (1024 levels), beyond what it writes (254)


@pytest.mark.parametrize(
    ("spec", "header_length", "binary", "text"),
    [
        (
            b'{"name": "a", "datatype": "INT64", "data": [1], "shape": '
            + b'{"d": ' * DEEP
            + b"1"
            + b"}" * DEEP
            + b"}",
            None,
            b"",
            "input 'a': shape must be an array of dimensions",
        ),
        (
            b'{"name": "a", "shape": [1], "parameters": {"binary_data_size": '
            + b"[" * DEEP
            + b"]" * DEEP
            + b"}}",
            "auto",
            b"\x00" * 8,
            "input 'a': binary_data_size must be a non-negative integer",
        ),
    ],
)
def test_rest_deeply_nested_values_are_refused_not_a_server_error(
    spec: bytes, header_length: str | None, binary: bytes, text: str
) -> None:
    # Echoing the value with orjson.dumps raised its recursion limit (TypeError): the request
    # was answered 500 and counted as a server error, although the client sent it wrong.
    exc = rejected(lambda: parse(b'{"inputs": [' + spec + b"]}", header_length, binary))
    assert exc.errors[0].reason is Reason.INVALID_TENSOR
    assert text in exc.summary


@pytest.mark.parametrize(("body", "header_length"), [(b"", None), (b" ", None), (b"{}", "0")])
def test_rest_empty_body_asks_for_inputs_not_instances(
    body: bytes, header_length: str | None
) -> None:
    # The hint was /predict's ({"instances": [...]}), wrong for a v2 client.
    exc = rejected(lambda: parse_rest_infer(body, header_length, "m", ""))
    assert exc.errors[0].reason is Reason.INVALID_JSON
    assert '"inputs"' in exc.summary
    assert "instances" not in exc.summary


@pytest.mark.parametrize(
    "spec",
    [
        {"datatype": "INT64", "shape": [2, 1], "data": [[1], [2, 3]]},  # ragged
        {"datatype": "INT64", "shape": [1], "data": 1},  # not an array
        {"datatype": "INT64", "shape": [1, 1, 1], "data": [[[1]]]},  # too many dimensions
        {"datatype": "INT64", "shape": [1]},  # neither data nor binary_data_size
        {"datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
    ],
)
def test_rest_tensor_errors_name_the_input(spec: dict[str, Any]) -> None:
    def error(name: str) -> Any:
        body = json.dumps({"inputs": [{"name": name, **spec}]}).encode()
        exc = rejected(lambda: parse_rest_infer(body, None, "m", "", {"age_in_years"}))
        (only,) = exc.errors
        return only.field, only.reason, only.metric_field

    assert error("age_in_years") == ("age_in_years", Reason.INVALID_TENSOR, "age_in_years")
    # a name the contract lacks is echoed but never becomes a metric label
    assert error("colour") == ("colour", Reason.INVALID_TENSOR, UNKNOWN_FIELD)
