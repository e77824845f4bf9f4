"""The probes from outside, checked offline: monitoring/blackbox/blackbox.yml is what Debian's
blackbox exporter accepts and probes what the service serves, and prometheus.yml's probe jobs
send each target to it with the standard relabeling, under the names the alerts select
(the probes of a served service: test_live.py)."""

from __future__ import annotations

from service.oip.servicer import SERVICE_NAME
from tests.monitoring.support import (
    BLACKBOX_YML,
    EXPORTER_JOB,
    PROBE_JOBS,
    alerts,
    load_yaml,
    run,
    scrape_job,
    tool,
)

MODULES = {"grpc": "grpc_health", "readyz": "http_readyz"}


def test_the_exporter_accepts_the_config() -> None:
    result = run(
        tool("prometheus-blackbox-exporter"), f"--config.file={BLACKBOX_YML}", "--config.check"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_grpc_module_checks_the_health_of_the_service_clients_call() -> None:
    # "" (the server as a whole) would pass with the inference service NOT_SERVING; plaintext,
    # as the service listens (TLS terminates in front of it)
    module = load_yaml(BLACKBOX_YML)["modules"][MODULES["grpc"]]
    assert module["prober"] == "grpc"
    assert module["grpc"]["service"] == SERVICE_NAME
    assert module["grpc"]["tls"] is False


def test_the_readyz_module_wants_200_itself() -> None:
    # a redirect followed to a page answering 200 (an ingress's login page) would pass
    module = load_yaml(BLACKBOX_YML)["modules"][MODULES["readyz"]]
    assert module["prober"] == "http"
    assert module["http"]["method"] == "GET"
    assert module["http"]["valid_status_codes"] == [200]
    assert module["http"]["follow_redirects"] is False


def test_each_probe_job_sends_its_targets_to_the_exporter_named_as_probed() -> None:
    for kind, name in PROBE_JOBS.items():
        job = scrape_job(name)
        assert job["metrics_path"] == "/probe"
        assert job["params"] == {"module": [MODULES[kind]]}
        target, instance, exporter = job["relabel_configs"]
        assert target == {"source_labels": ["__address__"], "target_label": "__param_target"}
        assert instance == {"source_labels": ["__param_target"], "target_label": "instance"}
        assert exporter["target_label"] == "__address__"
        assert set(exporter) == {"target_label", "replacement"}
    (readyz,) = scrape_job(PROBE_JOBS["readyz"])["static_configs"]
    assert all(t.endswith("/readyz") for t in readyz["targets"])
    # the exporter is scraped too, at the address the probes go to: a probe scrape failing
    # while it answers is a probe that did not finish, not the exporter down
    (exporter_scrape,) = scrape_job(EXPORTER_JOB)["static_configs"]
    assert exporter_scrape["targets"] == [exporter["replacement"]]


def test_the_probe_alerts_select_the_probe_jobs_and_name_the_probed_service() -> None:
    # a probe job renamed without its alert would leave the alert selecting nothing, quiet for ever
    by_name = {a["alert"]: a for a in alerts()}
    for kind, name in {"grpc": "GrpcProbeFailing", "readyz": "ReadinessProbeFailing"}.items():
        alert = by_name[name]
        assert f'probe_success{{job="{PROBE_JOBS[kind]}"}}' in alert["expr"]
        # a probe that never finishes fails its scrape: counted, while the exporter answers
        assert f'up{{job="{PROBE_JOBS[kind]}"}}' in alert["expr"]
        assert f'up{{job="{EXPORTER_JOB}"}}' in alert["expr"]
        assert 'up{job="credit-risk-service"}' in alert["expr"]
        # the service's job: grouped with its alerts, held back by its ServiceJobDown
        assert alert["labels"]["job"] == "credit-risk-service"
