"""The committed Alertmanager configuration's inhibition, in a real Alertmanager on loopback.

Alerts are posted to its API as Prometheus would send them: one replica down (ServiceDown) must
not hide the job-wide alerts the healthy replicas raise; the whole job down (ServiceJobDown) hides
them and each instance's ServiceDown; the prediction-log store down (PredictionLogStoreDown) hides
the alerts that follow from it, not the rows lost; the Watchdog heartbeat is never held back.
The probes' alerts (GrpcProbeFailing, ReadinessProbeFailing) are held back with the whole job
down, not with one replica down.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.monitoring.support import ALERTMANAGER_YML, tool
from tests.support import start_on_a_free_port, wait_until

JOB = "credit-risk-service"


def probe_alerts(job: str) -> list[dict[str, str]]:
    """The probes' alerts of ``job`` as alerts.yml labels them: the probed service's job and
    the target probed."""
    return [
        {
            "alertname": "GrpcProbeFailing",
            "job": job,
            "instance": "grpc.example.com:3001",
            "severity": "page",
        },
        {
            "alertname": "ReadinessProbeFailing",
            "job": job,
            "instance": "https://credit-risk.example.com/readyz",
            "severity": "page",
        },
    ]


@pytest.fixture(scope="module")
def alertmanager() -> Iterator[str]:
    work = Path(tempfile.mkdtemp(prefix="alertmanager-inhibition-"))
    process, port = start_on_a_free_port(
        lambda port: [
            tool("prometheus-alertmanager"),
            f"--config.file={ALERTMANAGER_YML}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        work / "alertmanager.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        process.terminate()
        process.wait(30)


def post(url: str, *alerts: dict[str, str]) -> None:
    now = datetime.now(UTC)
    body = [
        {
            "labels": labels,
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=5)).isoformat(),
        }
        for labels in alerts
    ]
    httpx.post(f"{url}/api/v2/alerts", json=body, timeout=5).raise_for_status()


def inhibited(url: str, alertname: str, job: str) -> bool | None:
    """Whether the alert is inhibited; None while Alertmanager does not have it."""
    response = httpx.get(
        f"{url}/api/v2/alerts",
        params={"filter": [f'alertname="{alertname}"', f'job="{job}"']},
        timeout=5,
    )
    response.raise_for_status()
    found = response.json()
    if not found:
        return None
    (alert,) = found
    return bool(alert["status"]["inhibitedBy"])


def inhibition(url: str, alertname: str, job: str) -> bool:
    """Whether the alert is inhibited, once Alertmanager has it."""
    wait_until(lambda: inhibited(url, alertname, job) is not None, timeout=10)
    return bool(inhibited(url, alertname, job))


def whole_job_down(url: str, job: str) -> None:
    """ServiceJobDown, ServiceDown and a symptom of ``job``; returns once the symptom is
    inhibited, so that Alertmanager's inhibitor has also taken in every alert posted before."""
    post(
        url,
        {"alertname": "ServiceJobDown", "job": job, "severity": "page"},
        {"alertname": "ServiceDown", "job": job, "instance": "b:3000", "severity": "page"},
        {"alertname": "ErrorBudgetBurnFast", "job": job, "severity": "page"},
    )
    wait_until(lambda: inhibited(url, "ErrorBudgetBurnFast", job), timeout=10)


def test_one_replica_down_does_not_inhibit_the_job_wide_alerts(alertmanager: str) -> None:
    job = f"{JOB}-one-down"
    post(
        alertmanager,
        {"alertname": "ServiceDown", "job": job, "instance": "a:3000", "severity": "page"},
        {"alertname": "ErrorBudgetBurnFast", "job": job, "severity": "page"},
        {"alertname": "PredictionLogLagging", "job": job, "severity": "ticket"},
        # what clients dial fails while a replica serves on: the probes' own pages
        *probe_alerts(job),
    )
    whole_job_down(alertmanager, f"{JOB}-marker")
    assert inhibition(alertmanager, "ServiceDown", job) is False
    assert inhibition(alertmanager, "ErrorBudgetBurnFast", job) is False
    assert inhibition(alertmanager, "PredictionLogLagging", job) is False
    assert inhibition(alertmanager, "GrpcProbeFailing", job) is False
    assert inhibition(alertmanager, "ReadinessProbeFailing", job) is False


def test_the_whole_job_down_inhibits_its_symptom_alerts(alertmanager: str) -> None:
    job = f"{JOB}-all-down"
    post(
        alertmanager,
        {"alertname": "DriftMonitorFailing", "job": job, "severity": "ticket"},
        # drift is read from a shared store: it stays visible
        {"alertname": "PredictionDrift", "job": job, "severity": "ticket"},
        # another job's alert is not this job's symptom
        {"alertname": "ErrorBudgetBurnFast", "job": "other", "severity": "page"},
        # the probes fail with the service: sent in the moment before the scrapes fail too
        *probe_alerts(job),
    )
    whole_job_down(alertmanager, job)
    assert inhibition(alertmanager, "GrpcProbeFailing", job) is True
    assert inhibition(alertmanager, "ReadinessProbeFailing", job) is True
    assert inhibition(alertmanager, "ErrorBudgetBurnFast", job) is True
    assert inhibition(alertmanager, "DriftMonitorFailing", job) is True
    assert inhibition(alertmanager, "ServiceJobDown", job) is False
    # one page for the outage, not one more per instance
    assert inhibition(alertmanager, "ServiceDown", job) is True
    assert inhibition(alertmanager, "PredictionDrift", job) is False
    assert inhibition(alertmanager, "ErrorBudgetBurnFast", "other") is False


def test_the_store_down_holds_back_its_consequences_but_not_lost_rows(alertmanager: str) -> None:
    job = f"{JOB}-store-down"
    post(
        alertmanager,
        {"alertname": "PredictionLogStoreDown", "job": job, "severity": "ticket"},
        {"alertname": "PredictionLogLagging", "job": job, "severity": "ticket"},
        {"alertname": "DriftMonitorStale", "job": job, "severity": "ticket"},
        {"alertname": "DriftMonitorFailing", "job": job, "severity": "ticket"},
        # the drift window is read from the store: rows not written there never reach it
        {"alertname": "DriftStarved", "job": job, "severity": "ticket"},
        # rows lost once the spool is full: data gone, worth a ticket of its own
        {"alertname": "PredictionLogRowsDropped", "job": job, "severity": "ticket"},
        # the same symptom of another job, whose store is not known to be down
        {"alertname": "PredictionLogLagging", "job": "other", "severity": "ticket"},
    )
    wait_until(lambda: inhibited(alertmanager, "PredictionLogLagging", job), timeout=10)
    assert inhibition(alertmanager, "DriftMonitorStale", job) is True
    assert inhibition(alertmanager, "DriftMonitorFailing", job) is True
    assert inhibition(alertmanager, "DriftStarved", job) is True
    assert inhibition(alertmanager, "PredictionLogStoreDown", job) is False
    assert inhibition(alertmanager, "PredictionLogRowsDropped", job) is False
    assert inhibition(alertmanager, "PredictionLogLagging", "other") is False


def test_the_heartbeat_is_never_held_back(alertmanager: str) -> None:
    # Watchdog carries no job: were an inhibit rule to match it, an outage would also stop the
    # dead-man's switch's beats, which would read as the alerting pipeline down
    job = f"{JOB}-heartbeat"
    post(
        alertmanager,
        {"alertname": "Watchdog", "severity": "none"},
        {"alertname": "PredictionLogStoreDown", "job": job, "severity": "ticket"},
        {"alertname": "PredictionLogLagging", "job": job, "severity": "ticket"},
    )
    whole_job_down(alertmanager, job)
    wait_until(lambda: inhibited(alertmanager, "PredictionLogLagging", job), timeout=10)
    response = httpx.get(
        f"{alertmanager}/api/v2/alerts", params={"filter": 'alertname="Watchdog"'}, timeout=5
    )
    response.raise_for_status()
    (watchdog,) = response.json()
    assert watchdog["status"]["inhibitedBy"] == []
    assert [r["name"] for r in watchdog["receivers"]] == ["heartbeat"]
