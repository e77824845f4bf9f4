"""The monitoring stack end to end under normal and drifted traffic (tests/monitoring/stack.py:
a served service, a real Prometheus and Alertmanager with the committed configuration, a real
blackbox exporter probing the service from outside): the dashboards' and the runbook's queries
return data, the drift alerts and ServiceJobDown reach the webhook (ServiceDown and the failing
probes' alerts held back), the Watchdog heartbeat reaches its own receiver and no other, the
probes succeed on the service and page for an endpoint that does not answer."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as triton_grpc

from models.contract import CONTRACT
from tests.drift.helpers import sample
from tests.monitoring.blackbox import probe
from tests.monitoring.promql import (
    expressions,
    metric_names,
    runbook_code,
    runbook_names,
    runbook_queries,
)
from tests.monitoring.stack import Stack, monitoring_stack
from tests.monitoring.support import HEARTBEAT, PROBE_JOBS, recorded_names
from tests.oip_support import triton_inputs
from tests.support import (
    ROOT,
    ServedService,
    above_training,
    example_rows,
    free_port,
    wait_until,
)

PROBE_ALERTS = {"grpc": "GrpcProbeFailing", "readyz": "ReadinessProbeFailing"}


@pytest.fixture(scope="module")
def stack(model_tag: str) -> Iterator[Stack]:
    env = {"DRIFT_ENABLED": "true", "DRIFT_INTERVAL_SECONDS": "2", "DRIFT_MIN_SAMPLES": "50"}
    with monitoring_stack(env, probes=True) as running:
        yield running


def send_traffic(service: ServedService) -> None:
    """What the dashboards show: accepted and refused requests over HTTP and gRPC, values
    beyond the training range, a request the HTTP server refuses before any route."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    rows = example_rows(60)
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for row in rows:
            assert client.post("/predict", json={"instances": [row]}).status_code == 200
        assert client.post("/predict", json={"instances": rows[:20]}).status_code == 200
        old = {**rows[0], **above_training(1)}
        assert client.post("/predict", json={"instances": [old]}).status_code == 200
        numeric = CONTRACT.numeric_features()[0]
        too_small = {**rows[0], numeric.name: numeric.minimum - 1}
        assert client.post("/predict", json={"instances": [too_small]}).status_code == 400
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{service.grpc_port}") as grpc_client:
        grpc_client.infer(CONTRACT.model_name, triton_inputs(triton_grpc, rows[:3]))


def test_under_normal_traffic_every_dashboard_query_returns_data(stack: Stack) -> None:
    # Prometheus hands new targets to its scraper every 5 s: the first scrape takes ~10 s
    wait_until(stack.scraped, timeout=30, interval=0.5)
    pending = [(panel, expr) for _, panel, expr in expressions()]
    # The drift panels wait for the first drift run: seconds, but minutes on a loaded machine
    # (the tests of tests/drift allow 240 s).
    deadline = time.monotonic() + 240
    empty = pending
    while empty and time.monotonic() < deadline:
        send_traffic(stack.service)
        time.sleep(2)  # two more scrapes, so that rates over the last minute have two points
        empty = [(panel, expr) for panel, expr in empty if not stack.query(expr)]
    assert empty == []
    assert len(pending) > 30


def test_every_runbook_query_runs_on_metrics_prometheus_has(stack: Stack) -> None:
    # What the on-call pastes from the runbook: valid PromQL (Prometheus answers it) on series
    # Prometheus has, and no bare name that selects nothing (a histogram's name: its series are
    # name_bucket, name_sum, name_count).
    wait_until(stack.scraped, timeout=30, interval=0.5)
    send_traffic(stack.service)
    # the last run's gauges appear with the first completed drift run (minutes on a loaded
    # machine, as for the drift panels)
    wait_until(
        lambda: stack.query("model_drift_last_run_duration_seconds"), timeout=240, interval=2
    )
    version = httpx.get(f"{stack.service.url}/drift", timeout=10).json()["model"].split(":")[1]
    with httpx.Client(base_url=stack.prometheus, timeout=10) as prometheus:

        def names() -> set[str] | None:
            # the workers apply request metrics once per REQUEST_FLUSH_SECONDS, then a scrape
            found = set(prometheus.get("/api/v1/label/__name__/values").json()["data"])
            return found if "inference_validation_failures_total" in found else None

        series = wait_until(names, timeout=30, interval=1)
        families = set(prometheus.get("/api/v1/metadata").json()["data"])
    # Span export is counted only while traces are exported (off here): the docs' table
    text = (ROOT / "docs" / "metrics-and-traces.md").read_text()
    tracing = set(re.findall(r"^\| `(trace_spans_[a-z_]+)` \| counter \|", text, re.M))
    known = series | recorded_names() | tracing
    queries = runbook_queries({"<version>": version})
    assert len(queries) > 25
    for expr in queries:
        stack.query(expr)  # 200: valid PromQL
    assert {name for expr in queries for name in metric_names(expr)} - known == set()
    assert {name for name in runbook_names() if name in families} - known == set()


def predlog(command: str, service: ServedService, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A `python -m service.predlog` command of the runbook, run on the instance's store."""
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "service.predlog"], command
    return subprocess.run(
        [sys.executable, *args[1:]],
        cwd=cwd,
        env={**os.environ, "PREDICTION_LOG_URL": service.env["PREDICTION_LOG_URL"]},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_runbooks_prediction_log_commands_work_on_the_served_store(
    stack: Stack, tmp_path: Path
) -> None:
    # What the on-call runs on the instance: every `python -m service.predlog` command of the
    # runbook succeeds, and ValidationFailureSpike's export shows the refused requests with the
    # field and rule each broke (it was `export --help`, which shows none).
    # The session's served services share one store (tests/conftest.py), holding other tests'
    # refusals: this test's own is found by its request id.
    request_id = uuid.uuid4().hex
    numeric = CONTRACT.numeric_features()[0]
    too_small = {**example_rows(1)[0], numeric.name: numeric.minimum - 1}
    answer = httpx.post(
        f"{stack.service.url}/predict",
        json={"instances": [too_small]},
        headers={"X-Request-ID": request_id},
        timeout=30,
    )
    assert answer.status_code == 400
    commands = sorted({c for c in runbook_code() if c.startswith("python -m service.predlog")})
    assert "python -m service.predlog status" in commands

    def exported() -> dict[str, str] | None:
        rows = []
        for command in commands:
            if command.endswith(" migrate"):  # a store of an older schema only
                continue
            result = predlog(command, stack.service, tmp_path)
            assert result.returncode == 0, (command, result.stdout + result.stderr)
            if command.endswith(" status"):
                assert json.loads(result.stdout)["reachable"] is True
            for out in re.findall(r"--out (\S+)", command):
                with (tmp_path / out).open() as f:
                    rows += list(csv.DictReader(f))
        return next((r for r in rows if r.get("request_id") == request_id), None)

    refused = wait_until(exported, timeout=60, interval=2)
    assert refused["status"] == "400"
    (problem,) = json.loads(refused["errors"])
    assert (problem["field"], problem["reason"]) == (numeric.name, "out_of_range")


def test_batch_sizes_are_whole_instances_rows_and_requests(stack: Stack) -> None:
    # Every request has at least one instance, every model call a row and a request: a panel
    # showing less (a quantile interpolated inside the histogram's first bucket, 0 to 1) is wrong.
    wait_until(stack.scraped, timeout=30, interval=0.5)
    queries = [expr for _, panel, expr in expressions() if panel == "Batch sizes"]
    assert len(queries) == 3

    def answered() -> list[list[float]] | None:
        send_traffic(stack.service)
        values = [[float(r["value"][1]) for r in stack.query(expr)] for expr in queries]
        return values if all(values) else None

    values = wait_until(answered, timeout=30, interval=2)
    shown = dict(zip(queries, values, strict=True))
    assert all(v >= 1 for per_query in values for v in per_query), shown


def test_drifted_traffic_makes_the_drift_alert_reach_the_webhook(stack: Stack) -> None:
    # A whole window (DRIFT_WINDOW_SIZE, 1000) of instances with every feature moved by its
    # default shift: dataset drift, and the scores drift with them.
    drifted = sample(1000, seed=21, shifts="; ".join(CONTRACT.feature_names))
    with httpx.Client(base_url=stack.service.url, timeout=30) as client:
        for start in range(0, len(drifted), 100):
            answer = client.post("/predict", json={"instances": drifted[start : start + 100]})
            assert answer.status_code == 200
    served_version = httpx.get(f"{stack.service.url}/drift").json()["model"].split(":")[1]
    for name in ("DatasetDriftSustained", "PredictionDrift"):
        alerts = wait_until(lambda n=name: stack.webhook.firing(n), timeout=120, interval=0.5)
        assert alerts[0]["receiver"] == "ticket"
        assert alerts[0]["labels"]["severity"] == "ticket"
        assert alerts[0]["labels"]["model_version"] == served_version  # whose inputs drifted


def test_the_heartbeat_reaches_the_dead_mans_switch_and_nothing_else_does(stack: Stack) -> None:
    # Watchdog fires from Prometheus's first evaluation: by now (after the drift alerts) it has
    # reached the heartbeat receiver, and only it; the pages and tickets sent meanwhile did not
    # go there, where they would be mere beats.
    wait_until(lambda: stack.webhook.firing(HEARTBEAT), timeout=60, interval=0.5)
    assert {a["receiver"] for a in stack.webhook.firing(HEARTBEAT)} == {"heartbeat"}
    to_the_switch = {
        alert["labels"]["alertname"]
        for n in stack.webhook.notifications
        if n["receiver"] == "heartbeat"
        for alert in n["alerts"]
    }
    assert to_the_switch == {HEARTBEAT}
    assert {n["receiver"] for n in stack.webhook.notifications} >= {"heartbeat", "ticket"}


def probe_success(stack: Stack, kind: str) -> dict[str, float]:
    """The last probe_success of each target of the probe job ``kind``, by target."""
    found = stack.query(f'probe_success{{job="{PROBE_JOBS[kind]}"}}')
    return {r["metric"]["instance"]: float(r["value"][1]) for r in found}


def test_the_probes_from_outside_succeed_on_the_served_service(stack: Stack) -> None:
    # The committed modules, as prometheus.yml's relabeling sends them: the gRPC health check
    # of the inference service answered SERVING, /readyz answered 200; the series named after
    # the target probed.
    grpc = f"127.0.0.1:{stack.service.grpc_port}"
    readyz = f"{stack.service.url}/readyz"
    expected = {"grpc": {grpc: 1.0}, "readyz": {readyz: 1.0}}
    wait_until(
        lambda: all(probe_success(stack, kind) == expected[kind] for kind in expected),
        timeout=30,
        interval=0.5,
    )
    (serving,) = stack.query("probe_grpc_healthcheck_response == 1")
    assert serving["metric"]["serving_status"] == "SERVING"
    assert serving["metric"]["instance"] == grpc
    (status,) = stack.query("probe_http_status_code")
    assert (status["metric"]["instance"], float(status["value"][1])) == (readyz, 200)
    # a port that connects but is not this gRPC server (the HTTP port) fails the gRPC probe
    assert stack.blackbox
    http_port = f"127.0.0.1:{stack.service.port}"
    assert probe(stack.blackbox, "grpc_health", http_port)["probe_success"] == 0


def test_endpoints_that_do_not_answer_page_naming_them_and_resolve(stack: Stack) -> None:
    # A Service or ingress pointed at the wrong port: the service's own /metrics answers, the
    # address clients dial does not (a closed port; for gRPC also a listener that accepts and
    # never answers, which holds the exporter's gRPC probe past the scrape timeout). Each probe
    # alert pages for those targets only, and resolves once they are no longer probed.
    wait_until(stack.scraped, timeout=30, interval=0.5)
    closed = free_port()  # nothing listens there
    healthy = {
        "grpc": f"127.0.0.1:{stack.service.grpc_port}",
        "readyz": f"{stack.service.url}/readyz",
    }
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)  # the kernel accepts the connections; nothing answers them
        hung = f"127.0.0.1:{silent.getsockname()[1]}"
        broken = {
            "grpc": {f"127.0.0.1:{closed}", hung},
            "readyz": {f"http://127.0.0.1:{closed}/readyz"},
        }
        try:
            for kind in PROBE_ALERTS:
                stack.probe_targets(kind, [healthy[kind], *sorted(broken[kind])])

            def all_firing(name: str, instances: set[str]) -> list[dict[str, Any]] | None:
                alerts = stack.webhook.firing(name)
                return alerts if {a["labels"]["instance"] for a in alerts} >= instances else None

            for kind, name in PROBE_ALERTS.items():
                alerts = wait_until(
                    lambda n=name, k=kind: all_firing(n, broken[k]), timeout=60, interval=0.5
                )
                assert {a["labels"]["instance"] for a in alerts} == broken[kind]
                for alert in alerts:
                    assert alert["receiver"] == "page"
                    assert alert["labels"]["job"] == "credit-risk-service"
                    assert alert["labels"]["instance"] in alert["annotations"]["summary"]
                    assert alert["annotations"]["runbook_url"] == (
                        f"monitoring/RUNBOOK.md#{name.lower()}"
                    )
            # What the runbook's first checks show: the closed port's probe failed
            # (UNAVAILABLE), the hung listener's never finished (its scrape failed, no
            # probe_success) while the exporter answered.
            assert probe_success(stack, "grpc") == {healthy["grpc"]: 1, f"127.0.0.1:{closed}": 0}
            assert probe_success(stack, "readyz") == {
                healthy["readyz"]: 1,
                f"http://127.0.0.1:{closed}/readyz": 0,
            }
            codes = stack.query(f'probe_grpc_status_code{{job="{PROBE_JOBS["grpc"]}"}}')
            assert {r["metric"]["instance"]: float(r["value"][1]) for r in codes} == {
                healthy["grpc"]: 0,
                f"127.0.0.1:{closed}": 14,
            }
            (unfinished,) = stack.query(f'up{{job="{PROBE_JOBS["grpc"]}"}} == 0')
            assert unfinished["metric"]["instance"] == hung
            assert float(stack.query('up{job="blackbox-exporter"}')[0]["value"][1]) == 1
        finally:
            for kind in PROBE_ALERTS:
                stack.probe_targets(kind, [healthy[kind]])

    def resolved(name: str) -> set[str]:
        return {
            a["labels"]["instance"]
            for n in stack.webhook.notifications
            for a in n["alerts"]
            if a["labels"]["alertname"] == name and a["status"] == "resolved"
        }

    for kind, name in PROBE_ALERTS.items():
        wait_until(lambda n=name, k=kind: resolved(n) >= broken[k], timeout=60, interval=0.5)


def test_stopping_the_service_pages_once_for_the_job(stack: Stack) -> None:
    assert stack.webhook.firing("ServiceJobDown") == []
    stack.service.stop()
    alerts = wait_until(lambda: stack.webhook.firing("ServiceJobDown"), timeout=60, interval=0.5)
    assert alerts[0]["receiver"] == "page"
    assert alerts[0]["labels"]["severity"] == "page"
    assert alerts[0]["annotations"]["runbook_url"] == "monitoring/RUNBOOK.md#servicejobdown"
    # The instance's own alert fires in Prometheus, and Alertmanager holds it back: the only
    # instance down is the job down, one page.
    firing = httpx.get(f"{stack.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    (down,) = [a for a in firing if a["labels"]["alertname"] == "ServiceDown"]
    assert down["state"] == "firing"
    assert down["labels"]["instance"] == f"127.0.0.1:{stack.service.port}"
    time.sleep(3)  # group_wait and group_interval are 1 s here: ServiceDown's would be sent
    assert stack.webhook.firing("ServiceDown") == []
    # Every probe fails with the service gone, and neither probe alert is pending or firing:
    # the outage is ServiceJobDown's page alone.
    for kind in PROBE_ALERTS:
        wait_until(lambda k=kind: set(probe_success(stack, k).values()) == {0}, timeout=30)
    names = "|".join(PROBE_ALERTS.values())
    assert stack.query(f'ALERTS{{alertname=~"{names}"}}') == []
