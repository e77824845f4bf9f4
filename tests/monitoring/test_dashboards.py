"""The Grafana dashboards: generated from monitoring/dashboards, valid against Grafana's published
schema, laid out on Grafana's grid, every query valid PromQL (promtool) on metrics the service
exports or the recording rules compute."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft7Validator

from monitoring.dashboards.build import DASHBOARDS as BUILDERS
from monitoring.dashboards.build import render
from tests.monitoring.blackbox import probe, start_blackbox
from tests.monitoring.promql import expressions, load, metric_names, panels
from tests.monitoring.support import (
    DASHBOARDS,
    MONITORING,
    RUNBOOK,
    alerts,
    recorded_names,
    run,
    tool,
)
from tests.support import ROOT, ServedService, example_rows, scrape, wait_until

# What an accepted and a refused request create (labelled series appear with their first use)
REQUEST_METRICS = {
    "inference_requests_total",
    "inference_request_duration_seconds_bucket",
    "inference_request_instances_bucket",
    "inference_validation_failures_total",
}


def test_the_committed_json_is_what_the_code_generates() -> None:
    assert sorted(p.name for p in DASHBOARDS) == sorted(BUILDERS)
    for path in DASHBOARDS:
        assert path.read_text() == render(path.name), f"{path.name} is stale: `make dashboards`"


# Grafana's published dashboard schema (v11.6, Apache-2.0, as Grafana publishes it). Its
# Threshold.value is a plain number, but Grafana itself writes null for the base step.
SCHEMA = json.loads((Path(__file__).parent / "grafana-dashboard-v11.6.schema.json").read_text())
SCHEMA["definitions"]["Threshold"]["properties"]["value"] = {"type": ["number", "null"]}


def _schema_errors(definition: str, instance: dict[str, object]) -> list[str]:
    validator = Draft7Validator(
        {"$ref": f"#/definitions/{definition}", "definitions": SCHEMA["definitions"]}
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_each_dashboard_and_panel_fits_grafanas_schema(path: Path) -> None:
    dashboard = load(path)
    errors = _schema_errors("Dashboard", {**dashboard, "panels": []})
    for panel in dashboard["panels"]:
        kind = "RowPanel" if panel.get("type") == "row" else "Panel"
        errors += [f"{panel.get('title')}: {e}" for e in _schema_errors(kind, panel)]
    assert errors == []


PROBE_SELECTOR = re.compile(r'job=~?"(blackbox-exporter|credit-risk-service-.+-probe)"')


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_layout_descriptions_datasource_and_variables(path: Path) -> None:
    dashboard = load(path)
    cells: dict[tuple[int, int], str] = {}
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert "Normal" in panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            # A probe's instance is the address probed, not a scrape target the variable
            # lists: the probe panels show every target (and the exporter).
            selectors = re.findall(r"\{([^}]*)\}", target["expr"])
            probes_only = bool(selectors) and all(PROBE_SELECTOR.search(s) for s in selectors)
            assert (
                'instance=~"$instance"' in target["expr"]
                or target["expr"].startswith(("1 - max(job:", "max(job:"))
                or probes_only
            ), target["expr"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    expected = ["datasource", "instance"] + (["model_version"] if "model" in path.stem else [])
    assert names == expected


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_a_table_of_several_queries_names_each_value_column(path: Path) -> None:
    # Grafana calls the value of each of several table queries "Value #<refId>": left so, the
    # reader of "Drift test per feature" saw three numbers under A, B and C with no name.
    for panel in panels(load(path)):
        if panel["type"] != "table" or len(panel["targets"]) < 2:
            continue
        (organize,) = [t["options"] for t in panel["transformations"] if t["id"] == "organize"]
        named = {**organize.get("renameByName", {}), **organize["excludeByName"]}
        for target in panel["targets"]:
            assert f"Value #{target['refId']}" in named, (panel["title"], target["refId"])


def test_process_metrics_are_the_services_only() -> None:
    # every scraped process exports process_*: Prometheus's own must not appear with $instance All
    found = 0
    for _, _, expr in expressions():
        for selector in re.findall(r"process_\w+\{([^}]*)\}", expr):
            found += 1
            assert 'job="credit-risk-service"' in selector, expr
    assert found


def test_every_query_is_valid_promql() -> None:
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e} for i, (_, _, e) in enumerate(expressions())
    ]
    with (MONITORING.parent / "var").joinpath("dashboard-queries.yml") as path:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
        result = run(tool("promtool"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_drift_runs_add_up_over_the_replicas(tmp_path: Path) -> None:
    # A run is counted by the one worker, of one replica, that ran it (the replicas share the
    # store and take turns): the replicas' counts add up, unlike the drift gauges they all
    # export alike. Two replicas running one ok run a minute each: two runs a minute.
    (expr,) = [
        e
        for _, panel, e in expressions()
        if panel == "Drift runs by status" and "model_drift_runs_total" in e
    ]
    series = {
        f'model_drift_runs_total{{job="credit-risk-service",instance="{i}:3000",status="ok"}}': (
            "0+0.25x40"
        )
        for i in ("a", "b")
    }
    assert_promql(tmp_path, expr, series, "5m", {'{status="ok"}': 2})


def test_drift_panels_show_each_model_version_on_its_own(tmp_path: Path) -> None:
    # With "All" model versions (the selector's default) during a rolling deploy, max() over
    # both versions showed one version's "drifted" as the dataset's, and the larger of two
    # p-values per feature hid the other's drift: every drift series keeps its model_version.
    drift = [
        (panel, e)
        for _, panel, e in expressions()
        if "model_drift_" in e and "model_drift_interval_seconds" not in e
    ]
    assert drift
    for panel, expr in drift:
        aggregations = re.findall(r"\b(?:max|sum)\b\s*(by\s*\(([^)]*)\))?\s*\(", expr)
        assert aggregations, (panel, expr)
        for _by, labels in aggregations:
            assert "model_version" in labels.replace(" ", "").split(","), (panel, expr)
    (expr,) = [e for panel, e in drift if panel == "Dataset drift"]
    series = {
        "model_drift_dataset_drifted"
        f'{{job="credit-risk-service",instance="{i}:3000",model_version="{v}"}}': f"{drifted}x10"
        for i, v, drifted in (("a", "old", 1), ("b", "new", 0), ("c", "new", 0))
    }
    expected = {'{model_version="old"}': 1, '{model_version="new"}': 0}
    assert_promql(tmp_path, expr, series, "1m", expected)


@pytest.mark.parametrize(
    ("metric", "values"),
    [
        ("prediction_log_store_up", ("1x10", "0x10")),
        ("prediction_log_backlog_age_seconds", ("0x10", "400x10")),
        ("prediction_log_spool_bytes", ("0x10", "5000x10")),
    ],
)
def test_prediction_log_panels_show_which_instance(
    tmp_path: Path, metric: str, values: tuple[str, str]
) -> None:
    # The prediction-log alerts name the instance whose store, lag or spool it is (its own): a
    # panel showing only the worst of all instances (min, max) could not show which.
    (expr,) = [e for _, _, e in expressions() if metric in e]
    series = {
        f'{metric}{{job="credit-risk-service",instance="{i}:3000"}}': v
        for i, v in zip(("a", "b"), values, strict=True)
    }
    a, b = (float(v.split("x")[0]) for v in values)
    expected = {'{instance="a:3000"}': a, '{instance="b:3000"}': b}
    assert_promql(tmp_path, expr, series, "2m", expected)


def assert_promql(
    tmp_path: Path, expr: str, series: dict[str, str], at: str, expected: dict[str, float]
) -> None:
    """``promtool test rules``: ``expr`` over ``series`` (series: promtool's values notation,
    sampled every 15 s) gives exactly the ``expected`` samples (labels: value) at ``at``."""
    case = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": at,
                        "exp_samples": [{"labels": k, "value": v} for k, v in expected.items()],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "promql_test.yml"
    path.write_text(json.dumps(case))
    result = run(tool("promtool"), "test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_uses_metrics_the_service_exports_or_the_rules_record(
    served: ServedService, tmp_path: Path
) -> None:
    # labelled series appear with the first accepted and the first refused request
    httpx.post(f"{served.url}/predict", json={"instances": example_rows(1)}, timeout=30)
    bad = dict(example_rows(1)[0], age_in_years=17)
    httpx.post(f"{served.url}/predict", json={"instances": [bad]}, timeout=30)

    def scraped_names() -> set[str] | None:
        # the workers apply request metrics once per REQUEST_FLUSH_SECONDS, not at once
        names = {name for name, _ in scrape(served.url)}
        return names if names >= REQUEST_METRICS else None

    scraped = wait_until(scraped_names, timeout=10, interval=0.2)
    known = scraped | recorded_names() | {"up"}
    used = {name for _, _, e in expressions() for name in metric_names(e)}
    # Drift is off in the shared `served` (tests/conftest.py): its metrics are taken from the
    # drift table of docs/metrics-and-traces.md, which tests/drift/test_served.py checks against
    # a drifting scrape.
    known |= documented_drift_metrics()
    # The probe panels' metrics: the blackbox exporter's, from its probes of the served service
    exporter, port = start_blackbox(tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        for module, target in (
            ("grpc_health", f"127.0.0.1:{served.grpc_port}"),
            ("http_readyz", f"{served.url}/readyz"),
        ):
            samples = probe(url, module, target)
            assert samples["probe_success"] == 1, (module, samples)
            known |= {name.partition("{")[0] for name in samples}
    finally:
        exporter.terminate()
        exporter.wait(30)
    missing = used - known
    assert missing == set()


def documented_drift_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics-and-traces.md").read_text()
    return set(re.findall(r"^\| `(model_drift_[a-z_]+)` \| (?:counter|gauge) \|", text, re.M))


def test_the_dashboards_panels_and_rows_the_runbook_names_exist() -> None:
    # The on-call looks for them by the name the runbook gives: the "Availability SLO" row was
    # "Availability SLO (99.9%)", the "score heatmap" the "Score distribution" panel.
    text = " ".join(RUNBOOK.read_text().split())
    lists = re.findall(r'((?:"[^"]+"(?:,| and| or)? )+)(?:panels?|row)\b', text)
    named = {title for group in lists for title in re.findall(r'"([^"]+)"', group)}
    titles = {panel["title"] for path in DASHBOARDS for panel in panels(load(path))}
    assert len(named) >= 6
    assert named - titles == set()
    dashboards = set(re.findall(r'"(credit-risk-service / [^"]+)"', text))
    assert dashboards == {load(path)["title"] for path in DASHBOARDS}


# Span export has no panel: its counters exist only while traces are exported. Watchdog fires
# when the pipeline is fine; its runbook section is read when Prometheus itself may be down, so
# no dashboard can help: it names the endpoints to check.
WITHOUT_PANEL = {"TraceSpansLost", "Watchdog"}


def panels_named_in_runbook_section(alert: str) -> set[str]:
    """Titles of the panels (or rows) the runbook section of ``alert`` names."""
    text = RUNBOOK.read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    body = " ".join(sections[alert].split())
    lists = re.findall(r'((?:"[^"]+"(?:,| and| or)? )+)(?:panels?|row)\b', body)
    return {title for group in lists for title in re.findall(r'"([^"]+)"', group)}


def test_every_alerts_runbook_section_names_the_panels_to_look_at() -> None:
    # Paged, the on-call opens a dashboard: the section says which panel shows the alert's
    # condition (ServiceDown, the drift monitor and the prediction log named none).
    titles = {panel["title"] for path in DASHBOARDS for panel in panels(load(path))}
    unnamed = []
    for alert in alerts():
        name = alert["alert"]
        named = panels_named_in_runbook_section(name)
        assert named <= titles, (name, named - titles)
        if not named and name not in WITHOUT_PANEL:
            unnamed.append(name)
    assert unnamed == []


@pytest.mark.parametrize(
    ("alert", "metric"),
    [
        ("WorkersDying", "service_worker_deaths_total"),
        ("GrpcProbeFailing", "probe_success"),
        ("GrpcProbeFailing", "probe_grpc_status_code"),
        ("ReadinessProbeFailing", "probe_success"),
        ("ReadinessProbeFailing", "probe_http_status_code"),
        ("BlackboxExporterDown", "up"),
        ("LatencyBudgetBurnFast", "inference_request_duration_seconds_bucket"),
        ("LatencyP99High", "inference_request_duration_seconds_bucket"),
        ("ValidationFailureSpike", "inference_validation_failures_total"),
        ("PredictionLogRowsDropped", "prediction_log_rows_dropped_total"),
        ("PredictionLogLagging", "prediction_log_backlog_age_seconds"),
        ("PredictionLogStoreDown", "prediction_log_store_up"),
        ("DatasetDriftSustained", "model_drift_dataset_drifted"),
        ("PredictionDrift", "model_drift_prediction_score"),
        ("DriftMonitorStale", "model_drift_last_run_timestamp_seconds"),
        ("DriftMonitorFailing", "model_drift_runs_total"),
        ("DriftStarved", "model_drift_runs_total"),
        ("DriftStarved", "model_drift_insufficient_data"),
    ],
)
def test_a_panel_the_runbook_names_for_an_alert_shows_its_metric(alert: str, metric: str) -> None:
    # The panel the on-call is sent to must show what the alert fired on: the workers panel
    # showed live workers, in which a worker's death is a dip shorter than a scrape or two.
    named = panels_named_in_runbook_section(alert)
    shown = {m for _, panel, e in expressions() if panel in named for m in metric_names(e)}
    assert metric in shown, (alert, named)


def test_dashboards_and_alerts_describe_any_classifier_not_the_example() -> None:
    # README "Serving your own model": a swapped model keeps the dashboards and the alerts, so
    # their words must hold for any binary classifier: no example label, no credit vocabulary.
    # The example's labels, not the contract's: a swapped model's may be words the texts rightly
    # use ("failure", "healthy").
    example = re.compile(
        r"\b(good|bad|credit(?!-risk-service)|applicants?|approv\w*|refusals?)\b", re.IGNORECASE
    )
    texts = {path.name: path.read_text() for path in DASHBOARDS}
    texts["alerts.yml"] = (MONITORING / "prometheus" / "rules" / "alerts.yml").read_text()
    found = {name: example.findall(text) for name, text in texts.items()}
    assert {name: words for name, words in found.items() if words} == {}
