"""Incidents reproduced on the monitoring stack (tests/monitoring/stack.py: a served service, a
real Prometheus and Alertmanager with the committed rules and routing): the prediction-log store
(the drift monitor's too) refusing connections, a flood of invalid requests and a worker killed
outright (the service down: test_live). The alert for each reaches the receiver its severity
names, nothing else pages, and the runbook's first checks show the cause."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from models.contract import CONTRACT
from tests.monitoring.stack import Stack, monitoring_stack
from tests.support import ROOT, example_rows, wait_until

# Nothing listens on port 1: every connection is refused, as by a PostgreSQL that is down.
STORE = "postgresql://postgres@127.0.0.1:1/test"


@pytest.fixture(scope="module")
def stack(model_tag: str) -> Iterator[Stack]:
    env = {
        "PREDICTION_LOG_URL": STORE,
        "PREDICTION_LOG_SPOOL_DIR": tempfile.mkdtemp(prefix="incident-spool-"),
        # the drift monitor claims and reads its runs in the same store
        "DRIFT_ENABLED": "true",
        "DRIFT_INTERVAL_SECONDS": "2",
    }
    with monitoring_stack(env) as running:
        yield running


def pages(stack: Stack) -> list[dict[str, Any]]:
    return [n for n in stack.webhook.notifications if n["receiver"] == "page"]


def value(stack: Stack, expr: str) -> float:
    (sample,) = stack.query(expr)
    return float(sample["value"][1])


def test_a_store_refusing_connections_raises_a_ticket_and_the_runbook_shows_why(
    stack: Stack,
) -> None:
    wait_until(stack.scraped, timeout=30, interval=0.5)
    with httpx.Client(base_url=stack.service.url, timeout=30) as client:
        for row in example_rows(5):  # answered meanwhile, their rows spooled
            assert client.post("/predict", json={"instances": [row]}).status_code == 200
    alerts = wait_until(
        lambda: stack.webhook.firing("PredictionLogStoreDown"), timeout=60, interval=0.5
    )
    assert alerts[0]["receiver"] == "ticket"
    assert alerts[0]["annotations"]["runbook_url"] == "monitoring/RUNBOOK.md#predictionlogstoredown"
    # where the runbook's commands are to be run
    instance = f"127.0.0.1:{stack.service.port}"
    assert alerts[0]["labels"]["instance"] == instance
    assert instance in alerts[0]["annotations"]["summary"]
    # The runbook's first checks: the gauge, the failing operation, the status command
    (down,) = stack.query("min by (instance) (prediction_log_store_up)")
    assert (down["metric"]["instance"], float(down["value"][1])) == (instance, 0)

    def failing() -> set[str]:
        errors = stack.query(
            "sum by (instance, operation) (rate(prediction_log_store_errors_total[5m]))"
        )
        return {r["metric"]["operation"] for r in errors if float(r["value"][1]) > 0}

    # rate() needs a failure between two scrapes: the writer counts one per attempt, its waits
    # doubling to 30 s, and the alert fires within seconds of the first scrape, which may have
    # come after the latest attempt (then nothing rises until the next one, 16 s or more later).
    assert wait_until(failing, timeout=60, interval=0.5) == {"connect"}
    spool = stack.service.env["PREDICTION_LOG_SPOOL_DIR"]
    assert wait_until(lambda: value(stack, "max(prediction_log_spool_bytes)") > 0, timeout=10)
    status = subprocess.run(
        [sys.executable, "-m", "service.predlog", "status"],
        cwd=ROOT,
        env={**os.environ, "PREDICTION_LOG_URL": STORE, "PREDICTION_LOG_SPOOL_DIR": spool},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 1, status.stderr
    report = json.loads(status.stdout)
    assert report["reachable"] is False
    assert "port 1 failed: Connection refused" in report["error"]
    assert report["spool"]["segments"] >= 1
    # Drift cannot run either (it claims its runs in the same store): DriftMonitorStale fires,
    # with no completed run ever read, but Alertmanager holds it back while the store is down:
    # one store outage, one ticket.
    wait_until(
        lambda: any(a["status"]["inhibitedBy"] for a in stack.alerts("DriftMonitorStale")),
        timeout=60,
        interval=0.5,
    )
    assert value(stack, "max(model_drift_last_run_timestamp_seconds)") == 0
    time.sleep(3)  # three of the stack's 1 s group intervals, in which it would have been sent
    assert stack.webhook.firing("DriftMonitorStale") == []
    assert pages(stack) == []


def test_a_flood_of_invalid_requests_raises_a_ticket_not_a_page(stack: Stack) -> None:
    wait_until(stack.scraped, timeout=30, interval=0.5)
    numeric = CONTRACT.numeric_features()[0]
    young = {**example_rows(1)[0], numeric.name: numeric.minimum - 1}

    def flooded() -> list[dict[str, Any]]:
        with httpx.Client(base_url=stack.service.url, timeout=30) as client:
            for _ in range(20):
                assert client.post("/predict", json={"instances": [young]}).status_code == 400
                broken = client.post("/predict", content=b"{", headers={"Content-Type": "json"})
                assert broken.status_code == 400
        return stack.webhook.firing("ValidationFailureSpike")

    alerts = wait_until(flooded, timeout=120, interval=1)
    assert alerts[0]["receiver"] == "ticket"
    # The runbook's first check names the fields and rules broken
    top = stack.query(
        "topk(10, sum by (field, reason) (rate(inference_validation_failures_total[15m])))"
    )
    broken = {(r["metric"]["field"], r["metric"]["reason"]) for r in top}
    assert {(numeric.name, "out_of_range"), ("$request", "invalid_json")} <= broken
    # 4xx are the clients' errors, not the service's: no error budget spent, nothing paged
    assert value(stack, "job:inference_request_errors:ratio_rate5m") == 0
    assert stack.webhook.firing("ErrorBudgetBurnFast") == []
    assert pages(stack) == []


def test_a_worker_killed_outright_raises_a_ticket_naming_its_instance(stack: Stack) -> None:
    # Its requests in flight are never answered and no request metric counts them: only the
    # death itself (service_worker_deaths_total) tells the on-call.
    wait_until(stack.scraped, timeout=30, interval=0.5)
    assert stack.webhook.firing("WorkersDying") == []
    os.kill(min(stack.service.worker_pids()), signal.SIGKILL)
    alerts = wait_until(lambda: stack.webhook.firing("WorkersDying"), timeout=60, interval=0.5)
    assert alerts[0]["receiver"] == "ticket"
    assert alerts[0]["labels"]["instance"] == f"127.0.0.1:{stack.service.port}"
    assert alerts[0]["annotations"]["runbook_url"] == "monitoring/RUNBOOK.md#workersdying"
    # The runbook's first check counts the one death
    deaths = "sum by (instance) (increase(service_worker_deaths_total[1h]))"
    assert round(value(stack, deaths)) == 1
    assert pages(stack) == []
