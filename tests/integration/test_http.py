"""The HTTP API, run twice: in-process (the service's full BentoML ASGI app, middleware included)
and against a real `bentoml serve` with 2 workers. Both must behave identically."""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml
import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from starlette.testclient import TestClient

from models.contract import CONTRACT
from service import prometheus_dir
from service.balance import Board
from service.contract import CategoricalFeature, Feature
from service.validation import MAX_UNKNOWN_FIELDS
from tests.support import (
    ROOT,
    ServedService,
    example_model_only,
    example_rows,
    excluded_columns,
    first_feature,
    numeric_or_first_feature,
    refused_value,
    scrape,
    total,
    wait_until,
)

MAX_BODY = 4 * 1024 * 1024


@pytest.fixture(scope="module", params=["in_process", "served"])
def client(request: pytest.FixtureRequest, model_tag: str) -> Iterator[httpx.Client]:
    if request.param == "served":
        served: ServedService = request.getfixturevalue("served")
        with httpx.Client(base_url=served.url, timeout=30) as http:
            yield http
        return
    from service.service import CreditRiskService

    with TestClient(CreditRiskService.to_asgi()) as http:
        yield http


def predict(client: httpx.Client, payload: Any, **kwargs: Any) -> httpx.Response:
    return client.post("/predict", json=payload, **kwargs)


def assert_refused(
    response: httpx.Response, status: int, instance: int | None, field: str, reason: str
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    first = body["errors"][0]
    assert (first["instance"], first["field"], first["reason"]) == (instance, field, reason)
    assert first["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_single_instance(client: httpx.Client, model_tag: str) -> None:
    response = predict(client, {"instances": example_rows(1)})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == model_tag
    (prediction,) = body["predictions"]
    score = CONTRACT.score_name  # probability_bad for the example
    assert set(prediction) == {"label", score}
    assert 0 <= prediction[score] <= 1
    threshold = bentoml.models.get(model_tag).info.metadata["decision_threshold"]  # 1/6
    positive = prediction[score] >= threshold
    assert prediction["label"] == (CONTRACT.positive_label if positive else CONTRACT.negative_label)


def test_batch_answers_exactly_what_singles_answer(client: httpx.Client) -> None:
    # README "Serving your own model": this test tells whether a model's answers depend on the
    # batch composition, so it must run for any model (up to MAX_BATCH_SIZE rows of its data).
    rows = example_rows(1000)
    batch = predict(client, {"instances": rows}).json()["predictions"]
    with ThreadPoolExecutor(16) as pool:
        singles = list(
            pool.map(lambda r: predict(client, {"instances": [r]}).json()["predictions"][0], rows)
        )
    assert batch == singles
    labels = {p["label"] for p in batch}
    assert labels == set(CONTRACT.labels)


def test_request_id_is_taken_from_the_header(client: httpx.Client) -> None:
    response = predict(client, {"instances": example_rows(1)}, headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["request_id"] == "abc-123"


@pytest.mark.parametrize("header", [None, "has spaces", "x" * 200])
def test_request_id_is_generated_when_absent_or_unusable(
    client: httpx.Client, header: str | None
) -> None:
    headers = {} if header is None else {"X-Request-ID": header}
    response = predict(client, {"instances": example_rows(1)}, headers=headers)
    generated = response.json()["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert response.headers["x-request-id"] == generated


def test_request_ids_are_unique(client: httpx.Client) -> None:
    ids = {predict(client, {"instances": example_rows(1)}).json()["request_id"] for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b'{"instances": [', "$request", "invalid_json"),
        (b"", "$request", "invalid_json"),
        (b"\xff\xfe", "$request", "invalid_json"),
        (b'{"instances": [{"age_in_years": NaN}]}', "$request", "invalid_json"),
        (b"[1, 2]", "$request", "invalid_body"),
        (b'{"rows": []}', "$request", "invalid_body"),
        (b'{"instances": "all"}', "$request", "invalid_body"),
        (b'{"instances": []}', "$request", "empty_batch"),
    ],
)
def test_malformed_bodies(client: httpx.Client, body: bytes, field: str, reason: str) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert_refused(response, 400, None, field, reason)


@pytest.mark.parametrize("literal", ["NaN", "-Infinity", "Infinity", "nan"])
def test_a_non_finite_literal_is_named_with_its_field(client: httpx.Client, literal: str) -> None:
    # orjson's own message was "unexpected character, expected a JSON value" (NaN, Infinity)
    # or "no digit after sign" (-Infinity, at the character after the sign), without the field.
    name = numeric_or_first_feature().name
    row = {**example_rows(1)[0], name: "@"}
    text = json.dumps({"instances": [row]}).replace('"@"', literal)
    char = text.index(literal)
    response = client.post("/predict", content=text.encode())
    body = assert_refused(response, 400, None, "$request", "invalid_json")
    assert body["errors"][0]["message"] == (
        f"the body is not valid JSON: the value of {name!r}: {literal} is not a JSON value "
        f"(JSON has no NaN or Infinity); send a finite number: line 1 column {char + 1} "
        f"(char {char})"
    )


def test_a_body_that_is_not_utf8_is_told_where(client: httpx.Client) -> None:
    # orjson's message was "str is not valid UTF-8: surrogates not allowed: line 1 column 1
    # (char 0)", wherever the byte was.
    response = client.post("/predict", content=b'{"instances": [{"x": "caf\xe9"}]}')
    body = assert_refused(response, 400, None, "$request", "invalid_json")
    assert body["errors"][0]["message"] == (
        "the body is not valid JSON: it is not UTF-8: byte 0xe9 at offset 25 "
        "(invalid continuation byte); send JSON encoded in UTF-8"
    )


def test_invalid_value_names_instance_and_field(client: httpx.Client) -> None:
    # Two features, of two kinds where the contract has both (the example: an integer and a
    # categorical one), each refused in its own instance.
    first = numeric_or_first_feature()
    others = [f for f in CONTRACT.features if f is not first]
    if not others:
        pytest.skip("the contract has one feature")
    second = next((f for f in others if isinstance(f, CategoricalFeature)), others[-1])
    rows = example_rows(5)
    (first_value, first_reason), (second_value, second_reason) = map(refused_value, (first, second))
    rows[3][first.name] = first_value
    rows[4][second.name] = second_value
    body = assert_refused(predict(client, {"instances": rows}), 400, 3, first.name, first_reason)
    assert body["error_count"] == 2
    error = body["errors"][1]
    assert (error["instance"], error["field"], error["reason"]) == (4, second.name, second_reason)
    if isinstance(second, CategoricalFeature):
        assert error["message"] == refusal_message(second, second_value)
    else:
        assert error["message"].startswith(refusal_message(second, second_value))
    assert body["message"].startswith(
        f"instances[3].{first.name}: {refusal_message(first, first_value)}"
    )


def refusal_message(feature: Feature, value: object) -> str:
    """The message refusing ``value`` (from ``refused_value``) for ``feature``: whole for a
    category, its start for a number (the range follows)."""
    if isinstance(feature, CategoricalFeature):
        listing = ", ".join(repr(c) for c in feature.categories)
        return f"{value!r} is not one of: {listing}"
    return f"{value} is outside the allowed range"


def test_integers_must_be_json_integers(client: httpx.Client) -> None:
    name = first_feature("integer").name
    row = {**example_rows(1)[0], name: 67.0}
    assert f'"{name}": 67.0' in json.dumps(row)  # a JSON fraction, however integral
    response = client.post("/predict", content=json.dumps({"instances": [row]}).encode())
    assert_refused(response, 400, 0, name, "wrong_type")


def test_integers_too_large_for_64_bits_are_out_of_range(client: httpx.Client) -> None:
    # orjson decodes them as floats; they were reported as fractions.
    name = first_feature("integer").name
    payload = {"instances": [{**example_rows(1)[0], name: 987654321987}]}
    body = json.dumps(payload).replace("987654321987", "18446744073709551616")
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    answer = assert_refused(response, 400, 0, name, "out_of_range")
    assert "18446744073709551616 is outside" in answer["errors"][0]["message"]


@pytest.mark.parametrize("excluded", excluded_columns(1))
def test_an_excluded_attribute_is_refused(client: httpx.Client, excluded: str) -> None:
    row = {**example_rows(1)[0], excluded: "yes"}
    body = assert_refused(predict(client, {"instances": [row]}), 400, 0, excluded, "excluded_field")
    assert CONTRACT.excluded_reason in body["errors"][0]["message"]


def test_a_flood_of_unknown_fields_is_one_error_per_instance(client: httpx.Client) -> None:
    """400,000 short field names fit in a 4 MB body; reported one by one, they held the worker's
    event loop (every other request of the worker) for 1 to 3 s."""
    flood = {**example_rows(1)[0], **{f"{i:x}": 0 for i in range(400_000)}}
    few = {**example_rows(1)[0], **{f"extra{i}": 0 for i in range(MAX_UNKNOWN_FIELDS)}}
    body = assert_refused(
        predict(client, {"instances": [flood, few]}), 400, 0, "$unknown", "unknown_field"
    )
    assert body["errors"][0]["message"] == (
        f"400000 fields are not features (first: '0', '1', '2'); more than {MAX_UNKNOWN_FIELDS} "
        "are reported as one error; GET /model lists the features"
    )
    # up to the cap, each one is still named
    assert body["error_count"] == 1 + MAX_UNKNOWN_FIELDS
    assert {e["field"] for e in body["errors"][1:]} == {
        f"extra{i}" for i in range(MAX_UNKNOWN_FIELDS)
    }


def test_oversized_batch(client: httpx.Client) -> None:
    rows = example_rows(1) * 1001
    assert_refused(predict(client, {"instances": rows}), 413, None, "$request", "batch_too_large")


def test_body_of_megabytes_is_refused_unread(client: httpx.Client) -> None:
    row = example_rows(1)
    body = json.dumps({"instances": row * (MAX_BODY // len(json.dumps(row)) + 1)}).encode()
    assert len(body) > MAX_BODY
    response = client.post("/predict", content=body)
    assert_refused(response, 413, None, "$request", "body_too_large")


def test_body_of_megabytes_without_content_length_is_cut_off(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(5000):
            yield b'{"feature": 12, "padding": "' + b"x" * 1000 + b'"},'
        yield b"]}"

    response = client.post("/predict", content=chunks())
    assert_refused(response, 413, None, "$request", "body_too_large")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_compressed_body_is_refused_naming_the_encoding(
    client: httpx.Client, encoding: str
) -> None:
    # It was decoded as JSON as it came: "not valid JSON: str is not valid UTF-8".
    body = gzip.compress(json.dumps({"instances": example_rows(1)}).encode())
    response = client.post("/predict", content=body, headers={"content-encoding": encoding})
    answer = assert_refused(response, 415, None, "$request", "invalid_body")
    assert f"Content-Encoding '{encoding}' is not supported" in answer["message"]


def test_identity_content_encoding_is_accepted(client: httpx.Client) -> None:
    response = predict(
        client, {"instances": example_rows(1)}, headers={"content-encoding": "identity"}
    )
    assert response.status_code == 200, response.text


def test_model_endpoint_describes_tag_metadata_and_contract(
    client: httpx.Client, model_tag: str
) -> None:
    body = client.get("/model").json()
    assert body["model"] == model_tag
    assert body["version"] == model_tag.split(":")[1]
    metadata = bentoml.models.get(model_tag).info.metadata
    assert body["decision_threshold"] == metadata["decision_threshold"]  # 1/6 for the example
    # the training's own metadata, whatever it records (the example's data set hash, say)
    assert body["metadata"] == json.loads(json.dumps(metadata))
    assert [f["name"] for f in body["contract"]["features"]] == list(CONTRACT.feature_names)
    assert body["instance_schema"]["required"] == list(CONTRACT.feature_names)


def openapi_validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator of the document's component schema ``name``, its references resolved."""
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(document))
    return Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry
    )


def answer_schema(operation: dict[str, Any], status: int) -> str:
    """The component schema name of an operation's answer ``status``."""
    ref = operation["responses"][str(status)]["content"]["application/json"]["schema"]["$ref"]
    return str(ref).rsplit("/", 1)[1]


def test_openapi_document_describes_the_bodies_sent_and_answered(client: httpx.Client) -> None:
    # BentoML's document (here before) listed only its probes: no /predict, no request or answer
    # body, nothing for a client generator.
    response = client.get("/docs.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    predict_op = document["paths"]["/predict"]["post"]
    infer_op = document["paths"]["/v2/models/{name}/infer"]["post"]
    for operation, path in (
        (predict_op, "/predict"),
        (infer_op, f"/v2/models/{CONTRACT.model_name}/infer"),
    ):
        request = operation["requestBody"]["content"]["application/json"]
        example = request["example"]
        openapi_validator(document, request["schema"]["$ref"].rsplit("/", 1)[1]).validate(example)
        answered = client.post(path, json=example)
        assert answered.status_code == 200, answered.text
        openapi_validator(document, answer_schema(operation, 200)).validate(answered.json())

    request_schema = openapi_validator(document, "PredictRequest")
    rows = example_rows(2)
    # Whatever the model: an unknown category, a value below its domain (of the kinds of feature
    # it has), a misspelled field.
    refusable = [*CONTRACT.of_kind("categorical")[:1], *CONTRACT.numeric_features()[:1]]
    for row, feature in zip(rows, refusable, strict=False):
        row[feature.name] = refused_value(feature)[0]
    misspelled = CONTRACT.feature_names[0]
    rows[1][misspelled.upper()] = rows[1].pop(misspelled)
    assert not request_schema.is_valid({"instances": rows})
    assert not request_schema.is_valid({"instances": example_rows(1) * 1001})
    refused = [
        (predict_op, predict(client, {"instances": rows}), 400),
        (predict_op, predict(client, {"instances": example_rows(1) * 1001}), 413),
        (
            infer_op,
            client.post(f"/v2/models/{CONTRACT.model_name}/infer", json={"inputs": []}),
            400,
        ),
    ]
    for operation, answer, status in refused:
        assert answer.status_code == status, answer.text
        openapi_validator(document, answer_schema(operation, status)).validate(answer.json())


def test_openapi_document_lists_every_route_the_service_serves() -> None:
    # A route added without its entry would be invisible to client generators and /docs.
    from starlette.routing import Route

    from service.asgi import METHOD_NOT_ALLOWED
    from service.openapi import openapi_document
    from service.service import http_app

    document = openapi_document(CONTRACT, 1000, "service", "1", f"{CONTRACT.model_name}:v1")
    served = {
        (method.lower(), route.path)
        for route in http_app.routes
        if isinstance(route, Route) and ":path}" not in route.path and route.path != "/docs.json"
        for method in route.methods or ()
        # The JSON 405s of other methods (service/asgi.py) and HEAD are not operations.
        if route.name != METHOD_NOT_ALLOWED and method != "HEAD"
    }
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served <= documented, served - documented


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/predict", "POST"),
        ("PUT", "/predict", "POST"),
        ("POST", "/model", "GET, HEAD"),
        ("DELETE", "/drift", "GET, HEAD"),
        # methods beyond the common ones were Starlette's plain text still
        ("TRACE", "/predict", "POST"),
        ("PROPFIND", "/model", "GET, HEAD"),
    ],
)
def test_a_method_a_route_does_not_take_is_refused_in_json(
    client: httpx.Client, method: str, path: str, allowed: str
) -> None:
    # It was Starlette's plain-text "Method Not Allowed"; then JSON without a request id.
    response = client.request(method, path, headers={"X-Request-ID": "r-405"})
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.headers["x-request-id"] == "r-405"
    assert response.json() == {
        "error": "method_not_allowed",
        "message": f"{method} {path}: this route takes {allowed}",
        "request_id": "r-405",
    }
    openapi_validator(client.get("/docs.json").json(), "RouteError").validate(response.json())


def test_without_cors_allow_origins_no_answer_has_cors_headers(client: httpx.Client) -> None:
    # Off by default: a browser's preflight is one more method the route does not take, and no
    # answer lets another origin's script read it (tests/integration/test_cors.py turns it on).
    origin = {"Origin": "https://app.example"}
    refused = client.options(
        "/predict", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert refused.status_code == 405
    assert refused.json()["error"] == "method_not_allowed"
    answered = predict(client, {"instances": example_rows(1)}, headers=origin)
    assert answered.status_code == 200
    for response in (refused, answered):
        assert not [name for name in response.headers if name.startswith("access-control-")]


@pytest.mark.parametrize(
    ("method", "path", "hint"),
    [
        ("POST", "/predcit", "GET /docs.json lists the routes"),
        ("GET", "/nope", "GET /docs.json lists the routes"),
        ("DELETE", "/a/b/c", "GET /docs.json lists the routes"),
        # Starlette redirected these (307 to a URL made from the Host header)
        ("POST", "/predict/", "the route is /predict (mind the trailing slash)"),
        ("GET", "/model/", "the route is /model (mind the trailing slash)"),
    ],
)
def test_an_unknown_path_is_refused_in_json(
    client: httpx.Client, method: str, path: str, hint: str
) -> None:
    # It was Starlette's plain-text "Not Found", without a request id.
    response = client.request(method, path, headers={"X-Request-ID": "lost-1"}, content=b"{}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "lost-1"
    assert response.json() == {
        "error": "not_found",
        "message": f"{method} {path}: no such route; {hint}",
        "request_id": "lost-1",
    }
    openapi_validator(client.get("/docs.json").json(), "RouteError").validate(response.json())
    generated = client.get(path, headers={"X-Request-ID": "has a space"})
    assert generated.json()["request_id"] == generated.headers["x-request-id"] != ""


@pytest.mark.parametrize(
    ("method", "path", "status", "allowed"),
    [
        # Starlette's plain-text "Method Not Allowed" of BentoML's routes
        ("POST", "/livez", 405, "GET, HEAD"),
        ("PUT", "/readyz", 405, "GET, HEAD"),
        ("DELETE", "/healthz", 405, "GET, HEAD"),
        ("OPTIONS", "/livez", 405, "GET, HEAD"),
        ("POST", "/schema.json", 405, "GET, HEAD"),
        ("POST", "/", 405, "GET, HEAD"),
        # and of its UI's static files, with no Allow; "Not Found" for a missing one
        ("POST", "/static_content/index.css", 405, "GET, HEAD"),
        ("GET", "/static_content/x", 404, None),
        ("GET", "/static_content/", 404, None),
    ],
)
def test_bentoml_routes_refuse_in_json(
    client: httpx.Client, method: str, path: str, status: int, allowed: str | None
) -> None:
    response = client.request(method, path, headers={"X-Request-ID": "bentoml-1"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "bentoml-1"
    assert response.headers.get("allow") == allowed
    if status == 405:
        expected = {
            "error": "method_not_allowed",
            "message": f"{method} {path}: this route takes {allowed}",
        }
    else:
        expected = {
            "error": "not_found",
            "message": f"{method} {path}: no such route; GET /docs.json lists the routes",
        }
    assert response.json() == {**expected, "request_id": "bentoml-1"}
    openapi_validator(client.get("/docs.json").json(), "RouteError").validate(response.json())


def test_metrics_refuse_other_methods_in_json_and_are_scraped(served: ServedService) -> None:
    for method in ("POST", "PUT", "DELETE"):
        response = httpx.request(method, f"{served.url}/metrics")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert response.json()["error"] == "method_not_allowed"
    # Prometheus's scrape, unchanged: its text format, not JSON.
    scraped = httpx.get(f"{served.url}/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert "bentoml_service_request_total" in scraped.text


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html"),
        ("/docs.json", "application/json"),
        ("/static_content/index.css", "text/css"),
        ("/livez", "text/plain"),
        ("/readyz", "text/plain"),
        # redirected to the probe by BentoML's router, as before
        ("/livez/", "text/plain"),
        ("/readyz/", "text/plain"),
        # /metrics: scraped by the next test (in process, BentoML serves no metrics)
    ],
)
def test_bentoml_routes_still_answer_beside_the_json_404(
    client: httpx.Client, path: str, content_type: str
) -> None:
    response = client.get(path, follow_redirects=True)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(content_type)


def test_unknown_paths_are_counted_as_other_and_not_as_inference_requests(
    served: ServedService,
) -> None:
    # As the JSON 405s: in BentoML's request metrics (one `other` endpoint whatever the path,
    # not one series per path tried), not inference requests.
    def counts() -> tuple[float, float]:
        samples = scrape(served.url)
        bentoml = total(
            samples, "bentoml_service_request_total", endpoint="other", http_response_code="404"
        )
        return bentoml, total(samples, "inference_requests_total", code="404")

    def settled() -> tuple[float, float] | None:
        # The served fixture is shared with other modules (v2 requests for an unknown model are
        # inference requests answered 404), and each worker's metrics thread applies its counts
        # once a second: start from counts that no earlier request still changes.
        first = counts()
        time.sleep(1.5)
        return first if counts() == first else None

    before, inference_before = wait_until(settled)
    for path in ("/predcit", "/predict/", "/x/y"):
        assert httpx.post(f"{served.url}{path}", json={}).status_code == 404
    # A worker's metrics thread applies BentoML's and the service's counts in the same turn.
    wait_until(lambda: counts()[0] >= before + 3)
    assert counts()[1] == inference_before


def test_health_endpoints(served: ServedService) -> None:
    assert httpx.get(f"{served.url}/livez").status_code == 200
    assert httpx.get(f"{served.url}/readyz").status_code == 200


def test_keep_alive_connections_are_spread_over_the_workers(served: ServedService) -> None:
    """Four clients that each keep one connection open end up two per worker, however the
    workers first accepted them; answers stay correct when a connection is moved."""
    board = prometheus_dir.directory_for(served.pid) / f"workers-{served.pid}.board"
    clients = [
        httpx.Client(base_url=served.url, timeout=30, limits=httpx.Limits(max_connections=1))
        for _ in range(4)
    ]
    payload = {"instances": example_rows(1)}
    moved = 0

    def spread() -> bool:
        nonlocal moved
        for http in clients:
            response = predict(http, payload)
            assert response.status_code == 200, response.text
            moved += response.headers.get("connection") == "close"
        live = [count for beat, _, count in Board.read(board) if time.time() - beat < 2]
        return sorted(live) == [2, 2]

    def settled() -> bool:
        # One board read can show 2 and 2 while a move is still under way (a worker counts a
        # connection for a second after its last request): balanced on every read for longer.
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            if not spread():
                return False
        return True

    try:
        deadline = time.monotonic() + 30
        while not settled():
            assert time.monotonic() < deadline, f"never balanced: {Board.read(board)}"
        # balanced stays balanced: no more connections are closed
        before = moved
        end = time.monotonic() + 2
        while time.monotonic() < end:
            spread()
        assert moved == before
    finally:
        for http in clients:
            http.close()


# -- the README's examples -----------------------------------------------------------------------


@example_model_only
def test_readme_predict_examples_answer_what_they_show(served: ServedService) -> None:
    text = (ROOT / "README.md").read_text()
    example = re.search(
        r"\$ curl -s localhost:3000/predict .*?-d '(.*?)'\n(\{.*?\})\n```", text, re.DOTALL
    )
    assert example is not None
    payload, shown = json.loads(example.group(1)), json.loads(example.group(2))
    answer = httpx.post(f"{served.url}/predict", json=payload).json()
    assert answer.keys() == shown.keys()
    ((label, score),) = [tuple(p.values()) for p in answer["predictions"]]
    ((shown_label, shown_score),) = [tuple(p.values()) for p in shown["predictions"]]
    # The probability to the last few bits, which depend on the CPU's BLAS kernels that trained
    # the model (the README's was trained on another machine).
    assert (label, score) == (shown_label, pytest.approx(shown_score, rel=1e-9))

    # "Validation errors": the same instance, with the values its elided body names.
    section = text[text.index("## Validation errors") :]
    refused = re.search(r"\$ curl .*?-d '(.*?)'\n(\{.*?\})\n```", section, re.DOTALL)
    assert refused is not None
    changes = {
        name: json.loads(value)
        for name, value in re.findall(r'"(\w+)": ("[^"]*"|-?\d+)', refused.group(1))
    }
    assert changes
    row = {**payload["instances"][0], **changes}
    response = httpx.post(f"{served.url}/predict", json={"instances": [row]})
    assert response.status_code == 400
    shown_error = json.loads(refused.group(2))
    assert {**response.json(), "request_id": None} == {**shown_error, "request_id": None}
