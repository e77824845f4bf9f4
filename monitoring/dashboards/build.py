"""The Grafana dashboards of credit-risk-service, as code (grafana-foundation-sdk, Grafana 11.6).

``make dashboards`` writes them to ``monitoring/grafana/dashboards/*.json``; a test fails when the
committed JSON differs from what this module builds. Every query selects ``instance=~"$instance"``
(and model metrics ``model_version``/``version``), and every panel's description says what normal
looks like, for the on-call engineer who opens it at night.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'instance=~"$instance"'  # the selector every query carries
# process_* metrics are exported by every scraped process (Prometheus itself too): with
# $instance at All (.*) only the service's job may match
PROC = f'job="credit-risk-service",{SEL}'
M = f'{SEL},model_version=~"$model_version"'
RATE = "$__rate_interval"
# The blackbox exporter's probes (prometheus.yml, the *-probe jobs): their instance is the address
# probed, not a scrape target of $instance, so their panels show every target.
GRPC_PROBE = 'job="credit-risk-service-grpc-probe"'
READYZ_PROBE = 'job="credit-risk-service-readyz-probe"'
PROBES = 'job=~"credit-risk-service-(grpc|readyz)-probe"'
EXPORTER = 'job="blackbox-exporter"'
SLO_ERROR_BUDGET = 0.001  # 99.9% availability, as in monitoring/prometheus/rules/recording.yml

Panel = Builder[model.Panel]


def query(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "") -> prom.Dataquery:
    q = prom.Dataquery().expr(expr).datasource(DATASOURCE).legend_format(legend or "__auto")
    if instant:
        q = q.instant()
    if fmt:
        q = q.format(PromQueryFormat(fmt))
    return q


def _common(
    panel: Any, title: str, description: str, queries: list[prom.Dataquery], w: int, h: int
) -> Any:
    panel = panel.title(title).description(description).datasource(DATASOURCE).span(w).height(h)
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(q.ref_id(ref))
    return panel


def series(
    title: str,
    description: str,
    *queries: prom.Dataquery,
    unit: str = "short",
    w: int = 12,
    h: int = 8,
) -> Panel:
    return _common(timeseries.Panel(), title, description, list(queries), w, h).unit(unit)


def single(
    title: str,
    description: str,
    *queries: prom.Dataquery,
    unit: str = "short",
    w: int = 6,
    h: int = 4,
) -> Panel:
    return _common(stat.Panel(), title, description, list(queries), w, h).unit(unit)


def tabular(
    title: str,
    description: str,
    *queries: prom.Dataquery,
    w: int = 12,
    h: int = 6,
    values: dict[str, str | None] | None = None,
) -> Panel:
    """A table of instant queries, merged on their labels. Grafana names the value column of
    each query ``Value #<refId>`` (A, B, ... in order) when there are several: ``values`` names
    them for the reader (None hides one, e.g. an info metric's constant 1)."""
    panel = _common(table.Panel(), title, description, list(queries), w, h)
    if len(queries) > 1:
        panel = panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    exclude = {"Time": True, "__name__": True, "job": True}
    exclude |= {column: True for column, name in (values or {}).items() if name is None}
    rename = {column: name for column, name in (values or {}).items() if name is not None}
    options: dict[str, object] = {"excludeByName": exclude}
    if rename:
        options["renameByName"] = rename
    return panel.with_transformation(
        model.DataTransformerConfig(id_val="organize", options=options)
    )


def variables(dash: db.Dashboard, *, model_version: bool) -> db.Dashboard:
    dash = dash.with_variable(
        db.DatasourceVariable("datasource").label("Data source").type("prometheus")
    )
    dash = dash.with_variable(
        db.QueryVariable("instance")
        .label("Instance")
        .datasource(DATASOURCE)
        .query("label_values(service_workers, instance)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    if model_version:
        dash = dash.with_variable(
            db.QueryVariable("model_version")
            .label("Model version")
            .datasource(DATASOURCE)
            .query(f"label_values(model_info{{{SEL}}}, version)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    return dash


def layout(dash: db.Dashboard, rows: list[tuple[str, list[Panel]]]) -> model.Dashboard:
    for title, panels in rows:
        dash = dash.with_row(db.Row(title))
        for panel in panels:
            dash = dash.with_panel(panel)
    built = dash.build()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return built


def base(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["credit-risk-service"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .editable()
    )


def service_health() -> model.Dashboard:
    quantiles = [
        query(
            f"histogram_quantile({q}, sum by (le, transport) "
            f"(rate(inference_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{transport}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]
    traffic = [
        series(
            "Request rate by transport",
            "Answered prediction requests per second, HTTP (/predict and v2 REST) and gRPC. "
            "Normal: follows your callers' daily pattern; a sudden drop to zero with no "
            "ServiceDown alert means callers stopped reaching the service.",
            query(
                f"sum by (transport) (rate(inference_requests_total{{{SEL}}}[{RATE}]))",
                "{{transport}}",
            ),
            unit="reqps",
        ),
        series(
            "Error ratio: 4xx and 5xx apart",
            "Share of answered requests refused as invalid (4xx: the caller's data) and failed "
            "(5xx: ours). Normal: 5xx at 0; 4xx near 0 (a few malformed requests). 5xx spends "
            "the availability SLO's error budget; 4xx does not.",
            query(
                # 499: the client cancelled its call, no fault of its data
                "(sum(rate(inference_requests_total"
                f'{{{SEL},code=~"4..",code!="499"}}[{RATE}])) or vector(0))'
                f" / sum(rate(inference_requests_total{{{SEL}}}[{RATE}]))",
                "4xx (refused)",
            ),
            query(
                f'(sum(rate(inference_requests_total{{{SEL},code=~"5.."}}[{RATE}])) or vector(0))'
                f" / sum(rate(inference_requests_total{{{SEL}}}[{RATE}]))",
                "5xx (failed)",
            ),
            unit="percentunit",
        ),
        series(
            "Latency p50 / p95 / p99 by transport",
            "Arrival to answer ready, from the histograms of all workers and instances summed "
            "before the quantile. Normal: a few milliseconds; the p99 objective is 250 ms "
            "(LatencyP99High).",
            *quantiles,
            unit="s",
        ),
        series(
            "In-flight requests",
            "Requests being handled right now: HTTP (BentoML's gauge) and gRPC (calls started "
            "minus calls handled). Normal: near 0-10; a steady climb means requests queue for "
            "the model.",
            query(f"sum(bentoml_service_request_in_progress{{{SEL}}})", "HTTP"),
            query(
                f"sum(grpc_server_started_total{{{SEL}}}) - sum(grpc_server_handled_total"
                f"{{{SEL}}})",
                "gRPC",
            ),
        ),
        series(
            "Batch sizes",
            "Mean instances per request, rows per model call and requests merged into one "
            "call. Normal: rows per call grow with concurrency (merging); requests merged is 1 "
            "at low traffic.",
            # means, not histogram quantiles: a quantile in the first bucket (le 1) is
            # interpolated between 0 and 1 and showed 0.5 for single-instance requests
            *(
                query(
                    f"sum(rate({metric}_sum{{{SEL}}}[{RATE}]))"
                    f" / sum(rate({metric}_count{{{SEL}}}[{RATE}]))",
                    legend,
                )
                for metric, legend in (
                    ("inference_request_instances", "instances per request (mean)"),
                    ("model_call_rows", "rows per model call (mean)"),
                    ("model_call_requests", "requests per model call (mean)"),
                )
            ),
        ),
        series(
            "HTTP and gRPC side by side",
            "HTTP requests by endpoint and status (BentoML's metric, also requests that never "
            "reach the service's code), requests the HTTP server refused before any route "
            "(malformed 400, head too large 431, head too slow 408) and gRPC calls by method "
            "and code. Normal: 200 / OK dominate; refused near 0 (a steady rate is a broken "
            "client, a scanner or slow-header connections); InvalidArgument is the gRPC 400.",
            query(
                f"sum by (endpoint, http_response_code)"
                f" (rate(bentoml_service_request_total{{{SEL}}}[{RATE}]))",
                "HTTP {{endpoint}} {{http_response_code}}",
            ),
            query(
                f"sum by (reason, code) (rate(http_requests_refused_total{{{SEL}}}[{RATE}])) > 0",
                "HTTP refused {{reason}} {{code}}",
            ),
            query(
                f"sum by (grpc_method, grpc_code)"
                f" (rate(grpc_server_handled_total{{{SEL}}}[{RATE}])) > 0",
                "gRPC {{grpc_method}} {{grpc_code}}",
            ),
            unit="reqps",
        ),
    ]
    process = [
        series(
            "CPU",
            "CPU seconds per second used by all workers of an instance (1 = one core). Normal: "
            "well under the cores given to it; at the number of cores it is saturated.",
            query(
                f"sum by (instance) (rate(process_cpu_seconds_total{{{PROC}}}[{RATE}]))",
                "{{instance}}",
            ),
            unit="short",
            w=8,
        ),
        series(
            "Memory",
            "Resident memory of all workers of an instance. Normal: flat after warm-up "
            "(each worker holds a copy of the model); a steady climb is a leak.",
            query(f"sum by (instance) (process_resident_memory_bytes{{{PROC}}})", "{{instance}}"),
            unit="bytes",
            w=8,
        ),
        series(
            "File descriptors and workers",
            "Open file descriptors of all workers against one worker's limit, live workers, and "
            "workers that died while serving (killed outright or crashed; BentoML replaces them). "
            "Normal: open far below the limit; workers equal to WORKERS; no deaths "
            "(WorkersDying).",
            query(f"sum by (instance) (process_open_fds{{{PROC}}})", "open {{instance}}"),
            query(
                f"min by (instance) (process_max_fds{{{PROC}}})", "limit per worker {{instance}}"
            ),
            query(f"sum by (instance) (service_workers{{{SEL}}})", "workers {{instance}}"),
            query(
                f"sum by (instance) (increase(service_worker_deaths_total{{{SEL}}}[{RATE}]))",
                "worker deaths {{instance}}",
            ),
            w=8,
        ),
    ]
    probes = [
        series(
            "Probes from outside",
            "1 while the blackbox exporter's probe of a target succeeds, per target: the gRPC "
            "health check of the inference service, GET /readyz answering 200. The targets are "
            "what clients dial (prometheus.yml). Normal: 1 for every target; a target at 0 (or "
            "without data: see Probe scrapes) for a minute while /metrics answers fires "
            "GrpcProbeFailing or ReadinessProbeFailing.",
            query(f"min by (instance) (probe_success{{{GRPC_PROBE}}})", "gRPC {{instance}}"),
            query(f"min by (instance) (probe_success{{{READYZ_PROBE}}})", "readyz {{instance}}"),
            w=8,
        ),
        series(
            "Probe answers",
            "What each probe got: the gRPC call's status code (0 OK; 14 UNAVAILABLE: no "
            "connection, or not a gRPC server; 5 NOT_FOUND: a gRPC server without this "
            "service) with the health status answered, and the HTTP status of /readyz (0: no "
            "connection or no answer in 5 s). Normal: gRPC 0 with SERVING, HTTP 200.",
            query(
                f"max by (instance) (probe_grpc_status_code{{{GRPC_PROBE}}})",
                "gRPC status code {{instance}}",
            ),
            query(
                f"max by (instance, serving_status) "
                f"(probe_grpc_healthcheck_response{{{GRPC_PROBE}}}) == 1",
                "gRPC health {{serving_status}} {{instance}}",
            ),
            query(
                f"max by (instance) (probe_http_status_code{{{READYZ_PROBE}}})",
                "HTTP status {{instance}}",
            ),
            w=8,
        ),
        series(
            "Probe scrapes",
            "Whether each probe finished within Prometheus's scrape timeout (1), per target, and "
            "whether the blackbox exporter answers its own scrape. A probe that does not finish "
            "(an endpoint that accepts connections and never answers holds the gRPC probe) "
            "counts as failed while the exporter is up. Normal: all 1; the exporter at 0 for "
            "5 minutes fires BlackboxExporterDown.",
            query(f"min by (instance) (up{{{PROBES}}})", "probe finished {{instance}}"),
            query(f"max(up{{{EXPORTER}}})", "exporter up"),
            w=8,
        ),
    ]
    predlog = [
        series(
            "Prediction-log lag",
            "Age of the oldest record not yet in the store, per instance. Normal: under a "
            "second; over 5 minutes fires PredictionLogLagging for the instance.",
            query(
                f"max by (instance) (prediction_log_backlog_age_seconds{{{SEL}}})",
                "lag {{instance}}",
            ),
            unit="s",
            w=8,
        ),
        series(
            "Prediction-log rows",
            "Rows per second committed from the queue, written to the spool, replayed from it "
            "and dropped. Normal: written only; spooled and replayed appear during a store "
            "outage; dropped must stay at 0 (PredictionLogRowsDropped).",
            query(f"sum(rate(prediction_log_rows_written_total{{{SEL}}}[{RATE}]))", "written"),
            query(f"sum(rate(prediction_log_rows_spooled_total{{{SEL}}}[{RATE}]))", "spooled"),
            query(f"sum(rate(prediction_log_rows_replayed_total{{{SEL}}}[{RATE}]))", "replayed"),
            query(
                f"sum by (reason) (rate(prediction_log_rows_dropped_total{{{SEL}}}[{RATE}]))",
                "dropped {{reason}}",
            ),
            unit="short",
            w=8,
        ),
        series(
            "Prediction-log queue, spool and store",
            "Per instance: rows waiting in memory, bytes waiting in the spool, and whether "
            "every worker's store takes writes (1). Normal: queue near 0, spool 0, store up 1.",
            query(
                f"sum by (instance) (prediction_log_queue_rows{{{SEL}}})",
                "queued rows {{instance}}",
            ),
            query(
                f"max by (instance) (prediction_log_spool_bytes{{{SEL}}})",
                "spool bytes {{instance}}",
            ),
            query(f"min by (instance) (prediction_log_store_up{{{SEL}}})", "store up {{instance}}"),
            w=8,
        ),
    ]
    budget = f"1 - max(job:inference_request_errors:ratio_rate30d) / {SLO_ERROR_BUDGET}"
    slo = [
        single(
            "Availability, 30 days",
            "Share of prediction requests of the last 30 days not answered 5xx (all instances "
            "of the job). Normal: at or above the 99.9% objective.",
            query("1 - max(job:inference_request_errors:ratio_rate30d)", "availability"),
            unit="percentunit",
        ),
        single(
            "Error budget remaining, 30 days",
            "Share of the 30-day error budget (0.1% of requests) not yet spent. Normal: above "
            "0; at 0 the SLO is missed for the period.",
            query(budget, "budget remaining"),
            unit="percentunit",
        ),
        series(
            "Error budget burn rate",
            "How fast the budget is spent, per window (1 = exactly the budget over 30 days). "
            "Normal: below 1. Pages when 1h and 5m are over 14.4 (or 6h and 30m over 6); "
            "tickets when 3d and 6h are over 1 (or 1d and 2h over 3).",
            *(
                query(
                    f"max(job:inference_request_errors:ratio_rate{w}) / {SLO_ERROR_BUDGET}",
                    f"burn rate {w}",
                )
                for w in ("5m", "1h", "6h", "3d")
            ),
            w=12,
        ),
    ]
    dash = variables(
        base(
            "crs-service-health",
            "credit-risk-service / Service health",
            "Traffic, errors, latency, processes, probes from outside, the prediction log and "
            "the availability SLO.",
        ),
        model_version=False,
    )
    return layout(
        dash,
        [
            ("Traffic, errors and latency", traffic),
            ("Processes", process),
            ("Probes from outside", probes),
            ("Prediction log", predlog),
            ("Availability SLO (99.9%)", slo),
        ],
    )


def model_health() -> model.Dashboard:
    predictions = [
        series(
            "Predictions by label",
            "Predicted instances per second by label. Normal: the label mix of the training "
            "data; a shift in the mix is what prediction drift measures.",
            query(f"sum by (label) (rate(model_predictions_total{{{M}}}[{RATE}]))", "{{label}}"),
            unit="short",
        ),
        _common(
            heatmap.Panel(),
            "Score distribution",
            "Scores (probability of the positive label) per bucket of 0.05 over time. Normal: the "
            "same shape day after day; a band moving up or down is a change in the population.",
            [
                query(
                    f"sum by (le) (increase(model_prediction_score_bucket{{{M}}}[{RATE}]))",
                    "{{le}}",
                    fmt="heatmap",
                )
            ],
            12,
            8,
        ),
        tabular(
            "Served model",
            "The model each instance serves: version, tag, hash of the training data set and "
            "the git commit it was trained from. Normal: one row per instance, the same "
            "version everywhere except during a rollout.",
            query(
                f"max by (instance, version, tag, dataset_sha256, git_commit)"
                f' (model_info{{{SEL},version=~"$model_version"}})',
                instant=True,
                fmt="table",
            ),
            w=24,
            h=5,
        ),
    ]
    inputs = [
        series(
            "Validation failures by field and reason",
            "Problems found in refused requests per second, by feature and rule. Normal: near "
            "0; a step up from one field points at one upstream change (ValidationFailureSpike).",
            query(
                f"sum by (field, reason) (rate(inference_validation_failures_total"
                f"{{{SEL}}}[{RATE}]))",
                "{{field}} {{reason}}",
            ),
        ),
        series(
            "Out-of-training-range values by feature",
            "Accepted values beyond the range seen in training, per second, by feature and "
            "side. Normal: rare; a steady stream on one feature often announces drift.",
            query(
                f"sum by (feature, side) (rate(model_out_of_training_range_total{{{M}}}[{RATE}]))",
                "{{feature}} {{side}}",
            ),
        ),
    ]
    drift = [
        single(
            "Dataset drift",
            "Whether the last drift run found the recent inputs drifted from the training data "
            "(1). Normal: 0. Sustained 1 fires DatasetDriftSustained.",
            query(
                f"max by (model_version) (model_drift_dataset_drifted{{{M}}})",
                "dataset drifted {{model_version}}",
            ),
        ),
        single(
            "Share of drifted features",
            "Share of features whose drift test failed in the last run. Normal: near 0.",
            query(
                f"max by (model_version) (model_drift_drifted_features_ratio{{{M}}})",
                "drifted share {{model_version}}",
            ),
            unit="percentunit",
        ),
        single(
            "Drift window",
            "Logged instances in the drift window, and whether they are too few for a "
            "verdict (insufficient data: 1). Normal: DRIFT_WINDOW_SIZE, insufficient 0.",
            query(
                f"max by (model_version) (model_drift_window_instances{{{M}}})",
                "window instances {{model_version}}",
            ),
            query(
                f"max by (model_version) (model_drift_insufficient_data{{{M}}})",
                "insufficient data {{model_version}}",
            ),
        ),
        single(
            "Last drift run",
            "Seconds since the last drift run, how long it took, and the age of the newest "
            "instance in its window. Normal: under DRIFT_INTERVAL_SECONDS; over three intervals "
            "fires DriftMonitorStale. A growing data age: no traffic, drift runs on old data.",
            query(
                f"time() - max by (model_version) (model_drift_last_run_timestamp_seconds{{{M}}})",
                "age {{model_version}}",
            ),
            query(
                f"max by (model_version) (model_drift_last_run_duration_seconds{{{M}}})",
                "duration {{model_version}}",
            ),
            query(
                "time() - max by (model_version)"
                f" (model_drift_window_newest_timestamp_seconds{{{M}}})",
                "window newest data age {{model_version}}",
            ),
            unit="s",
        ),
        series(
            "Drift score per feature",
            "Each feature's drift statistic from the last runs (its test is in the table "
            "beside): a p-value for tests (K-S, chi-square, Z: drifted below the threshold, "
            "0.05), a distance for distances (Wasserstein, Jensen-Shannon: drifted at or above "
            "it, 0.1). Normal: p-values above 0.05 (about one feature in twenty dips below by "
            "chance), distances below 0.1.",
            query(
                f"max by (feature, model_version) (model_drift_feature_score{{{M}}})",
                "{{feature}} {{model_version}}",
            ),
        ),
        tabular(
            "Drift test per feature",
            "Per feature: the test, its threshold and whether it drifted in the last run "
            "(1). Normal: drifted 0 for (almost) every feature.",
            query(
                f"max by (feature, method, model_version) (model_drift_feature_method_info{{{M}}})",
                instant=True,
                fmt="table",
            ),
            query(
                f"max by (feature, model_version) (model_drift_feature_threshold{{{M}}})",
                instant=True,
                fmt="table",
            ),
            query(
                f"max by (feature, model_version) (model_drift_feature_drifted{{{M}}})",
                instant=True,
                fmt="table",
            ),
            h=8,
            # A: the method's info series (always 1), B: the threshold, C: the verdict
            values={"Value #A": None, "Value #B": "threshold", "Value #C": "drifted (1 = yes)"},
        ),
        series(
            "Prediction drift",
            "Drift statistic of the predicted scores against the reference, with its threshold, "
            "and the verdict (1: drifted). The statistic is a p-value (K-S: drifted below the "
            "threshold) or, with over 1000 reference rows, a distance (drifted at or above it). "
            "Normal: drifted 0.",
            query(
                f"max by (model_version) (model_drift_prediction_score{{{M}}})",
                "score {{model_version}}",
            ),
            query(
                f"max by (model_version) (model_drift_prediction_threshold{{{M}}})",
                "threshold {{model_version}}",
            ),
            query(
                f"max by (model_version) (model_drift_prediction_drifted{{{M}}})",
                "drifted {{model_version}}",
            ),
        ),
        series(
            "Drift runs by status",
            "Drift runs per interval by outcome. Normal: ok (insufficient_data while the window "
            "fills; only that for 6 hours fires DriftStarved); failed runs fire "
            "DriftMonitorFailing. The configured interval is shown too.",
            # each run is counted once, by the replica that ran it: summed, unlike the gauges
            query(
                f"sum by (status, model_version) (increase(model_drift_runs_total{{{M}}}[{RATE}]))",
                "{{status}} {{model_version}}",
            ),
            query(f"max(model_drift_interval_seconds{{{SEL}}})", "interval (s)"),
        ),
    ]
    dash = variables(
        base(
            "crs-model-health",
            "credit-risk-service / Model health",
            "What the model predicts, what it is sent, and drift from its training data.",
        ),
        model_version=True,
    )
    return layout(
        dash,
        [("Predictions", predictions), ("Inputs", inputs), ("Drift", drift)],
    )


DASHBOARDS = {"service-health.json": service_health, "model-health.json": model_health}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
