"""monitoring/compose.yaml: valid for Compose (`docker compose config`, or Debian's docker-compose
1.29 where the plugin is absent) and wired to the committed configuration."""

from __future__ import annotations

import re
import shutil

from tests.monitoring.support import (
    BLACKBOX_YML,
    MONITORING,
    PROBE_JOBS,
    load_yaml,
    run,
    scrape_job,
    tool,
)

COMPOSE = MONITORING / "compose.yaml"
CONTAINER_BLACKBOX_YML = "/etc/blackbox_exporter/blackbox.yml"


def test_compose_validates() -> None:
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        result = run(docker, "compose", "-f", COMPOSE, "config", "-q")
    else:
        legacy = shutil.which("docker-compose")
        assert legacy, "neither `docker compose` nor docker-compose (Debian) is installed"
        result = run(legacy, "-f", COMPOSE, "config", "-q")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_mounts_the_committed_configuration() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert set(services) == {
        "service",
        "prometheus",
        "alertmanager",
        "blackbox",
        "grafana",
        "jaeger",
    }
    for name, mounts in {
        "prometheus": ["./prometheus:/etc/prometheus:ro"],
        "alertmanager": ["./alertmanager:/etc/alertmanager:ro"],
        "blackbox": ["./blackbox:/etc/blackbox_exporter:ro"],
        "grafana": [
            "./grafana/provisioning:/etc/grafana/provisioning:ro",
            "./grafana/dashboards:/var/lib/grafana/dashboards:ro",
        ],
    }.items():
        for mount in mounts:
            assert mount in services[name]["volumes"]
            assert (MONITORING / mount.split(":")[0]).is_dir()
    # the scrape target and the alertmanager of prometheus.yml are compose services
    prometheus = load_yaml(MONITORING / "prometheus" / "prometheus.yml")
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    job = scrape_job("credit-risk-service", prometheus)
    assert job["static_configs"][0]["targets"] == ["service:3000"]
    # docs/deployment.md's `docker run --stop-timeout 60`: Docker's 10 s default is too short
    # (tests/unit/test_deployment_docs.py checks it covers the worst-case shutdown)
    assert services["service"]["stop_grace_period"] == "60s"
    assert services["service"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith(
        "http://jaeger:"
    )


def test_the_probes_go_through_the_compose_blackbox_exporter_to_the_service() -> None:
    # prometheus.yml's probe jobs: sent to the exporter compose runs, with its committed
    # modules, at the ports the service publishes
    services = load_yaml(COMPOSE)["services"]
    assert services["blackbox"]["command"] == [f"--config.file={CONTAINER_BLACKBOX_YML}"]
    modules = load_yaml(BLACKBOX_YML)["modules"]
    expected = {
        PROBE_JOBS["grpc"]: ("grpc_health", ["service:3001"]),
        PROBE_JOBS["readyz"]: ("http_readyz", ["http://service:3000/readyz"]),
    }
    for name, (module, targets) in expected.items():
        job = scrape_job(name)
        assert job["params"]["module"] == [module]
        assert module in modules
        assert job["static_configs"][0]["targets"] == targets
        assert job["relabel_configs"][-1] == {
            "target_label": "__address__",
            "replacement": "blackbox:9115",
        }
    assert {"3000:3000", "3001:3001"} <= set(services["service"]["ports"])


def test_compose_runs_the_blackbox_exporter_version_the_tests_run() -> None:
    # the tests check blackbox.yml with Debian's exporter (0.23); another version may read its
    # modules otherwise, or refuse them
    version = run(tool("prometheus-blackbox-exporter"), "--version")
    assert version.returncode == 0, version.stderr
    found = re.search(r"version (\d+\.\d+\.\d+)", version.stdout + version.stderr)
    assert found, version.stdout + version.stderr
    image = load_yaml(COMPOSE)["services"]["blackbox"]["image"]
    assert image == f"prom/blackbox-exporter:v{found.group(1)}"
