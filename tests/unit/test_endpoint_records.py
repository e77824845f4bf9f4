"""What the HTTP endpoints answer and record (through a recording sink, in process) when a request
fails before the model call: a body too large, or a defect of the server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, NoReturn

import bentoml
import pytest
from starlette.testclient import TestClient

from models.contract import CONTRACT
from service import http, timeout
from service.events import RejectionEvent
from service.inference import BODY_EXCERPT_BYTES, Predictor
from service.model import load_model
from service.oip import rest
from service.oip.protocol import InferenceProtocol
from tests.oip_support import rest_body
from tests.support import EventRecorder, HeldEstimator, example_rows

MAX_BODY = 1 << 20


@pytest.fixture
def served(model_tag: str) -> Iterator[tuple[TestClient, EventRecorder]]:
    recorder = EventRecorder()
    predictor = Predictor(load_model(bentoml.models.get(model_tag)), 10, 100, sinks=[recorder])
    protocol = InferenceProtocol(predictor, "test", "0")
    app = http.build_http_app(
        lambda: predictor, MAX_BODY, rest.v2_routes(lambda: protocol, MAX_BODY)
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, recorder


def defect(*args: Any) -> NoReturn:
    raise RuntimeError("a defect")


@pytest.mark.parametrize(
    ("patched", "path", "payload"),
    [
        ((http, "decode_json"), "/predict", {"instances": example_rows(1)}),
        ((rest, "parse_rest_infer"), f"/v2/models/{CONTRACT.model_name}/infer", None),
        # While reading the body: the v2 route's defect escaped, answered by BentoML as a bare
        # text 500 without request id or log row.
        ((http, "read_body"), "/predict", {"instances": example_rows(1)}),
        ((rest, "read_body"), f"/v2/models/{CONTRACT.model_name}/infer", None),
    ],
)
def test_a_defect_before_the_model_call_is_a_recorded_json_500(
    served: tuple[TestClient, EventRecorder],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    patched: tuple[Any, str],
    path: str,
    payload: Any,
) -> None:
    client, recorder = served
    monkeypatch.setattr(*patched, defect)
    body = rest_body(example_rows(1)) if payload is None else payload
    with caplog.at_level(logging.ERROR):
        response = client.post(path, json=body, headers={"X-Request-ID": "defect-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "defect-1"
    answer = response.json()
    assert answer["request_id"] == "defect-1"
    assert "server log" in (answer.get("message") or answer["error"])
    (event,) = recorder.events
    assert isinstance(event, RejectionEvent)
    assert (event.status, event.errors[0].reason.value) == (500, "internal_error")
    assert event.request.request_id == "defect-1"
    tracebacks = [r for r in caplog.records if r.exc_info and "a defect" in str(r.exc_info[1])]
    assert len(tracebacks) == 1


PATHS = ["/predict", f"/v2/models/{CONTRACT.model_name}/infer"]


@pytest.mark.parametrize("path", PATHS)
def test_a_body_refused_on_its_content_length_is_recorded_with_that_size(
    served: tuple[TestClient, EventRecorder], path: str
) -> None:
    client, recorder = served
    body = b'{"instances": [' + b" " * MAX_BODY + b"]}"
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    (event,) = recorder.events
    assert isinstance(event, RejectionEvent)
    assert (event.status, event.body_size, event.body_excerpt) == (413, len(body), "")


@pytest.mark.parametrize("path", PATHS)
def test_a_body_cut_off_while_read_is_recorded_with_what_was_read(
    served: tuple[TestClient, EventRecorder], path: str
) -> None:
    client, recorder = served

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size shows only while reading
        yield b'{"instances": ['
        for _ in range(MAX_BODY // 1000 + 1):
            yield b" " * 1000

    response = client.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    (event,) = recorder.events
    assert isinstance(event, RejectionEvent)
    assert event.status == 413
    assert event.body_size > MAX_BODY
    assert event.body_excerpt.startswith('{"instances": [')
    assert len(event.body_excerpt) == BODY_EXCERPT_BYTES


@pytest.mark.parametrize(
    "change",
    [
        lambda body: body["inputs"][0].update(data=24),  # data not an array
        lambda body: body["inputs"][0].update(shape=[1, 1, 1], data=[[[24]]]),
        lambda body: body.update(outputs="label"),
    ],
)
def test_v2_structural_errors_answer_and_record_the_client_id(
    served: tuple[TestClient, EventRecorder], change: Any
) -> None:
    client, recorder = served
    body = {**rest_body(example_rows(1)), "id": "loan-42"}
    change(body)
    response = client.post(PATHS[1], json=body, headers={"X-Request-ID": "header-id"})
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "loan-42"
    assert response.json()["request_id"] == "loan-42"
    (event,) = recorder.events
    assert event.request.request_id == "loan-42"


@pytest.mark.parametrize("headers", [{}, {"X-Request-ID": "header-id"}])
def test_a_v2_timeout_answers_under_the_id_it_is_recorded_under(
    model_tag: str, headers: dict[str, str]
) -> None:
    expected = "loan-7"
    # The body's "id" replaces the header's request id: BentoML's timeout answer (the 504 in the
    # endpoint's shape) must name the same id as the log row, or the client cannot find it.
    estimator = HeldEstimator()
    model = replace(load_model(bentoml.models.get(model_tag)), estimator=estimator)
    recorder = EventRecorder()
    predictor = Predictor(model, 10, 100, sinks=[recorder])
    protocol = InferenceProtocol(predictor, "test", "0")
    app = timeout.TimeoutMiddleware(
        http.build_http_app(
            lambda: predictor, MAX_BODY, rest.v2_routes(lambda: protocol, MAX_BODY)
        ),
        0.3,
    )
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            body = {**rest_body(example_rows(1)), "id": expected}
            response = client.post(PATHS[1], json=body, headers=headers)
    finally:
        estimator.release.set()
    assert response.status_code == 504
    assert response.headers["x-request-id"] == expected
    assert response.json()["request_id"] == expected
    (event,) = recorder.events
    assert isinstance(event, RejectionEvent)
    assert (event.status, event.request.request_id) == (504, expected)
