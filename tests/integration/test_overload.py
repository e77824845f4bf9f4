"""Overload, against a real `bentoml serve` with 2 workers and a small model queue
(MAX_QUEUED_ROWS): requests beyond it are refused at once with 503 and Retry-After, recorded and
counted, and the service answers as usual once the burst is over."""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx import Response

from models.contract import CONTRACT
from service.oip.rest import infer_endpoint
from tests.oip_support import rest_body
from tests.support import (
    ServedService,
    example_rows,
    scrape,
    send_post_head,
    served_with_log,
    total,
    wait_until,
)

QUEUED_ROWS = 1000
# The served model's v2 infer route: the contract's name, whatever model a fork serves.
V2_INFER = infer_endpoint(CONTRACT.model_name)
BURST = 24  # concurrent 1000-instance requests: far more than 2 workers' queues hold


@pytest.fixture(scope="module")
def service(model_tag: str) -> Iterator[tuple[ServedService, Path]]:
    with served_with_log("overload-", {"MAX_QUEUED_ROWS": str(QUEUED_ROWS)}) as served:
        yield served


def burst(served: ServedService, path: str, body: bytes, request_ids: list[str]) -> list[Response]:
    """The answers to requests whose bodies all end at once, one connection each.

    Each request is sent but for its body's last byte, then the last bytes go out together: a
    worker's event loop then validates the requests completed in one turn before its model takes
    any, so they queue together and overflow the queue whatever the model's speed. (Sent by a
    thread pool, they arrived one after another: with a model faster than validating its
    request, each was taken before the next joined, and none was refused.)
    """
    connections = []
    for request_id in request_ids:
        headers = {"X-Request-ID": request_id, "Connection": "close"}
        sock = send_post_head(served.port, path, len(body), headers, timeout=60)
        sock.sendall(body[:-1])
        connections.append(sock)
    time.sleep(0.5)  # every worker has read what was sent, and waits for the rest
    for sock in connections:
        sock.sendall(body[-1:])
    answers = []
    for sock in connections:
        with sock:
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            answers.append(
                Response(answer.status, headers=answer.getheaders(), content=answer.read())
            )
    return answers


@pytest.mark.parametrize("path", ["/predict", V2_INFER])
def test_a_burst_beyond_the_queue_is_refused_with_503_and_retry_after(
    service: tuple[ServedService, Path], path: str
) -> None:
    served, store = service
    rows = example_rows(1000)
    body = json.dumps({"instances": rows} if path == "/predict" else rest_body(rows)).encode()
    before = total(scrape(served.url), "inference_requests_total", endpoint=path, code="503")
    headers = {"Content-Type": "application/json"}
    answers = burst(served, path, body, [f"burst-{path.count('/')}-{i}" for i in range(BURST)])
    refused = [a for a in answers if a.status_code == 503]
    assert {a.status_code for a in answers} == {200, 503}, [a.status_code for a in answers]
    for answer in refused:
        assert answer.headers["retry-after"] == "1"
        assert "overloaded" in answer.text
        refusal = answer.json()
        assert refusal["errors"][0]["reason"] == "unavailable"
        if path == "/predict":  # it said "invalid_request": as if the client had to change it
            assert refusal["error"] == "unavailable"

    def recorded() -> set[str]:
        with sqlite3.connect(store) as db:
            found = db.execute(
                "SELECT request_id FROM rejections WHERE status = 503 AND endpoint = ?", (path,)
            ).fetchall()
        return {row[0] for row in found} if len(found) == len(refused) else set()

    assert wait_until(recorded, timeout=10) == {a.headers["x-request-id"] for a in refused}
    wait_until(
        lambda: (
            total(scrape(served.url), "inference_requests_total", endpoint=path, code="503")
            - before
            == len(refused)
        ),
        timeout=10,
    )
    # the burst is over: answered as usual
    after = httpx.post(served.url + path, content=body, headers=headers, timeout=30)
    assert after.status_code == 200
