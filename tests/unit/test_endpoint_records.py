"""What the HTTP endpoints answer and record (through a recording sink, in process) when a request
fails before the model call: a body too large, or a defect of the server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import bentoml
import pytest
from starlette.testclient import TestClient

from models.contract import CONTRACT
from service import http
from service.events import RejectionEvent
from service.inference import BODY_EXCERPT_BYTES, Predictor
from service.model import load_model
from service.oip import rest
from service.oip.protocol import InferenceProtocol
from tests.oip_support import rest_body
from tests.support import EventRecorder, example_rows

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
