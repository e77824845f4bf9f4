"""The monitoring stack end to end, on loopback: a served service, a real Prometheus (scrape and
rule evaluation every second) and Alertmanager, and a webhook receiver in this process.

The only changes to the committed configuration are those a test on a 2-core machine needs, made
in temporary copies: the scrape target and the Alertmanager address, 1 s intervals, every rule's
`for:` cut to 1 s, Alertmanager's group_wait/group_interval cut to 1 s and its receivers' URLs
pointed at the webhook. Routing, inhibition, expressions and labels are the committed ones.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as triton_grpc
import yaml

from models.contract import CONTRACT
from tests.drift.helpers import sample
from tests.monitoring.promql import expressions, metric_names, runbook_names, runbook_queries
from tests.monitoring.support import (
    ALERTMANAGER_YML,
    PROMETHEUS_YML,
    RULES,
    load_yaml,
    recorded_names,
    tool,
)
from tests.oip_support import triton_inputs
from tests.predlog.helpers import wait_until
from tests.support import ROOT, ServedService, example_rows, free_port


@dataclass
class Webhook:
    """Alertmanager's webhook notifications, as received."""

    port: int = 0  # chosen by the OS when serving: a port seen free could be taken by then
    notifications: list[dict[str, Any]] = field(default_factory=list)

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [
            {**alert, "receiver": n["receiver"]}
            for n in self.notifications
            for alert in n["alerts"]
            if alert["labels"]["alertname"] == alertname and alert["status"] == "firing"
        ]

    def serve(self) -> ThreadingHTTPServer:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@dataclass
class Stack:
    service: ServedService
    prometheus: str
    webhook: Webhook

    def scraped(self) -> bool:
        try:
            ready = httpx.get(f"{self.prometheus}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:  # Prometheus still starting
            return False
        return ready and bool(self.query('up{job="credit-risk-service"} == 1'))

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["result"]


def shortened_rules(directory: Path) -> list[Path]:
    copies = []
    for path in RULES:
        doc = load_yaml(path)
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(doc))
        copies.append(copy)
    return copies


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def stack(model_tag: str) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="monitoring-live-"))
    webhook = Webhook()
    server = webhook.serve()

    am_port, prom_port = free_port(), free_port()
    am = load_yaml(ALERTMANAGER_YML)
    for route in [am["route"], *am["route"]["routes"]]:
        if "group_wait" in route:
            route["group_wait"] = "1s"
        route["group_interval"] = "1s"
    for receiver in am["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{webhook.port}/{receiver['name']}"
    (work / "alertmanager.yml").write_text(yaml.safe_dump(am))

    service = ServedService(
        env={"DRIFT_ENABLED": "true", "DRIFT_INTERVAL_SECONDS": "2", "DRIFT_MIN_SAMPLES": "50"}
    ).start()
    prom = load_yaml(PROMETHEUS_YML)
    prom["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    prom["rule_files"] = [str(p) for p in shortened_rules(work)]
    prom["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "credit-risk-service"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{service.port}"]}]
    prom["scrape_configs"] = [job]
    (work / "prometheus.yml").write_text(yaml.safe_dump(prom))

    processes = [
        start(
            [
                tool("prometheus-alertmanager"),
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'am'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            work / "alertmanager.log",
        ),
        start(
            [
                tool("prometheus"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            work / "prometheus.log",
        ),
    ]
    try:
        yield Stack(service, f"http://127.0.0.1:{prom_port}", webhook)
    finally:
        service.stop()
        for process in processes:
            process.terminate()
            process.wait(30)
        server.shutdown()


def send_traffic(service: ServedService) -> None:
    """What the dashboards show: accepted and refused requests over HTTP and gRPC, values
    beyond the training range."""
    rows = example_rows(60)
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for row in rows:
            assert client.post("/predict", json={"instances": [row]}).status_code == 200
        assert client.post("/predict", json={"instances": rows[:20]}).status_code == 200
        old = dict(rows[0], age_in_years=100)
        assert client.post("/predict", json={"instances": [old]}).status_code == 200
        young = dict(rows[0], age_in_years=17)
        assert client.post("/predict", json={"instances": [young]}).status_code == 400
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{service.grpc_port}") as grpc_client:
        grpc_client.infer("credit_risk", triton_inputs(triton_grpc, rows[:3]))


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
    # Span export is counted only while traces are exported (off here): the README's table
    readme = (ROOT / "README.md").read_text()
    tracing = set(re.findall(r"^\| `(trace_spans_[a-z_]+)` \| counter \|", readme, re.M))
    known = series | recorded_names() | tracing
    queries = runbook_queries({"<version>": version})
    assert len(queries) > 25
    for expr in queries:
        stack.query(expr)  # 200: valid PromQL
    assert {name for expr in queries for name in metric_names(expr)} - known == set()
    assert {name for name in runbook_names() if name in families} - known == set()


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


def test_stopping_the_service_makes_service_down_reach_the_webhook(stack: Stack) -> None:
    assert stack.webhook.firing("ServiceDown") == []
    stack.service.stop()
    alerts = wait_until(lambda: stack.webhook.firing("ServiceDown"), timeout=60, interval=0.5)
    assert alerts[0]["receiver"] == "page"
    assert alerts[0]["labels"]["severity"] == "page"
    assert alerts[0]["labels"]["instance"] == f"127.0.0.1:{stack.service.port}"
    assert alerts[0]["annotations"]["runbook_url"] == "monitoring/RUNBOOK.md#servicedown"
