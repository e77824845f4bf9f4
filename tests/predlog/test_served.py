"""The issue's proofs, against a real `bentoml serve` with 2 workers stopped by SIGTERM:

- N concurrent valid requests and M invalid ones, then SIGTERM: exactly N's instance rows and M
  rejection rows, with the ids the clients received, on SQLite and on PostgreSQL;
- PostgreSQL cut off mid-load: every prediction still answered, every row there after recovery,
  the workers' counters tell the story (spooled, replayed, nothing dropped); then SIGTERM in the
  middle of the load: every answered request is recorded, and only those.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import tritonclient.grpc as triton_grpc

from models.contract import CONTRACT
from service.predlog.store import Store
from tests.oip_support import rest_body, triton_inputs
from tests.predlog.helpers import TcpProxy, row_keys
from tests.support import ServedService, example_rows, refused_value, wait_until

ROWS = example_rows(200)
BATCH_ROWS = 500  # rows per store transaction in the outage test


@dataclass(frozen=True)
class Answer:
    status: int
    request_id: str
    instances: int  # rows the log must hold for it: instances if accepted, else 0


def payloads(n_valid: int, n_invalid: int) -> Iterator[tuple[bytes, int]]:
    """(body, instances) pairs: valid bodies of 1 to 4 instances, and 5 kinds of invalid ones."""
    # Any model's first feature, given a value of its type that its domain refuses.
    refused = CONTRACT.features[0]
    missing = CONTRACT.feature_names[0]
    refused_field = CONTRACT.excluded[0] if CONTRACT.excluded else "unknown_feature"
    invalid = [
        b'{"instances": [',
        json.dumps({"instances": [{**ROWS[0], refused.name: refused_value(refused)[0]}]}).encode(),
        json.dumps({"instances": [{k: v for k, v in ROWS[1].items() if k != missing}]}).encode(),
        json.dumps({"instances": [{**ROWS[2], refused_field: "yes"}]}).encode(),
        b'{"instances": []}',
    ]
    for i in range(max(n_valid, n_invalid)):
        if i < n_valid:
            k = 1 + i % 4
            yield json.dumps({"instances": ROWS[i % 190 : i % 190 + k]}).encode(), k
        if i < n_invalid:
            yield invalid[i % len(invalid)], 0


def send(client: httpx.Client, body: bytes, instances: int) -> Answer | None:
    """The answer, or None when the server took no request (refused or closed connection)."""
    try:
        response = client.post("/predict", content=body)
    except httpx.TransportError:
        return None
    assert "Traceback" not in response.text
    # 503 is allowed only while a worker shuts down (and must be recorded like any refusal).
    assert response.status_code in (200 if instances else 400, 503), response.text
    accepted = response.status_code == 200
    return Answer(response.status_code, response.json()["request_id"], instances if accepted else 0)


def fire(client: httpx.Client, bodies: Iterator[tuple[bytes, int]]) -> list[Answer | None]:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda p: send(client, *p), bodies))


def expected_keys(answers: list[Answer]) -> tuple[set[tuple[str, int]], set[str]]:
    preds = {(a.request_id, i) for a in answers if a.status == 200 for i in range(a.instances)}
    return preds, {a.request_id for a in answers if a.status != 200}


def closing_summaries(output: str) -> list[dict[str, int]]:
    """The counters each worker logs when its prediction log closes."""
    found = re.findall(r"prediction log closed: ([a-z_=0-9, ]+);", output)
    return [{k: int(v) for k, v in (kv.split("=") for kv in line.split(", "))} for line in found]


def access_lines(output: str) -> dict[str, int]:
    lines = [orjson.loads(line) for line in output.splitlines() if line.startswith('{"time"')]
    return {line["request_id"]: line["status"] for line in lines if line["type"] == "access"}


def log_env(url: str, spool: Path, **extra: str) -> dict[str, str]:
    return {"PREDICTION_LOG_URL": url, "PREDICTION_LOG_SPOOL_DIR": str(spool), **extra}


def held_in_memory(url: str, spool: Path) -> dict[str, str]:
    """Settings whose writers wait an hour, or 5000 rows, between commits: the rows can only
    reach the store through the flush at shutdown."""
    return log_env(
        url, spool, PREDICTION_LOG_FLUSH_INTERVAL_SECONDS="3600", PREDICTION_LOG_BATCH_SIZE="5000"
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_answer_of_a_concurrent_load_is_recorded_by_sigterm(
    model_tag: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(f"{backend}_url")
    with ServedService(env=held_in_memory(url, tmp_path / "spool"), workers=2) as served:
        with httpx.Client(base_url=served.url, timeout=30) as client:
            answers = fire(client, payloads(200, 40))
        assert None not in answers
        # The other transports go through the same predictor, hence the same log.
        with triton_grpc.InferenceServerClient(f"127.0.0.1:{served.grpc_port}") as grpc_client:
            for i in range(3):
                inputs = triton_inputs(triton_grpc, ROWS[i : i + 5])
                grpc_client.infer(CONTRACT.model_name, inputs, request_id=f"grpc-{i}")
        v2 = httpx.post(
            f"{served.url}/v2/models/{CONTRACT.model_name}/infer",
            json={**rest_body(ROWS[:2]), "id": "v2-rest"},
        )
        assert v2.status_code == 200, v2.text
        others = [Answer(200, f"grpc-{i}", 5) for i in range(3)] + [Answer(200, "v2-rest", 2)]
        store = Store(url)
        assert row_keys(store) == (set(), set())  # everything is still queued in the workers
        assert served.stop() == 0
    valid = [a for a in answers if a is not None and a.status == 200]
    assert len(valid) == 200
    assert row_keys(store) == expected_keys([a for a in answers if a is not None] + others)
    assert len(row_keys(store)[1]) == 40
    (grpc_row, *_) = store.find("grpc-1")["predictions"]
    assert (grpc_row["transport"], grpc_row["features"]) == ("grpc", ROWS[1])
    assert store.find("v2-rest")["predictions"][0]["endpoint"].startswith("/v2/models/")
    store.close()
    summaries = closing_summaries(served.output)
    assert len(summaries) == 2  # both workers closed their log
    assert sum(s["written"] for s in summaries) == sum(a.instances for a in valid) + 40 + 17
    assert sum(s["spooled"] + s["dropped"] for s in summaries) == 0
    assert not list((tmp_path / "spool").glob("*.spool"))
    answered = [a for a in answers if a is not None] + others
    assert access_lines(served.output) == {a.request_id: a.status for a in answered}


def test_a_log_location_that_cannot_be_written_fails_no_prediction(
    model_tag: str, tmp_path: Path
) -> None:
    """The volume of the store and the spool is missing or read-only (here a file where their
    directories must go): the service starts, answers, counts the records it could not keep and
    stops cleanly."""
    volume = tmp_path / "volume"
    volume.write_text("not a directory")
    env = log_env(f"sqlite:///{volume}/predictions.db", volume / "spool")
    with ServedService(env=env, workers=1) as served:
        with httpx.Client(base_url=served.url, timeout=30) as client:
            answers = fire(client, payloads(20, 5))
        assert served.stop() == 0
    assert None not in answers
    (summary,) = closing_summaries(served.output)
    assert summary["dropped"] == sum(a.instances for a in answers if a is not None) + 5
    assert summary["written"] == summary["spooled"] == 0
    assert "cannot create the prediction log spool" in served.output
    assert "Traceback" not in served.output


def test_rows_a_killed_worker_held_in_memory_are_counted_as_dropped(
    model_tag: str, sqlite_url: str, tmp_path: Path
) -> None:
    """Killed outright (SIGKILL, the OOM killer), a worker cannot write what its log holds in
    memory, and BentoML starts another. Every row of every answered request must then be in the
    store or counted as dropped (``worker_died``), never silently missing."""
    # The rows can only leave memory at shutdown: all of them die with the workers.
    with ServedService(env=held_in_memory(sqlite_url, tmp_path / "spool"), workers=2) as served:
        with httpx.Client(base_url=served.url, timeout=30) as client:
            answers = fire(client, payloads(100, 20))
        killed = served.worker_pids()
        assert len(killed) == 2
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            if len(served.worker_pids() - killed) < 2:
                return False
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{served.url}/readyz", timeout=2).status_code == 200
            return False

        wait_until(replaced, timeout=180, interval=0.5)
        assert served.stop() == 0
    answered = [a for a in answers if a is not None]
    assert len(answered) == 120
    held = sum(a.instances for a in answered if a.status == 200) + 20
    store = Store(sqlite_url)
    assert row_keys(store) == (set(), set())
    store.close()
    summaries = closing_summaries(served.output)
    assert len(summaries) == 2  # the replacements, which found the ledgers
    assert sum(s["dropped"] for s in summaries) == held
    assert sum(s["written"] + s["spooled"] for s in summaries) == 0
    assert "counted as dropped (worker_died)" in served.output
    assert not list((tmp_path / "spool").glob("*.ledger"))


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    yield proxy
    proxy.close()


def test_postgresql_cut_off_mid_load_then_sigterm_mid_load_loses_nothing(
    model_tag: str, postgresql_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    env = log_env(
        proxy.url_for(postgresql_url),
        spool,
        PREDICTION_LOG_FLUSH_INTERVAL_SECONDS="0.1",
        PREDICTION_LOG_RETRY_MAX_SECONDS="0.5",
        PREDICTION_LOG_BATCH_SIZE=str(BATCH_ROWS),
    )
    answers: list[Answer | None] = []
    failures: list[BaseException] = []  # send()'s assertions, raised in the load threads
    stop = threading.Event()
    served = ServedService(env=env, workers=2).start()
    try:  # a failure must not leave the server and the load running
        with httpx.Client(base_url=served.url, timeout=30) as client:

            def load() -> None:
                try:
                    for body, instances in payloads(10**6, 10**6):
                        if stop.is_set():
                            return
                        answers.append(send(client, body, instances))
                except BaseException as exc:  # a thread's exception would only be printed
                    failures.append(exc)

            threads = [threading.Thread(target=load) for _ in range(4)]
            for thread in threads:
                thread.start()
            wait_until(lambda: len(answers) >= 10, timeout=60)  # the load is under way
            proxy.cut()  # PostgreSQL refuses connections; open ones are reset
            wait_until(lambda: list(spool.glob("*.spool")))
            # Predictions are answered during the outage (fails after 60 s without 10 answers).
            spooling = len(answers)
            wait_until(lambda: len(answers) - spooling >= 10, timeout=60)
            proxy.restore()
            # Replayed while serving.
            wait_until(lambda: not list(spool.glob("*.spool")), timeout=60)
            replayed_at = len(answers)
            wait_until(lambda: len(answers) - replayed_at >= 5, timeout=60)
            before_sigterm = len(answers)
            assert served.stop() == 0  # SIGTERM with requests in flight
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        stop.set()
        served.stop()
    # Every prediction was answered, during the outage too; after SIGTERM, requests find the
    # port closed (no answer, hence no row).
    assert failures == []
    assert None not in answers[:before_sigterm]
    answered = [a for a in answers if a is not None]
    assert all(a.status in (200, 400, 503) for a in answered)
    store = Store(postgresql_url)
    expected = expected_keys(answered)
    assert row_keys(store) == expected
    store.close()
    summaries = closing_summaries(served.output)
    assert len(summaries) == 2
    spooled = sum(s["spooled"] for s in summaries)
    assert spooled > 0
    # A batch whose commit reached PostgreSQL just before the cut but whose answer was lost is
    # spooled, then found in the store by the replay and not counted as replayed
    # (docs/prediction-log.md, "Counters"):
    # at most the one batch each worker had in flight at the cut.
    replayed = sum(s["replayed"] for s in summaries)
    assert spooled - 2 * BATCH_ROWS <= replayed <= spooled
    assert sum(s["dropped"] for s in summaries) == 0
    assert sum(s["write_errors"] for s in summaries) > 0
    assert sum(s["written"] for s in summaries) + spooled == len(expected[0]) + len(expected[1])
    assert "unavailable" in served.output  # the outage was logged
    assert not list(spool.glob("*.spool"))


def test_with_postgresql_hung_the_log_is_spooled_within_its_shutdown_timeout_of_sigterm(
    model_tag: str, postgresql_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """Drift's thread waits on the hung store too (up to 10 s): that wait must not come before
    PREDICTION_LOG_SHUTDOWN_TIMEOUT_SECONDS, pushing the spooling of what is in memory towards
    the orchestrator's SIGKILL."""
    spool = tmp_path / "spool"
    env = log_env(
        proxy.url_for(postgresql_url),
        spool,
        PREDICTION_LOG_SHUTDOWN_TIMEOUT_SECONDS="2",
        DRIFT_ENABLED="true",
        DRIFT_INTERVAL_SECONDS="1",  # its thread reads the store every half second
        DRIFT_SNAPSHOT_DIR=str(tmp_path / "drift"),
    )
    with ServedService(env=env, workers=1) as served:
        proxy.pause()  # connections stay open, nothing answers: a hung server
        with httpx.Client(base_url=served.url, timeout=30) as client:
            answers = fire(client, payloads(20, 0))
        time.sleep(2)
        stopped: list[int] = []
        stopper = threading.Thread(target=lambda: stopped.append(served.stop()))
        started = time.monotonic()
        stopper.start()
        wait_until(lambda: "prediction log closed" in served.read_log(), timeout=60)
        took = time.monotonic() - started
        stopper.join(60)
    assert stopped == [0]
    assert None not in answers
    assert "did not answer within 2s of shutdown" in served.output
    (summary,) = closing_summaries(served.output)
    assert summary["spooled"] == sum(a.instances for a in answers if a is not None)
    assert took < 8, f"the log closed {took:.1f}s after SIGTERM"
