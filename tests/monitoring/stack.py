"""A monitoring stack on loopback for the end-to-end tests: a served service, a real Prometheus
(scrape and rule evaluation every second) and Alertmanager, and a webhook receiver in this
process.

The only changes to the committed configuration are those a test on a 2-core machine needs, made
in temporary copies: the scrape target and the Alertmanager address, 1 s intervals, every rule's
`for:` cut to 1 s, Alertmanager's group_wait/group_interval cut to 1 s and its receivers' URLs
pointed at the webhook. Routing, inhibition, expressions and labels are the committed ones.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.monitoring.support import (
    ALERTMANAGER_YML,
    PROMETHEUS_YML,
    RULES,
    load_yaml,
    tool,
)
from tests.support import ServedService, start_on_a_free_port


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
    alertmanager: str
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

    def alerts(self, alertname: str) -> list[dict[str, Any]]:
        """Alertmanager's alerts of that name, each with its ``status`` (``inhibitedBy``)."""
        answer = httpx.get(
            f"{self.alertmanager}/api/v2/alerts",
            params={"filter": f'alertname="{alertname}"'},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


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


@contextmanager
def monitoring_stack(env: Mapping[str, str]) -> Iterator[Stack]:
    """A served service (``env`` added to its environment), scraped by Prometheus with the
    committed rules, alerting through Alertmanager with the committed routing to the webhook."""
    work = Path(tempfile.mkdtemp(prefix="monitoring-live-"))
    webhook = Webhook()
    server = webhook.serve()

    am = load_yaml(ALERTMANAGER_YML)
    for route in [am["route"], *am["route"]["routes"]]:
        if "group_wait" in route:
            route["group_wait"] = "1s"
        route["group_interval"] = "1s"
    for receiver in am["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{webhook.port}/{receiver['name']}"
    (work / "alertmanager.yml").write_text(yaml.safe_dump(am))

    service = ServedService(env=env).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # Each port is chosen as its server starts, and chosen again if it was taken meanwhile.
        alertmanager, am_port = start_on_a_free_port(
            lambda port: [
                tool("prometheus-alertmanager"),
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'am'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            work / "alertmanager.log",
        )
        processes.append(alertmanager)
        prom = load_yaml(PROMETHEUS_YML)
        prom["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        prom["rule_files"] = [str(p) for p in shortened_rules(work)]
        alertmanagers = prom["alerting"]["alertmanagers"][0]
        alertmanagers["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
        (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "credit-risk-service"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{service.port}"]}]
        prom["scrape_configs"] = [job]
        (work / "prometheus.yml").write_text(yaml.safe_dump(prom))
        prometheus, prom_port = start_on_a_free_port(
            lambda port: [
                tool("prometheus"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            work / "prometheus.log",
        )
        processes.append(prometheus)
        yield Stack(
            service, f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}", webhook
        )
    finally:
        service.stop()
        for process in processes:
            process.terminate()
            process.wait(30)
        server.shutdown()
