"""Metrics and traces of a real `bentoml serve` with 2 workers.

- /metrics, parsed with prometheus_client's parser, counts exactly the traffic sent (summed over
  both workers), and `promtool check metrics` finds nothing to report;
- an OTLP/HTTP receiver on loopback gets one trace per request, parent-child linked, continuing
  the caller's traceparent, with the trace id of the request's prediction-log row;
- /metrics counts the spans the receiver got, and with the collector unreachable predictions are
  still answered while every span is counted failed or dropped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc

from models.contract import CONTRACT
from service import prometheus_dir
from service.metrics import PROCESS_SAMPLE_SECONDS, REQUEST_FLUSH_SECONDS
from service.predlog.store import Store
from tests.oip_support import rest_body, triton_inputs
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support import (
    ROOT,
    Samples,
    ServedService,
    above_training,
    example_rows,
    exported_names,
    numeric_or_first_feature,
    refused_value,
    scrape,
    send_post_head,
    total,
    wait_until,
)

# Counters the workers' threads apply once per REQUEST_FLUSH_SECONDS, not at once.
DEFERRED = ("inference_requests_total", "bentoml_service_request_total", "model_predictions_total")


def settled_scrape(url: str, timeout: float = 30.0) -> Samples:
    """A scrape the workers' metric threads have caught up with: what an earlier test sent is
    in it, not applied after it (which would be counted as this test's)."""
    deadline = time.monotonic() + timeout
    last = scrape(url)
    while True:
        time.sleep(REQUEST_FLUSH_SECONDS + 0.3)
        now = scrape(url)
        if all(total(now, n) == total(last, n) for n in DEFERRED):
            return now
        assert time.monotonic() < deadline, "metrics kept changing with no traffic"
        last = now


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def post_fresh(url: str, body: Any) -> httpx.Response:
    # A new connection per request: the kernel hands connections to both workers.
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post("/predict", json=body)


def test_metrics_count_what_was_sent_over_both_workers(served: ServedService) -> None:
    rows = example_rows(40)
    before = settled_scrape(served.url)
    # a numeric feature's value out of range, or a model of categories only an unknown category
    refused = numeric_or_first_feature()
    refused_with, refused_reason = refused_value(refused)
    # an unknown category too, if the model has categorical features
    categorical = CONTRACT.of_kind("categorical")[:1]

    singles = [{"instances": [r]} for r in rows[:30]]
    above = above_training(2)
    old = dict(rows[30], **above)  # above what training saw
    batch = {"instances": [*rows[31:40], old]}
    invalid = [
        {"instances": [{**rows[0], refused.name: refused_with}]},
        {"instances": [{**rows[1], refused.name: refused_with}]},
        {"instances": [{**rows[2], **{c.name: "yacht" for c in categorical}, "colour": "red"}]},
        {"instances": []},
    ]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post_fresh(served.url, b), [*singles, batch, *invalid]))
    assert [a.status_code for a in answers] == [200] * 31 + [400] * 4
    predictions = [p for a in answers[:31] for p in a.json()["predictions"]]
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{served.grpc_port}") as grpc_client:
        result = grpc_client.infer(CONTRACT.model_name, triton_inputs(triton_grpc, rows[:3]))
    grpc_labels = [label.decode() for label in result.as_numpy("label")]

    def applied() -> bool:
        # Each worker applies its request metrics every REQUEST_FLUSH_SECONDS.
        now = scrape(served.url)
        answered = total(now, "inference_requests_total") - total(
            before, "inference_requests_total"
        )
        return answered >= 36

    wait_until(applied, timeout=10)
    # A scrape can land inside a flush turn (the request counters applied, the latency histogram
    # not yet): read the values once the turn is over.
    after = settled_scrape(served.url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    http = {"transport": "http", "endpoint": "/predict"}
    assert delta("inference_requests_total", **http, code="200") == 31
    assert delta("inference_requests_total", **http, code="400") == 4
    assert delta("inference_requests_total", transport="grpc", endpoint="ModelInfer") == 1
    assert delta("inference_request_duration_seconds_count", **http) == 35
    assert delta("inference_request_instances_count", transport="http") == 31
    assert delta("inference_request_instances_sum", transport="http") == 40
    # Counted, not a dict's literal: for a model of categories only, the refused feature is the
    # categorical one, and its two kinds of requests are counted under one key.
    failures = Counter({(refused.name, refused_reason): 2})
    failures.update((c.name, "unknown_category") for c in categorical)
    failures.update([("$unknown", "unknown_field"), ("$request", "empty_batch")])
    for (field, reason), count in failures.items():
        assert delta("inference_validation_failures_total", field=field, reason=reason) == count
    assert delta("inference_validation_failures_total") == sum(failures.values())

    labels = [p["label"] for p in predictions] + grpc_labels  # 40 over HTTP, 3 over gRPC
    for label in CONTRACT.labels:
        assert delta("model_predictions_total", label=label) == labels.count(label)
    assert delta("model_prediction_score_count") == 43
    assert delta("model_call_rows_sum") == 43
    scores = np.array([p[CONTRACT.score_name] for p in predictions])
    http_low = int(np.sum(scores <= 0.1))
    assert delta("model_prediction_score_bucket", le="0.1") >= http_low
    # none to send for a model without integer or number features: nothing is out of range
    assert above or not CONTRACT.numeric_features()
    for feature in above:
        assert delta("model_out_of_training_range_total", feature=feature, side="above") == 1
    assert delta("grpc_server_handled_total", grpc_method="ModelInfer", grpc_code="OK") == 1

    # BentoML's own request metrics, applied by a thread of each worker too
    # (service/bentoml_metrics.py): every HTTP request, by status, none left in progress.
    bento = {"endpoint": "/predict"}

    def bentoml_applied() -> Samples | None:
        now = scrape(served.url)
        counted = total(now, "bentoml_service_request_total", **bento) - total(
            before, "bentoml_service_request_total", **bento
        )
        return now if counted >= 35 else None

    wait_until(bentoml_applied, timeout=10)
    # As above: a worker's flush turn applies each status's count, then its latency histogram,
    # then the in-progress gauges; a scrape inside the turn sees the count but not the others.
    bentoml_after = settled_scrape(served.url)

    def bentoml_delta(name: str, **labels: str) -> float:
        return total(bentoml_after, name, **labels) - total(before, name, **labels)

    assert bentoml_delta("bentoml_service_request_total", **bento, http_response_code="200") == 31
    assert bentoml_delta("bentoml_service_request_total", **bento, http_response_code="400") == 4
    assert bentoml_delta("bentoml_service_request_duration_seconds_count", **bento) == 35
    assert total(bentoml_after, "bentoml_service_request_in_progress", **bento) == 0
    assert total(bentoml_after, "bentoml_service_last_request_timestamp_seconds") > 0

    # the prediction log commits off the request path, within its flush interval (replayed: a
    # batch that met a busy store went through the spool)
    def written() -> bool:
        now = scrape(served.url)
        got = sum(
            total(now, name, table="predictions") - total(before, name, table="predictions")
            for name in ("prediction_log_rows_written_total", "prediction_log_rows_replayed_total")
        )
        return got == 43

    wait_until(written, timeout=30)
    assert value(after, "prediction_log_store_up") == 1
    (info,) = [ls for (n, ls), _ in after.items() if n == "model_info"]
    assert dict(info)["tag"] == answers[0].json()["model"]


def test_promtool_finds_nothing_to_report(served: ServedService) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make system-deps` (Debian package prometheus)"
    post_fresh(served.url, {"instances": example_rows(2)})
    text = httpx.get(f"{served.url}/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_two_servers_sharing_a_bentoml_home_keep_their_own_metrics(served: ServedService) -> None:
    """Two replicas on one host with one model store: starting the second neither blanks the
    first one's counters nor adds them to its own (BentoML's shared directory did both)."""

    def answered(samples: Samples) -> float:
        return total(samples, "inference_requests_total", endpoint="/predict", code="200")

    # The shared service is the first replica: it has counted earlier tests' requests too.
    first = served
    before = answered(settled_scrape(first.url))
    for _ in range(3):
        assert post_fresh(first.url, {"instances": example_rows(1)}).status_code == 200
    wait_until(lambda: answered(scrape(first.url)) == before + 3)
    with ServedService(env={"BENTOML_HOME": first.env["BENTOML_HOME"]}, workers=1) as second:
        assert post_fresh(second.url, {"instances": example_rows(1)}).status_code == 200
        wait_until(lambda: answered(scrape(second.url)) >= 1)
        assert answered(settled_scrape(second.url)) == 1
        assert answered(settled_scrape(first.url)) == before + 3


def test_server_error_series_exist_before_the_first_error(served: ServedService) -> None:
    # rate() needs two samples of a series: a 5xx series created by its first error would hide
    # that first burst (a short outage entirely) from the SLO's error ratios and burn-rate alerts.
    # Every endpoint answering predictions has its server-error series from the start, at 0.
    rows = example_rows(2)
    post_fresh(served.url, {"instances": rows})
    rest = httpx.post(
        f"{served.url}/v2/models/{CONTRACT.model_name}/infer", json=rest_body(rows), timeout=30
    )
    assert rest.status_code == 200, rest.text
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{served.grpc_port}") as grpc_client:
        grpc_client.infer(CONTRACT.model_name, triton_inputs(triton_grpc, rows))

    def endpoints() -> set[tuple[str, str]] | None:
        found = {
            (dict(labels)["transport"], dict(labels)["endpoint"])
            for (name, labels), _ in scrape(served.url).items()
            if name == "inference_requests_total"
        }
        return found if len(found) >= 3 else None  # the three answered requests are applied

    answered = wait_until(endpoints, timeout=10)
    samples = scrape(served.url)
    missing = [
        (transport, endpoint, code)
        for transport, endpoint in sorted(answered)
        for code in ("500", "503", "504")
        if (
            "inference_requests_total",
            frozenset({("transport", transport), ("endpoint", endpoint), ("code", code)}),
        )
        not in samples
    ]
    assert missing == []


def test_a_killed_workers_last_values_leave_the_live_gauges(model_tag: str) -> None:
    # A worker killed outright (the OOM killer, SIGKILL) cannot mark itself dead and BentoML
    # starts another: the dead one's last values must not stay in the per-live-worker gauges
    # (service_workers one too many, its memory and fds counted, a store outage it saw never
    # ending for PredictionLogStoreDown) for the rest of the service's life.
    with ServedService(workers=2) as service:
        wait_until(lambda: value(scrape(service.url), "service_workers") == 2, timeout=60)
        assert value(scrape(service.url), "service_worker_deaths_total") == 0
        before = service.worker_pids()
        os.kill(min(before), signal.SIGKILL)
        multiproc = prometheus_dir.directory_for(service.pid)

        def replaced() -> bool:
            # the new worker has created its metrics (and counts itself in service_workers)
            new = service.worker_pids() - before
            return any((multiproc / f"gauge_livesum_{pid}.db").exists() for pid in new)

        wait_until(replaced, timeout=120, interval=0.5)
        wait_until(lambda: value(scrape(service.url), "service_workers") == 2, timeout=30)
        time.sleep(PROCESS_SAMPLE_SECONDS + 1)  # every live worker has sampled since
        assert value(scrape(service.url), "service_workers") == 2
        # Its requests in flight were never answered, so no request metric counts them: the
        # death is counted, once (WorkersDying), though every live worker found its files.
        assert value(scrape(service.url), "service_worker_deaths_total") == 1


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def traced(model_tag: str) -> Iterator[tuple[ServedService, OtlpReceiver]]:
    with (
        OtlpReceiver() as receiver,
        ServedService(
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_SERVICE_NAME": "credit-risk-test",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            }
        ) as service,
    ):
        yield service, receiver


def trace_of(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans if s.trace_id == trace_id}


def test_a_request_is_one_linked_trace_continuing_the_callers(
    traced: tuple[ServedService, OtlpReceiver],
) -> None:
    service, receiver = traced
    response = httpx.post(
        f"{service.url}/predict",
        json={"instances": example_rows(3)},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-ID": "traced-1"},
        # the first prediction of a fresh process: 10 s on a busy machine, not httpx's 5 s
        timeout=30,
    )
    assert response.status_code == 200
    names = {"POST /predict", "validate", "model.predict", "log.enqueue"}
    spans = trace_of(receiver.wait_for(lambda s: names <= set(trace_of(s, TRACE_ID))), TRACE_ID)
    server = spans["POST /predict"]
    assert server.parent_span_id == PARENT_ID
    assert server.kind == 2  # SERVER
    assert server.attributes["request.id"] == "traced-1"
    assert server.attributes["request.instances"] == 3
    assert server.attributes["http.response.status_code"] == 200
    assert server.resource["service.name"] == "credit-risk-test"
    for child in ("validate", "model.predict", "log.enqueue"):
        assert spans[child].parent_span_id == server.span_id, child
    model_span = spans["model.predict"]
    assert model_span.attributes["model.version"] == response.json()["model"].split(":")[1]
    assert model_span.attributes["model.batch.rows"] >= 3
    # BentoML's own middleware did not trace the request a second time
    assert set(spans) == names

    store = Store(service.env["PREDICTION_LOG_URL"])
    rows = wait_until(lambda: store.find("traced-1")["predictions"], timeout=30)
    assert {r["trace_id"] for r in rows} == {TRACE_ID}
    # The access log's thread writes its lines once a second.
    access = wait_until(
        lambda: [json.loads(line) for line in service_output(service) if '"traced-1"' in line],
        timeout=10,
    )
    assert access[0]["trace_id"] == TRACE_ID


def service_output(service: ServedService) -> list[str]:
    return [line for line in service.read_log().splitlines() if line.startswith("{")]


def test_grpc_infer_is_traced_too(traced: tuple[ServedService, OtlpReceiver]) -> None:
    service, receiver = traced
    trace_id = "1" * 32
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{service.grpc_port}") as client:
        client.infer(
            CONTRACT.model_name,
            triton_inputs(triton_grpc, example_rows(2)),
            headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"},
        )
    name = "inference.GRPCInferenceService/ModelInfer"
    spans = trace_of(receiver.wait_for(lambda s: name in trace_of(s, trace_id)), trace_id)
    assert spans[name].parent_span_id == PARENT_ID
    assert spans[name].attributes["rpc.grpc.status_code"] == 0
    receiver.wait_for(lambda s: "model.predict" in trace_of(s, trace_id))


@pytest.mark.parametrize("path", ["/predict", f"/v2/models/{CONTRACT.model_name}/infer"])
def test_a_slow_upload_is_not_charged_to_validation(
    traced: tuple[ServedService, OtlpReceiver], path: str
) -> None:
    # On-call reads a long `validate` span as slow validation: the time the client took to
    # send its body belongs to the request's span, not to that child.
    service, receiver = traced
    trace_id = ("c" if path == "/predict" else "d") * 32  # unlike the other tests'
    instances = example_rows(2)
    if path == "/predict":
        body = orjson.dumps({"instances": instances})
    else:
        body = orjson.dumps(rest_body(instances))
    headers = {"traceparent": f"00-{trace_id}-{PARENT_ID}-01", "Connection": "close"}
    with send_post_head(service.port, path, len(body), headers) as sock:
        sock.sendall(body[:10])
        time.sleep(1.0)
        sock.sendall(body[10:])
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    name = "POST /predict" if path == "/predict" else "POST /v2/models/{name}/infer"
    spans = trace_of(
        receiver.wait_for(lambda s: {name, "validate"} <= set(trace_of(s, trace_id))), trace_id
    )
    assert spans[name].seconds >= 1.0
    assert spans["validate"].seconds < 0.5, spans["validate"]


def test_a_refused_request_is_traced_without_being_an_error(
    traced: tuple[ServedService, OtlpReceiver],
) -> None:
    service, receiver = traced
    trace_id = "2" * 32
    response = httpx.post(
        f"{service.url}/predict",
        json={"instances": []},
        headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"},
        timeout=30,
    )
    assert response.status_code == 400
    spans = trace_of(
        receiver.wait_for(lambda s: "POST /predict" in trace_of(s, trace_id)), trace_id
    )
    assert spans["POST /predict"].attributes["http.response.status_code"] == 400
    assert "model.predict" not in spans


def test_without_an_exporter_rows_still_carry_the_callers_trace_id(served: ServedService) -> None:
    trace_id = "3" * 32
    response = httpx.post(
        f"{served.url}/predict",
        json={"instances": example_rows(1)},
        headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01", "X-Request-ID": "untraced-1"},
        timeout=30,
    )
    assert response.status_code == 200
    store = Store(served.env["PREDICTION_LOG_URL"])
    rows = wait_until(lambda: store.find("untraced-1")["predictions"], timeout=30)
    assert rows[0]["trace_id"] == trace_id


def exported_metrics(url: str) -> set[str]:
    """The service's own families: BentoML's, gRPC's and drift's are checked elsewhere."""
    return {
        name
        for name in exported_names(url)
        if not name.startswith(("bentoml_", "grpc_server_", "model_drift_"))
    }


def documented_metrics() -> set[str]:
    section = (ROOT / "docs" / "metrics-and-traces.md").read_text()
    # a counter by numeric feature has no series, hence no family, for a model without one
    unexported = set() if CONTRACT.numeric_features() else {"model_out_of_training_range_total"}
    return {
        name
        for name in re.findall(r"^\| `([a-z_]+)` \| (?:counter|gauge|histogram) \|", section, re.M)
        if not name.startswith("model_drift_")  # drift is off here; tests/drift checks them
    } - unexported


def test_the_docs_document_exactly_the_metrics_exported(served: ServedService) -> None:
    post_fresh(served.url, {"instances": example_rows(1)})
    post_fresh(served.url, {"instances": []})
    # span export metrics exist only while spans are exported (the next test)
    documented = {n for n in documented_metrics() if not n.startswith("trace_")}
    # the refused request's counter appears once the metrics thread has applied it
    wait_until(lambda: exported_metrics(served.url) >= documented, timeout=10)
    assert exported_metrics(served.url) == documented


def test_the_docs_document_exactly_the_metrics_exported_with_tracing(
    traced: tuple[ServedService, OtlpReceiver],
) -> None:
    service, _ = traced
    post_fresh(service.url, {"instances": example_rows(1)})
    post_fresh(service.url, {"instances": []})
    wait_until(lambda: exported_metrics(service.url) >= documented_metrics(), timeout=10)
    assert exported_metrics(service.url) == documented_metrics()


SPAN_COUNTERS = (
    "trace_spans_exported_total",
    "trace_spans_failed_total",
    "trace_spans_dropped_total",
)
SPANS_PER_PREDICTION = 4  # POST /predict, validate, model.predict, log.enqueue


def span_counts(url: str) -> tuple[float, ...]:
    samples = scrape(url)
    return tuple(total(samples, name) for name in SPAN_COUNTERS)


def test_metrics_count_the_spans_the_collector_received(
    traced: tuple[ServedService, OtlpReceiver],
) -> None:
    service, receiver = traced
    for i in range(5):
        trace_id = f"{i + 4:x}" * 32
        response = httpx.post(
            f"{service.url}/predict",
            json={"instances": example_rows(1)},
            headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"},
            timeout=30,  # the first prediction of the other worker may be one of these
        )
        assert response.status_code == 200
        receiver.wait_for(lambda s, t=trace_id: len(trace_of(s, t)) == SPANS_PER_PREDICTION)

    # Every span the receiver took (this module's earlier tests' too, from both workers) is
    # counted exported once the workers' metric threads have applied them; none lost. Both are
    # read again on each try: a span of an earlier test still in a worker's export queue may
    # reach the receiver meanwhile.
    def settled() -> tuple[float, ...] | None:
        received = len(receiver.spans())
        counts = span_counts(service.url)
        return counts if counts[0] == received else None

    counts = wait_until(settled, timeout=10)
    assert counts[1:] == (0, 0)


def test_with_the_collector_unreachable_predictions_answer_and_lost_spans_are_counted(
    model_tag: str,
) -> None:
    # Nothing listens on the port: each export is refused, retried until the exporter's 1 s
    # timeout, and given up (failed); meanwhile the 8-span queue overflows (dropped).
    # A port bound and never listening: connections to it are refused, and no other process
    # can take it meanwhile (a port merely seen free could be listened on by then).
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
    requests = 20
    with (
        closed,
        ServedService(
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": refused,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_BSP_MAX_QUEUE_SIZE": "8",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
            },
            workers=1,
        ) as service,
    ):
        assert span_counts(service.url) == (0, 0, 0)  # the series exist from the start
        for _ in range(requests):
            response = post_fresh(service.url, {"instances": example_rows(1)})
            assert response.status_code == 200, response.text
        spans = requests * SPANS_PER_PREDICTION

        def settled() -> tuple[float, ...] | None:
            counts = span_counts(service.url)
            return counts if counts[1] + counts[2] >= spans else None

        # Every span is counted, failed or dropped. A span ending while the SDK hands a batch
        # from a full queue to the exporter can be counted dropped and then failed too (see
        # CountingSpanProcessor), hence at least.
        exported, failed, dropped = wait_until(settled, timeout=60, interval=0.5)
        assert exported == 0
        assert failed > 0  # the batches the exporter gave up on
        assert dropped > 0  # the spans the full queue pushed out meanwhile
