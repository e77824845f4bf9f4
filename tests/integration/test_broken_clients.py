"""Clients that break off or stall, against a real `bentoml serve` with 2 workers and a short
request timeout: each is recorded in the prediction log and counted, and none leaves a request in
flight (BentoML's `bentoml_service_request_in_progress`) longer than it lasts."""

from __future__ import annotations

import json
import select
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.contract import CONTRACT
from service.header_limit import LINGER_SECONDS, STATUSES
from service.metrics import REQUEST_FLUSH_SECONDS
from service.oip.rest import infer_endpoint
from tests.support import (
    ServedService,
    example_rows,
    scrape,
    send_endless_head,
    send_post_head,
    served_with_log,
    total,
    wait_until,
)

# The request timeout: long enough that "well before it" (a client gone mid-body is let go at
# once) leaves room on a loaded 2-core machine; a stalled body waits it out.
TIMEOUT_SECONDS = 12
# The served model's v2 infer route: the contract's name, whatever model a fork serves.
V2_INFER = infer_endpoint(CONTRACT.model_name)
BODY = json.dumps({"instances": example_rows(1)}).encode()


@pytest.fixture(scope="module")
def service(model_tag: str) -> Iterator[tuple[ServedService, Path]]:
    with served_with_log("broken-clients-", {"REQUEST_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)}) as s:
        yield s


def send_head(
    served: ServedService, request_id: str, content_length: int, path: str = "/predict"
) -> socket.socket:
    headers = {"X-Request-ID": request_id}
    return send_post_head(served.port, path, content_length, headers, TIMEOUT_SECONDS + 10)


def rejection(store: Path, request_id: str) -> tuple[int, str, int] | None:
    with sqlite3.connect(store) as db:
        row = db.execute(
            "SELECT status, errors, body_size FROM rejections WHERE request_id = ?", (request_id,)
        ).fetchone()
    if row is None:
        return None
    return row[0], json.loads(row[1])[0]["reason"], row[2]


def in_progress(served: ServedService, endpoint: str = "/predict") -> float:
    return total(scrape(served.url), "bentoml_service_request_in_progress", endpoint=endpoint)


def test_a_client_gone_mid_body_is_a_499_and_leaves_nothing_in_flight(
    service: tuple[ServedService, Path],
) -> None:
    served, store = service
    sock = send_head(served, "gone-mid-body", len(BODY))
    sock.sendall(BODY[:100])
    wait_until(lambda: in_progress(served) == 1, timeout=30)
    sock.close()
    # Well before the request timeout (until which BentoML's middleware waited for an answer).
    wait_until(lambda: in_progress(served) == 0, timeout=TIMEOUT_SECONDS - 4)
    assert wait_until(lambda: rejection(store, "gone-mid-body"), timeout=30) == (
        499,
        "cancelled",
        100,
    )


@pytest.mark.parametrize("path", ["/predict", V2_INFER])
def test_a_body_slower_than_the_request_timeout_is_a_recorded_504(
    service: tuple[ServedService, Path], path: str
) -> None:
    served, store = service
    request_id = f"slow-body-{path.count('/')}"
    before = scrape(served.url)
    sock = send_head(served, request_id, len(BODY), path)
    sock.sendall(BODY[:10])
    answer = b""
    while b"}" not in answer:  # the 504, after REQUEST_TIMEOUT_SECONDS
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 504 "), answer
    # In the route's error shape, with the request id: it was BentoML's {"error": "Not able to
    # process the request in 12 seconds"}, without one.
    head, _, body = answer.partition(b"\r\n\r\n")
    assert f"x-request-id: {request_id}".encode() in head.lower()
    error = json.loads(body)
    assert error["request_id"] == request_id
    assert error["errors"][0]["reason"] == "timeout"
    assert error["error"] == ("timeout" if path == "/predict" else error["message"])
    assert wait_until(lambda: rejection(store, request_id), timeout=30)[:2] == (504, "timeout")

    def counted() -> bool:
        now = scrape(served.url)
        return (
            total(now, "inference_requests_total", endpoint=path, code="504")
            - total(before, "inference_requests_total", endpoint=path, code="504")
            == 1
        )

    wait_until(counted, timeout=30)
    wait_until(lambda: in_progress(served, path) == 0, timeout=30)


def test_a_request_head_beyond_the_limit_is_refused_before_it_is_whole(
    service: tuple[ServedService, Path],
) -> None:
    """A header of 200 MB was read whole: the worker held it and spent 57 s of CPU joining its
    pieces, serving nothing else meanwhile. A head of a legitimate size is still served."""
    served, _ = service
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        padding = b"a" * 16_000
        sock.sendall(b"GET /model HTTP/1.1\r\nHost: test\r\nX-Padding: " + padding + b"\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    # Until the worker answers (it refuses, then closes the connection), or 64 MB.
    sent, answer = send_endless_head("127.0.0.1", served.port)
    # Cut off long before: what was sent beyond the limit is what the sockets' buffers held.
    assert sent < 16 << 20, f"the worker read {sent} bytes of headers, answered {answer[:40]!r}"
    # Read by the client still writing (the worker drops what follows the refusal a while).
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert b"exceed 65536 bytes" in answer


def test_a_request_head_beyond_the_limit_is_refused_when_it_arrives_at_once(
    service: tuple[ServedService, Path],
) -> None:
    """A head over the limit sent in one write was served: the limit counted only the reads
    after the one a head began in, and none once the head was whole. A head just under the limit
    sent the same way is still served."""
    served, _ = service
    head = b"GET /model HTTP/1.1\r\nHost: test\r\nX-Padding: %s\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head % (b"a" * 60_000))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    invalid = served.read_log().count("Invalid HTTP request received")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head % (b"a" * 100_000))
        status, request_id, body = refusal_answer(sock)
    assert status == 431, body
    assert body["error"] == "invalid_request"
    assert "exceed 65536 bytes" in body["message"]
    assert body["request_id"] == request_id
    # Logged as the refusal it is, not also as uvicorn's invalid request.
    wait_until(lambda: f"refused request {request_id} (431)" in served.read_log(), timeout=30)
    assert served.read_log().count("Invalid HTTP request received") == invalid


def test_a_request_head_slower_than_the_request_timeout_is_refused_and_an_idle_connection_closed(
    service: tuple[ServedService, Path],
) -> None:
    """A connection that sent nothing, or part of a head, was held open for good: a client could
    hold as many as the workers have file descriptors."""
    served, _ = service
    started = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT_SECONDS + 10) as idle,
        socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT_SECONDS + 10) as slow,
    ):
        slow.sendall(b"GET /model HTTP/1.1\r\nHost: test\r\nX-Padding: aaa")
        answer = slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert f"did not arrive within {TIMEOUT_SECONDS} s".encode() in answer
        assert idle.recv(65536) == b""  # closed
    assert time.monotonic() - started < TIMEOUT_SECONDS + 3


def refused(served: ServedService) -> dict[str, float]:
    """``http_requests_refused_total`` by reason, from a /metrics parsed by prometheus_client."""
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in scrape(served.url).items()
        if name == "http_requests_refused_total"
    }


def settled_refusals(served: ServedService, timeout: float = 30.0) -> dict[str, float]:
    """:func:`refused` once the workers' flushers have applied what earlier tests caused (the
    431 of the test before is counted up to REQUEST_FLUSH_SECONDS after it)."""
    deadline = time.monotonic() + timeout
    last = refused(served)
    while True:
        time.sleep(REQUEST_FLUSH_SECONDS + 0.3)
        now = refused(served)
        if now == last:
            return now
        assert time.monotonic() < deadline, "refusal counts kept changing with no refusals"
        last = now


def refusal_answer(sock: socket.socket) -> tuple[int, str, dict[str, str]]:
    """The status, X-Request-ID and JSON body of an answer the server closes after."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers["x-request-id"], json.loads(body)


def test_requests_refused_before_the_service_are_counted_and_have_an_access_log_line(
    service: tuple[ServedService, Path],
) -> None:
    """uvicorn's 400 for a malformed request, and the 431 and 408 of a head too large or too
    slow, were only a warning in the server's log: no metric, no access-log line, no request
    id. Each is counted by reason on /metrics and logged with the request id the client got."""
    served, store = service
    # The series exist before the first refusal, at 0 (increase() sees the first one).
    before = settled_refusals(served)
    assert set(before) == {"malformed", "head_too_large", "head_timeout"}
    address = ("127.0.0.1", served.port)
    with socket.create_connection(address, timeout=TIMEOUT_SECONDS + 10) as slow:
        slow.sendall(b"GET /model HTTP/1.1\r\nHost: test\r\nX-Padding: aaa")
        answers = {}
        with socket.create_connection(address, timeout=10) as malformed:
            malformed.sendall(b"GET /model HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n")
            answers["malformed"] = refusal_answer(malformed)
        with socket.create_connection(address, timeout=10) as large:
            # The piece a head begins in is not counted (it may end the previous request):
            # sent apart, the rest is counted as it arrives.
            large.sendall(b"GET /model HTTP/1.1\r\nHost: test\r\nX-Padding: ")
            time.sleep(0.5)
            large.sendall(b"a" * 70_000)
            answers["head_too_large"] = refusal_answer(large)
        answers["head_timeout"] = refusal_answer(slow)
    for reason, (status, request_id, body) in answers.items():
        assert status == STATUSES[reason], (reason, body)
        assert body["error"] == "invalid_request"
        assert body["request_id"] == request_id
    wait_until(
        lambda: (
            {r: n - before[r] for r, n in refused(served).items()}
            == {"malformed": 1, "head_too_large": 1, "head_timeout": 1}
        ),
        timeout=30,
    )

    def access_lines() -> dict[str, dict[str, object]] | None:
        lines = {}
        for line in served.read_log().splitlines():
            if line.startswith('{"time"') and '"type":"access"' in line:
                record = json.loads(line)
                lines[record["request_id"]] = record
        found = {reason: lines.get(request_id) for reason, (_, request_id, _) in answers.items()}
        return found if all(found.values()) else None

    lines = wait_until(access_lines, timeout=30)
    for reason, line in lines.items():
        assert (line["status"], line["reason"], line["field"]) == (
            STATUSES[reason],
            reason,
            "$request",
        )
        assert (line["endpoint"], line["model"], line["transport"]) == (None, None, "http")
    assert lines["head_timeout"]["latency_ms"] >= TIMEOUT_SECONDS * 1000
    # Not rows of the prediction log: no endpoint, no body, no model to record.
    for _, request_id, _ in answers.values():
        assert rejection(store, request_id) is None


# A head over the limit, and a body of 1 MB after it: what a client posting with an oversized
# header (a cookie, a token) sends, and keeps sending while the refusal comes back.
OVERSIZED_POST = (
    b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nX-Padding: %s\r\n\r\n" % (1 << 20, b"a" * 100_000)
) + b" " * (1 << 20)


@pytest.mark.parametrize("attempt", range(5))
def test_a_refused_client_still_sending_reads_the_whole_refusal(
    service: tuple[ServedService, Path], attempt: int
) -> None:
    """The refusal was written and the connection closed with the client's bytes still unread
    (the rest of a body sent with the head): the kernel resets such a connection, and the client
    saw 'connection reset by peer', in its write or its read, rather than the 431 and its
    request id. Tried several times: the reset races with the client's reads."""
    served, _ = service
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(OVERSIZED_POST)
        status, request_id, body = refusal_answer(sock)
    assert status == 431, body
    assert body["error"] == "invalid_request"
    assert body["request_id"] == request_id


def test_a_refused_head_still_arriving_is_answered_to_its_client(
    service: tuple[ServedService, Path],
) -> None:
    """A head cut off while it still arrives: the client, writing on, gets the 431 whole."""
    served, _ = service
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /model HTTP/1.1\r\nHost: test\r\nX-Padding: ")
        # Writing on until the answer is there to read, as a client streaming its request does
        # (bounded: the server answers once it has read 64 KB more).
        for _ in range(1024):
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(b"a" * 16384)
        status, request_id, body = refusal_answer(sock)
    assert status == 431, body
    assert body["request_id"] == request_id


def cut_off_within(sock: socket.socket, chunk: bytes, pause: float, seconds: float) -> bool:
    """Whether the server cuts off ``sock`` while ``chunk`` is sent on it again and again (with
    ``pause`` between) for ``seconds``, the answer never read."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            sock.sendall(chunk)
            time.sleep(pause)
    except ConnectionError:
        return True
    return False


@pytest.mark.parametrize("pace", ["flood", "trickle"])
def test_a_refused_client_sending_on_cannot_hold_its_connection(
    service: tuple[ServedService, Path], pace: str
) -> None:
    """What a refused client still sends is read and dropped so that it can read its answer,
    but for at most LINGER_SECONDS and LINGER_BYTES: one sending on without end, fast or slow,
    is cut off."""
    served, _ = service
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        # Refused at once: the rest of the head, read after the piece it began in, is over 64 KB.
        sock.sendall(b"GET /model HTTP/1.1\r\nHost: test\r\nX-Padding: ")
        time.sleep(0.5)
        sock.sendall(b"a" * 70_000)
        started = time.monotonic()
        if pace == "flood":
            assert cut_off_within(sock, b"a" * 65536, 0, 60)
        else:
            assert cut_off_within(sock, b"a", 0.05, 60)
    # Well within the head's timeout (TIMEOUT_SECONDS), which would also end a trickle.
    assert time.monotonic() - started < LINGER_SECONDS + 8
