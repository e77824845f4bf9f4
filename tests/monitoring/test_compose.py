"""monitoring/compose.yaml: valid for Compose (`docker compose config`, or Debian's docker-compose
1.29 where the plugin is absent) and wired to the committed configuration."""

from __future__ import annotations

import shutil

from tests.monitoring.support import MONITORING, load_yaml, run

COMPOSE = MONITORING / "compose.yaml"


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
    assert set(services) == {"service", "prometheus", "alertmanager", "grafana", "jaeger"}
    for name, mounts in {
        "prometheus": ["./prometheus:/etc/prometheus:ro"],
        "alertmanager": ["./alertmanager:/etc/alertmanager:ro"],
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
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "credit-risk-service"]
    assert job["static_configs"][0]["targets"] == ["service:3000"]
    # docs/deployment.md's `docker run --stop-timeout 60`: Docker's 10 s default is too short
    # (tests/unit/test_deployment_docs.py checks it covers the worst-case shutdown)
    assert services["service"]["stop_grace_period"] == "60s"
    assert services["service"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith(
        "http://jaeger:"
    )
