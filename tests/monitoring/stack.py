"""A monitoring stack on loopback for the end-to-end tests: a served service, a real Prometheus
(scrape and rule evaluation every second) and Alertmanager, a webhook receiver in this process,
and, if asked for, a real blackbox exporter probing the service from outside.

The only changes to the committed configuration are those a test on a 2-core machine needs, made
in temporary copies: the scrape target and the Alertmanager address, 1 s intervals, every rule's
`for:` cut to 1 s, alerts sent again every 5 s, Alertmanager's group_wait/group_interval cut to
1 s and its receivers' URLs pointed at the webhook; the probe jobs' targets (in files the test can
change) and the exporter's address. Routing, inhibition, expressions, labels, the probe modules
and relabeling are the committed ones.
"""

from __future__ import annotations

import copy
import json
import os
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

from tests.monitoring.blackbox import start_blackbox
from tests.monitoring.support import (
    ALERTMANAGER_YML,
    EXPORTER_JOB,
    PROBE_JOBS,
    PROMETHEUS_YML,
    RULES,
    load_yaml,
    scrape_job,
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
    blackbox: str | None = None  # the exporter's URL, with probes
    probe_files: dict[str, Path] = field(default_factory=dict)  # PROBE_JOBS' key: targets file

    def probe_targets(self, kind: str, targets: list[str]) -> None:
        """Probe ``targets`` in the job of PROBE_JOBS[``kind``] from now on (Prometheus watches
        the file)."""
        write_targets(self.probe_files[kind], targets)

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


def write_targets(path: Path, targets: list[str]) -> None:
    """A file_sd file of ``targets``, replaced whole: Prometheus never reads half of one."""
    part = path.with_suffix(".part")
    part.write_text(json.dumps([{"targets": targets}]))
    os.replace(part, path)


def probe_jobs(
    prom: dict[str, Any], work: Path, service: ServedService, exporter_port: int
) -> dict[str, Path]:
    """The committed probe jobs of ``prom``, turned to the local service and exporter (and the
    exporter's own scrape to it): each probe job's targets in a file of ``work`` (returned by
    PROBE_JOBS' key), first the service's."""
    files = {}
    first = {
        "grpc": f"127.0.0.1:{service.grpc_port}",
        "readyz": f"{service.url}/readyz",
    }
    for kind, name in PROBE_JOBS.items():
        job = scrape_job(name, prom)
        # the two jobs share their relabeling (a YAML alias): changed for each on its own copy
        job["relabel_configs"] = copy.deepcopy(job["relabel_configs"])
        (to_exporter,) = [r for r in job["relabel_configs"] if r["target_label"] == "__address__"]
        to_exporter["replacement"] = f"127.0.0.1:{exporter_port}"
        files[kind] = work / f"{name}.json"
        write_targets(files[kind], [first[kind]])
        del job["static_configs"]
        job["file_sd_configs"] = [{"files": [str(files[kind])], "refresh_interval": "1s"}]
    exporter = scrape_job(EXPORTER_JOB, prom)
    exporter["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_port}"]}]
    return files


@contextmanager
def monitoring_stack(env: Mapping[str, str], probes: bool = False) -> Iterator[Stack]:
    """A served service (``env`` added to its environment), scraped by Prometheus with the
    committed rules, alerting through Alertmanager with the committed routing to the webhook;
    with ``probes``, also probed from outside through a blackbox exporter with the committed
    modules (prometheus.yml's probe jobs, their targets the service's gRPC port and /readyz)."""
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
        job = scrape_job("credit-risk-service", prom)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{service.port}"]}]
        kept = {"credit-risk-service"}
        blackbox, probe_files = None, {}
        if probes:
            exporter, exporter_port = start_blackbox(work)
            processes.append(exporter)
            blackbox = f"http://127.0.0.1:{exporter_port}"
            probe_files = probe_jobs(prom, work, service, exporter_port)
            kept |= {*PROBE_JOBS.values(), EXPORTER_JOB}
        prom["scrape_configs"] = [j for j in prom["scrape_configs"] if j["job_name"] in kept]
        (work / "prometheus.yml").write_text(yaml.safe_dump(prom))
        prometheus, prom_port = start_on_a_free_port(
            lambda port: [
                tool("prometheus"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                # The alerts of the first evaluations are sent before Alertmanager is
                # discovered, and lost: by default sent again a minute later (Watchdog reached
                # the heartbeat then). Alertmanager still dedups: a resend is no notification.
                "--rules.alert.resend-delay=5s",
            ],
            work / "prometheus.log",
        )
        processes.append(prometheus)
        yield Stack(
            service,
            f"http://127.0.0.1:{prom_port}",
            f"http://127.0.0.1:{am_port}",
            webhook,
            blackbox,
            probe_files,
        )
    finally:
        service.stop()
        for process in processes:
            process.terminate()
            process.wait(30)
        server.shutdown()
