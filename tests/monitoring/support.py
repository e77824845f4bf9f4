"""Paths of monitoring/ and the Prometheus tools the monitoring tests run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT

MONITORING = ROOT / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus" / "prometheus.yml"
RULES = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER_YML = MONITORING / "alertmanager" / "alertmanager.yml"
BLACKBOX_YML = MONITORING / "blackbox" / "blackbox.yml"
# prometheus.yml's scrape jobs of the blackbox exporter's probes, by what they probe
PROBE_JOBS = {
    "grpc": "credit-risk-service-grpc-probe",
    "readyz": "credit-risk-service-readyz-probe",
}
# prometheus.yml's scrape job of the exporter's own /metrics
EXPORTER_JOB = "blackbox-exporter"
RUNBOOK = MONITORING / "RUNBOOK.md"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
# The always-firing alert whose notifications feed the dead-man's switch (RUNBOOK.md#watchdog):
# tests that look for alerts firing, or count notifications, leave it out.
HEARTBEAT = "Watchdog"


def tool(name: str) -> str:
    """Path of a Prometheus, Alertmanager or blackbox exporter command; ``make system-deps``
    installs them."""
    path = shutil.which(name)
    assert path, (
        f"{name} is installed by `make system-deps` "
        "(Debian prometheus, prometheus-alertmanager, prometheus-blackbox-exporter)"
    )
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    """Every rule of every rule file, recording and alerting."""
    return [
        rule for path in RULES for group in load_yaml(path)["groups"] for rule in group["rules"]
    ]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def scrape_job(name: str, prometheus: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scrape job named ``name`` of ``prometheus`` (a loaded configuration; by default the
    committed prometheus.yml): the object itself, for a test's copy to change."""
    config = load_yaml(PROMETHEUS_YML) if prometheus is None else prometheus
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == name]
    return job
