"""The Open Inference Protocol against a real `bentoml serve` with 2 workers, through third-party
clients: tritonclient (gRPC and HTTP, and its own protobuf stubs), grpcio-health-checking's and
grpcio-reflection's clients. Answers must equal `POST /predict` for the same instances."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from models.contract import CONTRACT
from service.contract import IntegerFeature
from tests.oip_support import DATATYPES, column, rest_body, triton_inputs
from tests.support import (
    ROOT,
    Samples,
    ServedService,
    example_model_only,
    example_rows,
    first_feature,
    first_numeric_feature,
    numeric_or_first_feature,
    refused_value,
    scrape,
)

MODEL = CONTRACT.model_name
SCORE = CONTRACT.score_name
# The input of the refusals that any input gets (a wrong datatype or shape, a missing input): a
# numeric one if the model has one (the example's is an integer), else its first.
INPUT = numeric_or_first_feature().name
INPUT_DATATYPE = DATATYPES[CONTRACT.feature(INPUT).kind]
# A batch's size is the first input's, the one a ragged input is named against: not INPUT if
# that is the first (a model of numbers only), but the last.
RAGGED = CONTRACT.feature_names[-1] if CONTRACT.feature_names[0] == INPUT else INPUT
INFERENCE_SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def grpc_client(served: ServedService) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(served: ServedService) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{served.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def channel(served: ServedService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as chan:
        yield chan


def http_predictions(served: ServedService, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = httpx.post(f"{served.url}/predict", json={"instances": rows}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def as_predictions(labels: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"label": label.decode() if isinstance(label, bytes) else label, SCORE: float(score)}
        for label, score in zip(labels.tolist(), scores.tolist(), strict=True)
    ]


# -- answers equal POST /predict ----------------------------------------------------------------


def test_grpc_infer_answers_what_predict_answers(
    served: ServedService, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    rows = example_rows(1000)  # the example's whole data set (MAX_BATCH_SIZE), in one call
    result = grpc_client.infer(MODEL, triton_inputs(triton_grpc, rows))
    got = as_predictions(result.as_numpy("label"), result.as_numpy(SCORE))
    assert got == http_predictions(served, rows)  # bit for bit: raw FP64 both ways
    assert {p["label"] for p in got} == set(CONTRACT.labels)
    response = result.get_response()
    assert (response.model_name, response.model_version) == (MODEL, served_version(served))


def test_grpc_typed_contents_answer_typed_contents(
    served: ServedService, channel: grpc.Channel
) -> None:
    """Not every client sends raw bytes: typed contents (here via tritonclient's own stubs)."""
    rows = example_rows(7)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    for feature in CONTRACT.features:
        tensor = request.inputs.add(
            name=feature.name, datatype=DATATYPES[feature.kind], shape=[len(rows)]
        )
        values = [row[feature.name] for row in rows]
        if feature.kind == "categorical":
            tensor.contents.bytes_contents.extend(v.encode() for v in values)
        elif feature.kind == "integer":
            tensor.contents.int64_contents.extend(values)
        else:
            tensor.contents.fp64_contents.extend(values)
    response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert not response.raw_output_contents
    label, score = response.outputs
    assert (label.name, label.datatype, list(label.shape)) == ("label", "BYTES", [7])
    assert (score.name, score.datatype, list(score.shape)) == (SCORE, "FP64", [7])
    got = [
        {"label": lab.decode(), SCORE: s}
        for lab, s in zip(label.contents.bytes_contents, score.contents.fp64_contents, strict=True)
    ]
    assert got == http_predictions(served, rows)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_rest_infer_answers_what_predict_answers(
    served: ServedService, http_client: triton_http.InferenceServerClient, binary: bool
) -> None:
    rows = example_rows(200)
    outputs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in ("label", SCORE)]
    result = http_client.infer(MODEL, triton_inputs(triton_http, rows, binary), outputs=outputs)
    got = as_predictions(result.as_numpy("label"), result.as_numpy(SCORE))
    assert got == http_predictions(served, rows)


def test_v2_rest_plain_json(served: ServedService) -> None:
    """What a client without tritonclient sends: JSON, here nested [batch, 1], one output."""
    rows = example_rows(3)
    body = {
        "id": "my-request-1",
        "inputs": [
            {
                "name": f.name,
                "datatype": DATATYPES[f.kind],
                "shape": [3, 1],
                "data": [[row[f.name]] for row in rows],
            }
            for f in CONTRACT.features
        ],
        "outputs": [{"name": SCORE}],
    }
    response = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "my-request-1"
    assert response.headers["x-request-id"] == "my-request-1"
    assert answer["model_name"] == MODEL
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (SCORE, "FP64", [3])
    assert output["data"] == [p[SCORE] for p in http_predictions(served, rows)]
    version = answer["model_version"]
    versioned = httpx.post(f"{served.url}/v2/models/{MODEL}/versions/{version}/infer", json=body)
    assert versioned.json()["outputs"] == answer["outputs"]


def test_request_id_is_the_protocol_id(channel: grpc.Channel) -> None:
    request = raw_request(example_rows(1))
    request.id = "order-42"
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    response, call = stub.ModelInfer.with_call(request)
    assert response.id == "order-42"
    assert ("x-request-id", "order-42") in call.trailing_metadata()
    request.id = ""
    response, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "abc-7")])
    assert response.id == "abc-7"


def test_protocol_id_with_a_trailing_newline_is_replaced_and_answered(
    served: ServedService, channel: grpc.Channel
) -> None:
    # Echoed into a header or trailer, the newline made the server drop the answer.
    body = {**rest_body(example_rows(1)), "id": "loan-42\n"}
    response = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    request = raw_request(example_rows(1))
    request.id = "loan-42\n"
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    _, call = stub.ModelInfer.with_call(request, timeout=30)
    assert re.fullmatch(r"[0-9a-f]{32}", dict(call.trailing_metadata())["x-request-id"])


def test_structural_errors_keep_the_protocol_id(
    served: ServedService, channel: grpc.Channel
) -> None:
    body = {**rest_body(example_rows(1)), "id": "loan-42"}
    body["inputs"][0]["data"] = 24
    response = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.headers["x-request-id"] == response.json()["request_id"] == "loan-42"
    request = raw_request(example_rows(1))
    request.id = "loan-43"
    del request.raw_input_contents[-1]
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata())["x-request-id"] == "loan-43"


def test_a_message_with_a_non_utf8_string_is_invalid_argument(
    served: ServedService, channel: grpc.Channel
) -> None:
    # grpc's own decoding refused it before our handler: UNKNOWN, uncounted, unlogged.
    model_infer = channel.unary_unary(
        f"/{INFERENCE_SERVICE}/ModelInfer",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    valid = raw_request(example_rows(1)).SerializeToString()
    for field in (b"\x0a", b"\x1a"):  # model_name, id: strings that must be UTF-8
        with pytest.raises(grpc.RpcError) as info:
            model_infer(
                valid + field + b"\x03\xff\xfe\xfd",
                timeout=30,
                metadata=[("x-request-id", "bad-utf8")],
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in info.value.details()
        assert dict(info.value.trailing_metadata())["x-request-id"] == "bad-utf8"


@pytest.mark.parametrize(
    ("method", "message"),
    [("ModelMetadata", "ModelMetadataRequest"), ("ModelReady", "ModelReadyRequest")],
)
def test_an_invalid_message_to_another_method_is_invalid_argument(
    channel: grpc.Channel, method: str, message: str
) -> None:
    # It was UNKNOWN, "Unexpected <class 'google.protobuf.message.DecodeError'>": a server error.
    call = channel.unary_unary(
        f"/{INFERENCE_SERVICE}/{method}",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    for invalid in (b"\x0a\x03\xff\xfe\xfd", b"\xff\xff\xff\xff\x0f"):  # not UTF-8; no protobuf
        with pytest.raises(grpc.RpcError) as info:
            call(invalid, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(f"the message is not a valid {message} (")


# -- metadata, health, reflection ----------------------------------------------------------------


def served_version(served: ServedService) -> str:
    return httpx.get(f"{served.url}/model").json()["version"]


def test_model_metadata_describes_the_contract(
    served: ServedService,
    grpc_client: triton_grpc.InferenceServerClient,
    http_client: triton_http.InferenceServerClient,
) -> None:
    expected_inputs = [
        {"name": f.name, "datatype": DATATYPES[f.kind], "shape": [-1]} for f in CONTRACT.features
    ]
    expected_outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": SCORE, "datatype": "FP64", "shape": [-1]},
    ]
    rest = http_client.get_model_metadata(MODEL)
    assert rest["inputs"] == expected_inputs
    assert rest["outputs"] == expected_outputs
    assert rest["versions"] == [served_version(served)]
    grpc_md = grpc_client.get_model_metadata(MODEL)
    assert [(t.name, t.datatype, list(t.shape)) for t in grpc_md.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in expected_inputs
    ]
    assert grpc_md.platform == rest["platform"] == "sklearn"
    assert grpc_client.get_server_metadata().name == http_client.get_server_metadata()["name"]


def test_liveness_and_readiness(
    served: ServedService,
    grpc_client: triton_grpc.InferenceServerClient,
    http_client: triton_http.InferenceServerClient,
) -> None:
    for client in (grpc_client, http_client):
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        assert client.is_model_ready(MODEL, served_version(served))
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        assert httpx.get(f"{served.url}{path}").status_code == 200


def test_standard_grpc_health_checking(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", INFERENCE_SERVICE):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == {
        INFERENCE_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(INFERENCE_SERVICE)
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]
    infer = service.FindMethodByName("ModelInfer")
    assert "raw_input_contents" in infer.input_type.fields_by_name
    assert pool.FindServiceByName("grpc.health.v1.Health").FindMethodByName("Check")


# -- refused requests ----------------------------------------------------------------------------


def with_input(rows: list[dict[str, Any]], name: str, tensor: Any | None) -> list[Any]:
    """tritonclient gRPC inputs for ``rows`` with input ``name`` replaced (None: removed)."""
    inputs = [t for t in triton_inputs(triton_grpc, rows) if t.name() != name]
    return inputs if tensor is None else [*inputs, tensor]


def grpc_input(name: str, datatype: str, data: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def bad_category() -> tuple[list[Any], str]:
    categorical = first_feature("categorical").name
    rows = example_rows(3)
    rows[1] = {**rows[1], categorical: "castle"}
    return triton_inputs(triton_grpc, rows), f"instances[1].{categorical}: 'castle' is not one of: "


def ragged() -> list[Any]:
    rows = example_rows(3)
    return with_input(rows, INPUT, grpc_input(INPUT, INPUT_DATATYPE, column(rows[:2], INPUT)))


# Each case's inputs and the message's start; functions, called by the test: one that needs a
# kind of feature the contract lacks skips.
GRPC_REFUSALS = {
    "wrong datatype": lambda: (
        with_input(
            example_rows(3), INPUT, grpc_input(INPUT, "FP32", np.array([12, 24, 6], np.float32))
        ),
        f"request.{INPUT}: datatype must be {INPUT_DATATYPE} "
        f"({CONTRACT.feature(INPUT).kind} feature), got 'FP32'",
    ),
    "unknown category": bad_category,
    "missing input": lambda: (
        with_input(example_rows(3), INPUT, None),
        f"request.{INPUT}: required input is missing",
    ),
    "ragged shapes": lambda: (ragged(), f"request.{INPUT}: has 2 elements but input "),
    "unknown input": lambda: (
        [
            *triton_inputs(triton_grpc, example_rows(3)),
            grpc_input("colour", "INT64", np.array([1, 2, 3])),
        ],
        "request.colour: unknown field",
    ),
}


@pytest.mark.parametrize("case", list(GRPC_REFUSALS))
def test_invalid_tensors_are_invalid_argument_naming_the_field(
    grpc_client: triton_grpc.InferenceServerClient, case: str
) -> None:
    inputs, message = GRPC_REFUSALS[case]()
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer(MODEL, inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message().startswith(message), info.value.message()
    assert "Traceback" not in info.value.message()


def raw_request(rows: list[dict[str, Any]]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    for tensor in triton_inputs(triton_grpc, rows):
        request.inputs.append(tensor._get_tensor())
        request.raw_input_contents.append(tensor._get_content())
    return request


def test_status_details_list_every_field_error(channel: grpc.Channel) -> None:
    # Two errors of one instance if the model has both kinds: a categorical's, a numeric's.
    features = [*CONTRACT.of_kind("categorical")[:1], *CONTRACT.numeric_features()[:1]]
    expected = set()
    rows = example_rows(4)
    for feature in features:
        value, reason = refused_value(feature)
        rows[2] = {**rows[2], feature.name: value}
        expected.add((f"instances[2].{feature.name}", reason))
    request = raw_request(rows)
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == error.details()
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    violations = {(v.field, v.reason) for v in bad_request.field_violations}
    assert violations == expected
    assert trailers["x-request-id"]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda raw: raw[:-3], "raw BYTES element 2 claims"),
        (lambda raw: raw + b"\x01", "end inside the length prefix"),
    ],
    ids=["truncated", "trailing bytes"],
)
def test_bad_raw_bytes(channel: grpc.Channel, corrupt: Any, message: str) -> None:
    categorical = first_feature("categorical").name
    request = raw_request(example_rows(3))
    index = [t.name for t in request.inputs].index(categorical)
    request.raw_input_contents[index] = corrupt(request.raw_input_contents[index])
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"request.{categorical}: ")
    assert message in info.value.details()


def test_typed_contents_in_another_field_are_invalid_argument_naming_it(
    channel: grpc.Channel,
) -> None:
    numeric = first_numeric_feature().name
    # INT64 elements in INT32's field were ignored; FP64 elements go in FP32's field likewise.
    wrong_field = "int_contents" if CONTRACT.feature(numeric).kind == "integer" else "fp32_contents"
    rows = example_rows(2)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    for feature in CONTRACT.features:
        tensor = request.inputs.add(name=feature.name, datatype=DATATYPES[feature.kind], shape=[2])
        values = [row[feature.name] for row in rows]
        if feature.name == numeric:
            getattr(tensor.contents, wrong_field).extend(values)
        elif feature.kind == "categorical":
            tensor.contents.bytes_contents.extend(v.encode() for v in values)
        elif feature.kind == "number":
            tensor.contents.fp64_contents.extend(values)
        else:
            tensor.contents.int64_contents.extend(values)
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    datatype = DATATYPES[CONTRACT.feature(numeric).kind]
    assert info.value.details() == (
        f"request.{numeric}: input {numeric!r}: {datatype} elements go in "
        f"{datatype.lower()}_contents only; it has {wrong_field}"
    )


@pytest.mark.parametrize("kind", ["inputs", "requested outputs"])
def test_a_flood_of_tensors_is_refused_whole(channel: grpc.Channel, kind: str) -> None:
    """800,000 empty inputs fit in a 4 MB message; read and reported one by one, they held the
    worker's event loop, and every other request of the worker, for 3.6 s."""
    if kind == "inputs":  # typed contents: raw ones are refused early, counted against inputs
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        flood = request.inputs
    else:
        request = raw_request(example_rows(1))
        flood = request.outputs
    for _ in range(800_000):
        flood.add(name="x")
    assert request.ByteSize() < 4 << 20  # MAX_BODY_BYTES: the service reads it
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    model_count = len(CONTRACT.features) if kind == "inputs" else 2
    assert info.value.details() == (
        f"request: the request has {len(flood)} {kind}; the model has {model_count} "
        "(ModelMetadata lists them)"
    )


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_tensor_beyond_the_batch_limit_is_refused_unread(
    served: ServedService, channel: grpc.Channel, transport: str
) -> None:
    """1,300,000 one-byte BYTES elements (800,000 in raw bytes), none of them UTF-8, fit in 4 MB;
    each was decoded and refused on its own, which held the worker's event loop, and every other
    request of the worker, for 6 s."""
    categorical = first_feature("categorical").name
    if transport == "grpc":
        count = 1_300_000
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        tensor = request.inputs.add(name=categorical, datatype="BYTES", shape=[count])
        tensor.contents.bytes_contents.extend([b"\xff"] * count)
        assert request.ByteSize() < 4 << 20  # MAX_BODY_BYTES: the service reads it
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        message = info.value.details()
    else:
        count = 800_000
        raw = b"\x01\x00\x00\x00\xff" * count
        spec = {"name": categorical, "datatype": "BYTES", "shape": [count]}
        header = json.dumps(
            {"inputs": [{**spec, "parameters": {"binary_data_size": len(raw)}}]}
        ).encode()
        response = httpx.post(
            f"{served.url}/v2/models/{MODEL}/infer",
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
            timeout=30,
        )
        assert response.status_code == 413, response.text
        assert response.json()["errors"][0]["reason"] == "batch_too_large"
        message = response.json()["error"]
    assert message.startswith(f"request: the batch has {count} instances; at most ")


def test_another_datatype_is_refused_naming_the_right_one(channel: grpc.Channel) -> None:
    """Not "INT32 elements go in int_contents only", which sent the client the wrong way."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    for feature in CONTRACT.features:
        datatype = "INT32" if feature.name == INPUT else DATATYPES[feature.kind]
        tensor = request.inputs.add(name=feature.name, datatype=datatype, shape=[1])
        value = example_rows(1)[0][feature.name]
        if feature.kind == "categorical":
            tensor.contents.bytes_contents.append(value.encode())
        elif feature.kind == "integer":  # INPUT's too, if an integer: where INT64 elements go
            tensor.contents.int64_contents.append(value)
        else:
            tensor.contents.fp64_contents.append(value)
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"request.{INPUT}: datatype must be {INPUT_DATATYPE} "
        f"({CONTRACT.feature(INPUT).kind} feature), got 'INT32'"
    )


def test_raw_contents_must_cover_every_input(channel: grpc.Channel) -> None:
    request = raw_request(example_rows(2))
    del request.raw_input_contents[-1]
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    n = len(CONTRACT.features)
    assert f"raw_input_contents has {n - 1} entries for {n} inputs" in info.value.details()


def test_unknown_model_or_version_is_not_found(
    served: ServedService,
    channel: grpc.Channel,
    grpc_client: triton_grpc.InferenceServerClient,
    http_client: triton_http.InferenceServerClient,
) -> None:
    for client, module in ((grpc_client, triton_grpc), (http_client, triton_http)):
        with pytest.raises(InferenceServerException) as info:
            client.infer("fraud", triton_inputs(module, example_rows(1)))
        assert info.value.message().endswith(f"unknown model 'fraud'; this server serves '{MODEL}'")
    for path, message in [
        ("/v2/models/fraud", "unknown model 'fraud'"),
        ("/v2/models/fraud/ready", "unknown model 'fraud'"),
        (f"/v2/models/{MODEL}/versions/9", f"version '9' of model '{MODEL}' is not served"),
    ]:
        response = httpx.get(f"{served.url}{path}", headers={"X-Request-ID": "r-404"})
        assert response.status_code == 404
        assert message in response.json()["error"]
        assert response.json()["request_id"] == response.headers["x-request-id"] == "r-404"
    with pytest.raises(grpc.RpcError) as grpc_info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            service_pb2.ModelMetadataRequest(name="fraud")
        )
    assert grpc_info.value.code() == grpc.StatusCode.NOT_FOUND


def test_v2_rest_unknown_routes_and_methods_are_refused_in_json(
    served: ServedService, http_client: triton_http.InferenceServerClient
) -> None:
    # Plain-text "Not Found" / "Method Not Allowed" reached tritonclient's users as "an
    # exception occurred in the client while decoding the response: Parse error".
    with pytest.raises(InferenceServerException) as info:
        http_client.get_model_config(MODEL)
    assert info.value.status() == "404"
    assert info.value.message().startswith(f"GET /v2/models/{MODEL}/config: no such route")
    for method in ("GET", "TRACE"):
        response = httpx.request(method, f"{served.url}/v2/repository/index")
        assert response.status_code == 404, method
        assert "no such route" in response.json()["error"]
        # a request id as in every other answer, generated when the client sends none
        assert response.json()["request_id"] == response.headers["x-request-id"] != ""
    for method, path, allowed in [
        ("GET", f"/v2/models/{MODEL}/infer", "POST"),
        ("PUT", f"/v2/models/{MODEL}/versions/1/infer", "POST"),
        ("POST", f"/v2/models/{MODEL}", "GET, HEAD"),
        ("DELETE", "/v2/health/ready", "GET, HEAD"),
        # methods beyond the common ones were Starlette's plain text still
        ("TRACE", f"/v2/models/{MODEL}/infer", "POST"),
        ("PROPFIND", "/v2", "GET, HEAD"),
    ]:
        response = httpx.request(method, f"{served.url}{path}", headers={"X-Request-ID": "r-405"})
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed
        assert response.headers["x-request-id"] == "r-405"
        assert response.json() == {
            "error": f"{method} {path}: this route takes {allowed}",
            "request_id": "r-405",
        }


def test_v2_rest_refusals_echo_a_long_path_shortened(served: ServedService) -> None:
    # The whole path was echoed: as long as the request's head allows.
    long = "x" * 20_000
    for method, path in [("GET", f"/v2/{long}"), ("PUT", f"/v2/models/{long}/infer")]:
        response = httpx.request(method, f"{served.url}{path}")
        assert response.status_code in (404, 405)
        message = response.json()["error"]
        assert message.startswith(f"{method} {path[:197]}...: "), message[:300]
        assert len(message) < 500


def rest_with(rows: list[dict[str, Any]], name: str, **changes: Any) -> dict[str, Any]:
    body = rest_body(rows)
    body["inputs"] = [{**t, **changes} if t["name"] == name else t for t in body["inputs"]]
    return body


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth - 1):
        value = [value]
    return value


def unknown_category() -> tuple[dict[str, Any], tuple[int | None, str, str]]:
    categorical = first_feature("categorical").name
    valid = example_rows(1)[0][categorical]
    body = rest_with(example_rows(2), categorical, data=[valid, "castle"])
    return body, (1, categorical, "unknown_category")


def integer_data(
    values: Callable[[int], list[Any]], reason: str
) -> tuple[dict[str, Any], tuple[int | None, str, str]]:
    """An integer feature's data: ``values`` of its minimum (a valid value)."""
    integer = first_feature("integer")
    assert isinstance(integer, IntegerFeature)
    body = rest_with(example_rows(2), integer.name, data=values(integer.minimum))
    return body, (1, integer.name, reason)


# A valid element of an input, for the cases whose data is wrongly shaped, not wrongly valued.
def element(name: str = INPUT) -> Any:
    return example_rows(1)[0][name]


# Each case's body and its first error (instance, field, reason); functions, called by the test:
# one that needs a kind of feature the contract lacks skips.
REST_REFUSALS: dict[str, Callable[[], tuple[Any, tuple[int | None, str, str]]]] = {
    "wrong datatype": lambda: (
        rest_with(example_rows(2), INPUT, datatype="FP32", data=[1.5, 2.5]),
        (None, INPUT, "wrong_type"),
    ),
    "unknown category": unknown_category,
    "missing input": lambda: (
        {"inputs": [t for t in rest_body(example_rows(2))["inputs"] if t["name"] != INPUT]},
        (None, INPUT, "missing"),
    ),
    "ragged shapes": lambda: (
        rest_with(example_rows(2), RAGGED, shape=[1], data=[element(RAGGED)]),
        (None, RAGGED, "invalid_tensor"),
    ),
    "ragged nested data": lambda: (
        rest_with(example_rows(2), INPUT, shape=[2, 1], data=[[element()], [element(), element()]]),
        (None, INPUT, "invalid_tensor"),
    ),
    "data nested deeper than any accepted shape": lambda: (
        rest_with(example_rows(1), INPUT, shape=[1] * 600, data=nested(element(), 600)),
        (None, INPUT, "invalid_tensor"),
    ),
    # orjson reads 1024 levels but writes 254: echoing this shape was a 500 (a server error)
    "shape nested deeper than can be echoed": lambda: (
        rest_with(example_rows(1), INPUT, shape={"dims": nested(1, 300)}),
        (None, INPUT, "invalid_tensor"),
    ),
    "fraction for an integer": lambda: integer_data(lambda v: [v, v + 0.5], "wrong_type"),
    "integer beyond 64 bits": lambda: integer_data(lambda v: [v, 2**64], "out_of_range"),
    "not json": lambda: (b"{", (None, "$request", "invalid_json")),
}


@pytest.mark.parametrize("case", list(REST_REFUSALS))
def test_v2_rest_refusals_name_the_field(served: ServedService, case: str) -> None:
    body, (instance, field, reason) = REST_REFUSALS[case]()
    if isinstance(body, bytes):
        response = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", content=body)
    else:
        response = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    first = answer["errors"][0]
    assert (first["instance"], first["field"], first["reason"]) == (instance, field, reason)
    # the protocol's "error" is the one-line message, as tritonclient shows it
    assert answer["error"] == answer["message"]
    assert answer["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("kind", ["inputs", "requested outputs"])
def test_v2_rest_a_flood_of_tensors_is_refused_whole(served: ServedService, kind: str) -> None:
    """300,000 outputs (or 60,000 inputs) fit in a 4 MB body; read and reported one by one, they
    held the worker's event loop, and every other request of the worker, for about 1 s."""
    body = rest_body(example_rows(1))
    if kind == "inputs":
        body["inputs"] += [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}] * 60_000
        count, model_count = len(body["inputs"]), len(CONTRACT.features)
    else:
        body["outputs"] = [{"name": "x"}] * 300_000
        count, model_count = 300_000, 2
    content = json.dumps(body, separators=(",", ":")).encode()
    assert len(content) < 4 << 20  # MAX_BODY_BYTES: the service reads it
    response = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", content=content, timeout=30)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error_count"] == 1
    assert answer["errors"][0]["reason"] == "invalid_tensor"
    assert answer["error"] == (
        f"request: the request has {count} {kind}; the model has {model_count} "
        f"(GET /v2/models/{MODEL} lists them)"
    )


def test_v2_rest_header_length_of_non_ascii_digits_is_refused(served: ServedService) -> None:
    # "²" passes str.isdigit() but not int(): the request hung 30 s and ended in a bare 500.
    response = httpx.post(
        f"{served.url}/v2/models/{MODEL}/infer",
        json=rest_body(example_rows(1)),
        headers={"Inference-Header-Content-Length": b"\xb2", "X-Request-ID": "hdr-sup-1"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    first = response.json()["errors"][0]
    assert (first["field"], first["reason"]) == ("$request", "invalid_body")
    assert "Inference-Header-Content-Length" in first["message"]
    assert response.headers["x-request-id"] == "hdr-sup-1"


def test_v2_rest_compressed_request_is_refused_naming_the_encoding(
    http_client: triton_http.InferenceServerClient,
) -> None:
    # tritonclient's request_compression_algorithm: the compressed body was cut at the length of
    # the uncompressed JSON header ("Inference-Header-Content-Length must be ...").
    with pytest.raises(InferenceServerException) as info:
        http_client.infer(
            MODEL,
            triton_inputs(triton_http, example_rows(1)),
            request_compression_algorithm="gzip",
        )
    assert info.value.status() == "415"
    assert "Content-Encoding 'gzip' is not supported" in info.value.message()


# -- several workers, and their metrics ---------------------------------------------------------


def test_both_workers_answer_grpc(served: ServedService) -> None:
    """The workers share GRPC_PORT (SO_REUSEPORT): connections spread over both; each answers."""
    channels = [
        grpc.insecure_channel(
            f"127.0.0.1:{served.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(24)  # each its own TCP connection; all on one worker: p = 2**-23
    ]
    try:
        for chan in channels:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(chan)
            assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
        workers = [
            proc
            for proc in psutil.Process(served.pid).children(recursive=True)
            if any(c.laddr.port == served.grpc_port for c in proc.net_connections("tcp"))
        ]
        assert len(workers) == 2
        for worker in workers:
            established = [
                c
                for c in worker.net_connections("tcp")
                if c.laddr.port == served.grpc_port and c.status == psutil.CONN_ESTABLISHED
            ]
            assert established, f"worker {worker.pid} answered no connection"
    finally:
        for chan in channels:
            chan.close()


def delta(
    before: Samples,
    after: Samples,
    name: str,
    **labels: str,
) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_grpc_calls_are_counted_by_method_and_code_across_workers(served: ServedService) -> None:
    before = scrape(served.url)
    ok, refused = 9, 4
    for _ in range(ok):  # a new client each time: a new connection, spread over both workers
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
        client.infer(MODEL, triton_inputs(triton_grpc, example_rows(2)))
        client.close()
    for _ in range(refused):
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
        with pytest.raises(InferenceServerException):
            client.infer(MODEL, with_input(example_rows(2), INPUT, None))
        client.close()
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as chan:
        health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest())
    after = scrape(served.url)

    infer = {"grpc_type": "unary", "grpc_service": INFERENCE_SERVICE, "grpc_method": "ModelInfer"}
    assert delta(before, after, "grpc_server_started_total", **infer) == ok + refused
    assert delta(before, after, "grpc_server_handled_total", **infer, grpc_code="OK") == ok
    assert (
        delta(before, after, "grpc_server_handled_total", **infer, grpc_code="InvalidArgument")
        == refused
    )
    assert delta(before, after, "grpc_server_handling_seconds_count", **infer) == ok + refused
    fast = delta(before, after, "grpc_server_handling_seconds_bucket", **infer, le="10.0")
    assert fast == ok + refused
    health = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert delta(before, after, "grpc_server_handled_total", **health, grpc_code="OK") == 1
    # every method's series exists from the start, at zero
    assert (
        "grpc_server_started_total",
        frozenset({**infer, "grpc_method": "ServerReady"}.items()),
    ) in after


# -- the examples of docs/grpc.md ---------------------------------------------------------------


def grpc_doc() -> str:
    return (ROOT / "docs" / "grpc.md").read_text()


@example_model_only
def test_grpc_doc_python_example_prints_what_it_shows(served: ServedService) -> None:
    code = re.search(r"```python\n(.*?)```", grpc_doc(), re.DOTALL)
    assert code is not None
    source = code.group(1).replace("localhost:3001", f"127.0.0.1:{served.grpc_port}")
    shown = re.search(r"^# (\[.*)$", source, re.MULTILINE)
    assert shown is not None
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(source, "docs/grpc.md", "exec"), {})
    assert output.getvalue().strip() == shown.group(1)


@example_model_only
def test_grpc_doc_curl_example_answers_what_it_shows(served: ServedService) -> None:
    example = re.search(
        r"\$ curl -s localhost:3000/v2/models/credit_risk/infer .*?-d '(.*?)'\n(.*?)\n```",
        grpc_doc(),
        re.DOTALL,
    )
    assert example is not None
    response = httpx.post(
        f"{served.url}/v2/models/{MODEL}/infer", content=example.group(1).encode()
    )
    shown = json.loads(example.group(2))["outputs"]
    answered = response.json()["outputs"]
    # The same tensors; the probability to the last few bits, which depend on the CPU's BLAS
    # kernels that trained the model (the example's was trained on another machine).
    assert [{**o, "data": None} for o in answered] == [{**o, "data": None} for o in shown]
    assert answered[0]["data"] == shown[0]["data"]
    assert answered[1]["data"] == pytest.approx(shown[1]["data"], rel=1e-9)
