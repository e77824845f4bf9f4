"""ServiceMetrics and its helpers, each test on a fresh registry."""

from __future__ import annotations

import gc
import importlib.metadata
import os
import subprocess
import sys
import threading
import weakref
from datetime import UTC, datetime
from pathlib import Path

import bentoml
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from models.contract import CONTRACT
from service.events import Prediction, PredictionEvent, RejectionEvent, RequestInfo
from service.metrics import (
    Flusher,
    PredictionLogMetrics,
    ProcessMetrics,
    ServiceMetrics,
    observe_many,
)
from service.model import LoadedModel, load_model
from service.validation import InstanceValidator, RequestRejected
from tests.support import ROOT, example_rows, first_feature, first_numeric_feature, wait_until

NEGATIVE, POSITIVE = CONTRACT.labels


@pytest.fixture(scope="module")
def model(model_tag: str) -> LoadedModel:
    return load_model(bentoml.models.get(model_tag))


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def info(
    transport: str = "http", endpoint: str = "/predict", latency: float = 0.003
) -> RequestInfo:
    return RequestInfo("r1", transport, datetime.now(UTC), latency, "m:v", None, endpoint)  # type: ignore[arg-type]


def test_observe_many_equals_observing_one_by_one(registry: CollectorRegistry) -> None:
    buckets = (0.1, 0.5, 1.0)
    one = Histogram("one", "d", buckets=buckets, registry=registry)
    many = Histogram("many", "d", buckets=buckets, registry=registry)
    values = np.array([0.0, 0.1, 0.10001, 0.5, 0.7, 1.0, 3.0])
    for v in values:
        one.observe(float(v))
    observe_many(many, values)
    observe_many(many, np.array([]))
    samples = {
        name: [(s.labels.get("le"), s.value) for s in metric.samples if s.name != f"{name}_created"]
        for metric in registry.collect()
        for name in [metric.name]
    }
    assert samples["one"] == samples["many"]


def test_requests_latency_and_validation_failures_by_transport(
    registry: CollectorRegistry, model: LoadedModel
) -> None:
    metrics = ServiceMetrics(model, registry)
    rows = example_rows(3)
    metrics.publish(PredictionEvent(info(), rows, [Prediction(NEGATIVE, 0.1)] * 3))
    # One refusal of each kind the contract's features allow (a model may have no categorical).
    numeric = first_numeric_feature()
    refusals = [("grpc", numeric.name, "out_of_range"), ("grpc", "$unknown", "unknown_field")]
    bad = [{**rows[0], numeric.name: numeric.minimum - 1}, {**rows[1], "colour": "red"}]
    for categorical in CONTRACT.of_kind("categorical")[:1]:
        bad[0][categorical.name] = "yacht"
        refusals.append(("grpc", categorical.name, "unknown_category"))
    with pytest.raises(RequestRejected) as refused:
        InstanceValidator(model.contract, 10).validate_instances(bad)
    metrics.publish(RejectionEvent(info("grpc", "ModelInfer"), 400, refused.value.errors, 10, ""))
    metrics.publish(RejectionEvent(info(), 500, [], 0, ""))
    value = registry.get_sample_value
    assert (
        value(
            "inference_request_duration_seconds_count",
            {"transport": "http", "endpoint": "/predict"},
        )
        is None
    )  # not yet: the worker's thread applies them
    metrics.flush()
    assert (
        value(
            "inference_requests_total", {"transport": "http", "endpoint": "/predict", "code": "200"}
        )
        == 1
    )
    assert (
        value(
            "inference_requests_total",
            {"transport": "grpc", "endpoint": "ModelInfer", "code": "400"},
        )
        == 1
    )
    assert (
        value(
            "inference_requests_total", {"transport": "http", "endpoint": "/predict", "code": "500"}
        )
        == 1
    )
    assert value("inference_request_instances_sum", {"transport": "http"}) == 3
    latency = {"transport": "http", "endpoint": "/predict", "le": "0.005"}
    assert value("inference_request_duration_seconds_bucket", latency) == 2
    failures = {
        labels: value(
            "inference_validation_failures_total",
            dict(zip(("transport", "field", "reason"), labels, strict=True)),
        )
        for labels in refusals
    }
    assert failures == dict.fromkeys(failures, 1.0)
    # a 500 is not a validation failure
    total = sum(
        s.value
        for m in registry.collect()
        if m.name == "inference_validation_failures"
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert total == len(refusals)


def test_model_calls_count_labels_scores_and_out_of_training_range(
    registry: CollectorRegistry, model: LoadedModel
) -> None:
    metrics = ServiceMetrics(model, registry)
    name = first_numeric_feature().name
    feature = model.contract.feature(name)  # with the training range registered
    rows = example_rows(4)
    rows[0][name] = feature.training_max + 1
    rows[1][name] = feature.training_min - 1
    rows[2][name] = feature.training_max  # inside: the range is inclusive
    columns = model.contract.arrays_of_columns(model.contract.columns_of_rows(rows))
    # Two scores below the model's threshold and two at or above it (the threshold is inclusive).
    threshold = model.threshold
    scores = np.array([threshold / 4, threshold, threshold / 2, 0.99])
    metrics.observe_model_call(columns, scores, model.labels(scores))
    metrics.observe_batch(rows=4, requests=2, seconds=0.008)
    version = model.version
    value = registry.get_sample_value
    # Not yet: the worker's thread applies them, after the model call, grouped.
    assert value("model_prediction_score_count", {"model_version": version}) == 0
    assert value("model_call_rows_count") == 0
    first = {name: values[:1] for name, values in columns.items()}
    metrics.observe_model_call(first, scores[:1], model.labels(scores[:1]))
    metrics.observe_batch(rows=1, requests=1, seconds=0.3)
    metrics.flush()

    # Two calls: the four rows above, then the first of them again.
    # The first row again: one more below the threshold.
    assert value("model_predictions_total", {"model_version": version, "label": NEGATIVE}) == 3
    assert value("model_predictions_total", {"model_version": version, "label": POSITIVE}) == 2
    assert value("model_prediction_score_count", {"model_version": version}) == 5
    below_99 = {"model_version": version, "le": "0.95"}
    assert value("model_prediction_score_bucket", below_99) == 4
    side = {"model_version": version, "feature": name}
    assert value("model_out_of_training_range_total", {**side, "side": "above"}) == 2
    assert value("model_out_of_training_range_total", {**side, "side": "below"}) == 1
    assert value("model_call_rows_sum") == 5
    assert value("model_call_rows_count") == 2
    assert value("model_call_requests_sum") == 3
    assert value("model_call_duration_seconds_bucket", {"le": "0.01"}) == 1
    assert value("model_call_duration_seconds_bucket", {"le": "0.5"}) == 2


def test_info_gauges_name_the_model_and_the_build(
    registry: CollectorRegistry, model: LoadedModel
) -> None:
    ServiceMetrics(model, registry)
    (sample,) = next(m for m in registry.collect() if m.name == "model_info").samples
    # Metadata a swapped model's training may not record: "unknown", as README documents.
    assert sample.labels == {
        "model": CONTRACT.model_name,
        "version": model.version,
        "tag": model.tag,
        "dataset_sha256": model.metadata.get("dataset", {}).get("sha256", "unknown"),
        "git_commit": model.metadata.get("git_commit", "unknown"),
    }
    (build,) = next(m for m in registry.collect() if m.name == "service_build_info").samples
    assert build.labels["scikit_learn_version"] == importlib.metadata.version("scikit-learn")


def test_prediction_log_observer(registry: CollectorRegistry) -> None:
    observer = PredictionLogMetrics(registry)
    value = registry.get_sample_value
    # At zero before the first drop, so that increase() sees it (the dropped-rows alert).
    unknown = {"table": "unknown", "reason": "corrupt"}
    assert value("prediction_log_rows_dropped_total", unknown) == 0
    observer.written("predictions", 5)
    observer.spooled("predictions", 2)
    observer.replayed("predictions", 2)
    observer.dropped("rejections", 1, "spool_full")
    observer.write_failed("write")
    observer.store_up(False)
    observer.queue_depth(7)
    observer.backlog_age(1.5)
    assert value("prediction_log_rows_written_total", {"table": "predictions"}) == 5
    assert value("prediction_log_rows_replayed_total", {"table": "predictions"}) == 2
    assert (
        value("prediction_log_rows_dropped_total", {"table": "rejections", "reason": "spool_full"})
        == 1
    )
    assert value("prediction_log_store_errors_total", {"operation": "write"}) == 1
    assert value("prediction_log_store_up") == 0
    assert value("prediction_log_queue_rows") == 7
    assert value("prediction_log_backlog_age_seconds") == 1.5


def test_process_metrics_sample_this_process(registry: CollectorRegistry) -> None:
    metrics = ProcessMetrics(registry)
    sum(i * i for i in range(200_000))  # spend some CPU
    metrics.sample()
    value = registry.get_sample_value
    assert value("process_cpu_seconds_total") > 0
    assert value("process_resident_memory_bytes") > 10_000_000
    assert value("process_open_fds") > 2
    assert value("service_workers") == 1


def test_published_requests_reach_the_metrics_from_the_flusher_thread_and_on_stop(
    registry: CollectorRegistry, model: LoadedModel
) -> None:
    metrics = ServiceMetrics(model, registry)
    metrics.start()
    count = {"transport": "http", "endpoint": "/predict", "code": "200"}
    event = PredictionEvent(info(), example_rows(2), [Prediction(NEGATIVE, 0.1)] * 2)
    metrics.publish(event)
    wait_until(lambda: registry.get_sample_value("inference_requests_total", count) == 1)
    metrics.publish(event)
    metrics.stop()  # what was published before stop() is applied, however recently
    assert registry.get_sample_value("inference_requests_total", count) == 2
    assert registry.get_sample_value("inference_request_instances_sum", {"transport": "http"}) == 4


def test_the_flusher_applies_every_registered_buffer_in_one_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flusher = Flusher(seconds=0.05)
    turns: list[str] = []

    def broken() -> None:
        turns.append("broken")
        raise RuntimeError("a metrics bug")

    def service() -> None:
        turns.append("service")

    def bentoml_requests() -> None:
        turns.append("bentoml")

    flusher.register(broken, "broken metrics")
    flusher.register(service, "request metrics")
    flusher.register(bentoml_requests, "BentoML request metrics")
    wait_until(lambda: turns.count("bentoml") >= 3)
    # One thread calls them in turn: a turn that applied the one applied the other (the one that
    # raised is logged and does not stop them). The thread starts at the first registration, so
    # its first turns may have run before the other two were registered: look after the first
    # turn that had all three.
    first = turns.index("bentoml") + 1
    assert turns[first : first + 6] == ["broken", "service", "bentoml"] * 2
    assert "applying broken metrics failed" in caplog.text
    flusher.unregister(broken)
    flusher.unregister(service)
    mark = len(turns)  # a turn in progress may still call them once
    wait_until(lambda: turns[mark:].count("bentoml") >= 3)
    later = turns[mark:]
    assert set(later[later.index("bentoml") + 1 :]) == {"bentoml"}
    flusher.unregister(bentoml_requests)


def test_a_flusher_without_its_thread_starts_one_on_registration() -> None:
    # As in a process forked from one whose flusher ran: the object is copied, the thread is not.
    flusher = Flusher(seconds=0.05)
    gone = threading.Thread(target=lambda: None)
    gone.start()
    gone.join()
    flusher._thread = gone
    calls: list[int] = []

    def flush() -> None:
        calls.append(1)

    flusher.register(flush, "request metrics")
    wait_until(lambda: len(calls) >= 2)
    flusher.unregister(flush)


def test_a_queued_model_call_holds_only_the_columns_it_checks(
    registry: CollectorRegistry, model: LoadedModel
) -> None:
    # The call's other columns (the categorical ones hold the request's strings) are not kept
    # until the next flush: a second of model calls would stay in memory.
    categorical, numeric = first_feature("categorical").name, first_numeric_feature().name
    metrics = ServiceMetrics(model, registry)
    columns = model.contract.arrays_of_columns(model.contract.columns_of_rows(example_rows(3)))
    kept = weakref.ref(columns[numeric])
    let_go = weakref.ref(columns[categorical])
    scores = np.array([0.1, 0.5, 0.9])
    metrics.observe_model_call(columns, scores, model.labels(scores))
    del columns
    gc.collect()
    assert let_go() is None
    assert kept() is not None
    metrics.flush()
    side = {"model_version": model.version, "feature": numeric, "side": "above"}
    assert registry.get_sample_value("model_out_of_training_range_total", side) == 0


def test_drift_metrics_show_no_run_yet_as_a_last_run_at_0_in_multiprocess_mode(
    tmp_path: Path,
) -> None:
    # As served (BentoML's multiprocess mode, `livemostrecent` gauges), before any run has
    # completed: a last run at 0, as documented, so that DriftMonitorStale
    # (time() - last run > 3 intervals) can fire for a monitor that never completes one. A
    # `mostrecent` gauge never set is left out of the scrape altogether.
    code = (
        "from service.metrics import DriftMetrics\n"
        "DriftMetrics(['a', 'b'], 60, 'v1', registry=None)"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=120)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("model_drift_interval_seconds") == 60
    version = {"model_version": "v1"}
    assert registry.get_sample_value("model_drift_last_run_timestamp_seconds", version) == 0
