"""A browser app on another origin calling the HTTP API (CORS_ALLOW_ORIGINS), against a real
`bentoml serve` of its own (one worker: counts and log lines are one worker's, no waiting for a
sibling). What a browser needs: preflights answered before any route, and every answer, errors
included, readable (`Access-Control-Allow-Origin`) with its request id (`X-Request-ID` exposed)."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.contract import CONTRACT
from service.oip.rest import infer_endpoint
from tests.oip_support import rest_body
from tests.support import (
    ServedService,
    example_rows,
    scrape,
    send_post_head,
    total,
    wait_until,
)

APP = "https://app.example"
OTHER_APP = "https://elsewhere.example"
V2_INFER = infer_endpoint(CONTRACT.model_name)
PREDICT_BODY = {"instances": example_rows(1)}
# Short, for the 504 test: a body stalled that long is answered 504 (room for the other tests'
# requests on a loaded 2-core machine).
TIMEOUT_SECONDS = 5


@pytest.fixture(scope="module")
def service(model_tag: str) -> Iterator[tuple[ServedService, Path]]:
    store = Path(tempfile.mkdtemp(prefix="cors-")) / "predictions.db"
    env = {
        # Spelled as an operator might: the service compares the browser's spelling.
        "CORS_ALLOW_ORIGINS": "https://App.example:443/, http://localhost:5173",
        "REQUEST_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        "PREDICTION_LOG_URL": f"sqlite:///{store}",
        "PREDICTION_LOG_SPOOL_DIR": str(store.parent / "spool"),
    }
    with ServedService(env=env, workers=1) as served:
        yield served, store


@pytest.fixture(scope="module")
def client(service: tuple[ServedService, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service[0].url, timeout=30) as http:
        yield http


def preflight(
    client: httpx.Client, path: str, origin: str = APP, headers: str = "content-type,x-request-id"
) -> httpx.Response:
    """What a browser sends before a cross-origin JSON POST with an X-Request-ID header."""
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


def assert_readable(response: httpx.Response, request_id: bool = True) -> None:
    """A browser script on APP may read this answer and, if it has one, its X-Request-ID."""
    assert response.headers["access-control-allow-origin"] == APP
    exposed = response.headers["access-control-expose-headers"].lower().split(", ")
    assert "x-request-id" in exposed
    assert bool(response.headers.get("x-request-id")) == request_id
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize("path", ["/predict", V2_INFER])
def test_a_preflight_is_answered_before_any_route(client: httpx.Client, path: str) -> None:
    response = preflight(client, path, headers="content-type,x-request-id,traceparent")
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert "POST" in response.headers["access-control-allow-methods"].split(", ")
    allowed = response.headers["access-control-allow-headers"].lower().split(", ")
    assert {"content-type", "x-request-id", "traceparent"} <= set(allowed)
    assert response.headers["access-control-max-age"] == "600"


def test_the_other_configured_origin_is_allowed_too(client: httpx.Client) -> None:
    response = preflight(client, "/predict", origin="http://localhost:5173")
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/predict", PREDICT_BODY, 200),
        ("POST", "/predict", {"instances": [{}]}, 400),
        ("POST", V2_INFER, rest_body(example_rows(1)), 200),
        ("POST", V2_INFER, {"inputs": []}, 400),
        ("GET", "/model", None, 200),
        ("GET", "/predict", None, 405),
        ("POST", "/predcit", PREDICT_BODY, 404),
    ],
)
def test_every_answer_is_readable_by_the_allowed_origin(
    client: httpx.Client, method: str, path: str, body: Any, status: int
) -> None:
    response = client.request(method, path, json=body, headers={"Origin": APP})
    assert response.status_code == status, response.text
    assert_readable(response, request_id=path != "/model")  # /model's answer has no id
    if status == 400:  # what the browser app shows its user: the field at fault
        assert response.json()["errors"][0]["field"] == CONTRACT.features[0].name


def test_a_body_too_large_is_readable(client: httpx.Client) -> None:
    response = client.post(
        "/predict", content=b" " * (4 * 1024 * 1024 + 1), headers={"Origin": APP}
    )
    assert response.status_code == 413
    assert response.json()["errors"][0]["reason"] == "body_too_large"
    assert_readable(response)


def test_a_timeout_is_readable(service: tuple[ServedService, Path]) -> None:
    # BentoML's timeout middleware is outside its CORS middleware: its 504 lacked the header,
    # and the browser app saw a network error instead of the timeout and its request id.
    headers = {"Origin": APP, "X-Request-ID": "cors-timeout"}
    with send_post_head(service[0].port, "/predict", 100, headers, TIMEOUT_SECONDS + 10) as sock:
        sock.sendall(b'{"instances": [')  # and the rest never comes
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        response = httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
    assert response.status_code == 504
    assert response.json()["errors"][0]["reason"] == "timeout"
    assert response.headers["x-request-id"] == "cors-timeout"
    assert_readable(response)


def refusal(port: int, head: bytes) -> httpx.Response:
    """The answer to ``head``, sent as it is on a connection of its own, which the server closes
    (a refusal made before the app, service/header_limit.py)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS + 10) as sock:
        sock.sendall(head)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())


def too_large(origin: str) -> bytes:
    return b"GET /model HTTP/1.1\r\nHost: test\r\nOrigin: %s\r\nX-Padding: %s\r\n\r\n" % (
        origin.encode(),
        b"a" * 70_000,
    )


def test_refusals_before_the_app_are_readable(service: tuple[ServedService, Path]) -> None:
    # The 431 of a head too large, the 408 of one too slow and the 400 of a request the parser
    # refuses are written before the app, so BentoML's CORS middleware never saw them: the
    # browser app got a network error instead of the refusal and its request id.
    port = service[0].port
    large = refusal(port, too_large(APP))
    assert large.status_code == 431
    assert large.json()["request_id"] == large.headers["x-request-id"]
    assert_readable(large)
    slow = refusal(port, b"GET /model HTTP/1.1\r\nHost: test\r\nOrigin: %s\r\nX-Pad" % APP.encode())
    assert slow.status_code == 408
    assert_readable(slow)
    malformed = refusal(
        port,
        b"GET /model HTTP/1.1\r\nHost: test\r\nOrigin: %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nnot a chunk size\r\n" % APP.encode(),
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "invalid_request"
    assert_readable(malformed)
    # As for the app's answers: not readable by another origin.
    other = refusal(port, too_large(OTHER_APP))
    assert other.status_code == 431
    assert "access-control-allow-origin" not in other.headers


def test_another_origin_is_answered_but_not_allowed(client: httpx.Client) -> None:
    # The server answers (CORS is the browser's rule, not authentication); the browser, seeing
    # no Access-Control-Allow-Origin, keeps the answer from the other origin's script.
    refused = preflight(client, "/predict", origin=OTHER_APP)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    response = client.post("/predict", json=PREDICT_BODY, headers={"Origin": OTHER_APP})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def access_lines(served: ServedService) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in served.read_log().splitlines()
        if line.startswith('{"time"') and '"type":"access"' in line
    ]


def test_preflights_are_neither_validated_logged_nor_counted(
    service: tuple[ServedService, Path], client: httpx.Client
) -> None:
    served, store = service

    def counts() -> tuple[float, ...]:
        samples = scrape(served.url)
        http = "bentoml_service_request_total"
        return (
            total(samples, "inference_requests_total"),
            total(samples, "inference_validation_failures_total"),
            # BentoML's HTTP request metrics count every request: preflights under their own label
            total(samples, http, endpoint="/predict"),
            total(samples, http, endpoint="/v2/models/{name}/infer"),
            total(samples, http, endpoint="cors_preflight", http_response_code="200"),
            total(samples, http, endpoint="cors_preflight", http_response_code="400"),
        )

    def settled() -> tuple[float, ...] | None:
        # The metrics thread applies counts once a second: start from counts no earlier
        # request of this module still changes.
        first = counts()
        time.sleep(1.5)
        return first if counts() == first else None

    requests, failures, predict, infer, allowed, refused = wait_until(settled)
    lines = len(access_lines(served))
    with sqlite3.connect(store) as db:
        rejections = db.execute("SELECT count(*) FROM rejections").fetchone()[0]
    for path in ("/predict", V2_INFER):
        assert preflight(client, path).status_code == 200
        assert preflight(client, path, origin=OTHER_APP).status_code == 400
        assert preflight(client, path, headers="x-secret").status_code == 400
    # Then one prediction: counted and logged after the preflights, in the same worker.
    response = client.post("/predict", json=PREDICT_BODY, headers={"Origin": APP})
    assert response.status_code == 200

    def predicted() -> bool:
        # Both counts of the prediction: a metrics turn applies the service's counts before
        # BentoML's, and BentoML's middleware queues its count as the answer is sent, after the
        # service queued its own; a turn in between applies the one and not the other.
        now = counts()
        return now[0] >= requests + 1 and now[2] >= predict + 1

    wait_until(predicted)
    wait_until(lambda: len(access_lines(served)) >= lines + 1)
    assert counts() == (requests + 1, failures, predict + 1, infer, allowed + 2, refused + 4)
    (line,) = access_lines(served)[lines:]
    assert line["request_id"] == response.headers["x-request-id"]
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM rejections").fetchone()[0] == rejections
