"""Every Open Inference Protocol call is recorded like an HTTP one: exactly one event per infer
call, with transport, endpoint, request id and, when refused, the errors and a readable excerpt.

In-process, over the real model: a real grpc.aio server called by tritonclient's asyncio client,
and the v2 REST routes called through httpx's ASGI transport. The sink records what the side
channels (prediction log, metrics) would receive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

import bentoml
import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.applications import Starlette
from tritonclient.utils import InferenceServerException

from models.contract import CONTRACT
from service import tracing
from service.events import PredictionEvent, RejectionEvent
from service.inference import Predictor
from service.metrics import ServiceMetrics
from service.model import load_model
from service.oip.protocol import InferenceProtocol
from service.oip.rest import v2_routes
from service.oip.server import GrpcServer
from tests.oip_support import rest_body, triton_inputs
from tests.support import EventRecorder, HeldEstimator, example_rows, refused_value

MODEL = CONTRACT.model_name
REST_ENDPOINT = f"/v2/models/{MODEL}/infer"


class BrokenEstimator:
    """Fault injection: a model that fails on every call."""

    classes_ = (0, 1)

    def predict_proba(self, frame: Any) -> np.ndarray:
        raise RuntimeError("boom: internal detail that must not reach clients")


@dataclass
class Stack:
    recorder: EventRecorder
    metrics: ServiceMetrics
    registry: CollectorRegistry  # the metrics' own
    grpc: triton_aio.InferenceServerClient
    http: httpx.AsyncClient


async def start_stack(model_tag: str, estimator: Any = None) -> AsyncIterator[Stack]:
    model = load_model(bentoml.models.get(model_tag))
    if estimator is not None:
        model = replace(model, estimator=estimator)
    recorder = EventRecorder()
    registry = CollectorRegistry()
    metrics = ServiceMetrics(model, registry)
    predictor = Predictor(
        model, max_instances=1000, max_model_batch_rows=4000, sinks=[recorder, metrics]
    )
    protocol = InferenceProtocol(predictor, "test", "0")
    server = GrpcServer(protocol, "127.0.0.1", 0, max_message_bytes=4 << 20, grace_seconds=1)
    await server.start()
    app = Starlette(routes=v2_routes(lambda: protocol, max_body_bytes=4 << 20))
    grpc_client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        yield Stack(recorder, metrics, registry, grpc_client, http)
    await grpc_client.close()
    await server.stop()
    await predictor.aclose()


@pytest.fixture
async def stack(model_tag: str) -> AsyncIterator[Stack]:
    async for item in start_stack(model_tag):
        yield item


@pytest.fixture
async def broken_stack(model_tag: str) -> AsyncIterator[Stack]:
    async for item in start_stack(model_tag, BrokenEstimator()):
        yield item


@pytest.fixture
def held() -> HeldEstimator:
    return HeldEstimator()


@pytest.fixture
async def slow_stack(model_tag: str, held: HeldEstimator) -> AsyncIterator[Stack]:
    async for item in start_stack(model_tag, held):
        yield item
        held.release.set()  # before the server stops: the model call ends


async def test_grpc_infer_publishes_one_prediction_event(stack: Stack) -> None:
    rows = example_rows(5)
    await stack.grpc.infer(MODEL, triton_inputs(triton_aio, rows), request_id="req-1")
    await stack.grpc.get_model_metadata(MODEL)  # not an inference: no event
    (event,) = stack.recorder.events
    assert isinstance(event, PredictionEvent)
    assert (event.request.transport, event.request.endpoint) == ("grpc", "ModelInfer")
    assert event.request.request_id == "req-1"
    assert event.instances == rows
    assert len(event.predictions) == 5


async def test_refused_grpc_infer_publishes_one_rejection_event(stack: Stack) -> None:
    # Any model's first feature, given a value of its type that its domain refuses.
    feature = CONTRACT.features[0]
    value, reason = refused_value(feature)
    rows = example_rows(3)
    rows[2] = {**rows[2], feature.name: value}
    with pytest.raises(InferenceServerException):
        await stack.grpc.infer(MODEL, triton_inputs(triton_aio, rows))
    (event,) = stack.recorder.events
    assert isinstance(event, RejectionEvent)
    assert (event.request.transport, event.request.endpoint, event.status) == (
        "grpc",
        "ModelInfer",
        400,
    )
    assert [(e.instance, e.field, e.reason.value) for e in event.errors] == [
        (2, feature.name, reason)
    ]
    # The protobuf message's size: at least its tensors' raw bytes (a length prefix per string).
    raw = sum(
        4 + len(row[f.name].encode()) if f.kind == "categorical" else 8
        for row in rows
        for f in CONTRACT.features
    )
    assert event.body_size > raw
    assert event.body_excerpt.startswith(f"ModelInfer model='{MODEL}' inputs raw=[")


async def test_unknown_model_is_recorded_as_refused(stack: Stack) -> None:
    with pytest.raises(InferenceServerException) as info:
        await stack.grpc.infer("fraud", triton_inputs(triton_aio, example_rows(1)))
    assert info.value.status() == "StatusCode.NOT_FOUND"
    (event,) = stack.recorder.events
    assert isinstance(event, RejectionEvent)
    assert (event.status, event.errors[0].reason.value) == (404, "unknown_model")


async def test_rest_infer_events(stack: Stack) -> None:
    rows = example_rows(2)
    ok = await stack.http.post(REST_ENDPOINT, json=rest_body(rows))
    assert ok.status_code == 200
    bad_body = rest_body(rows)
    del bad_body["inputs"][0]
    refused = await stack.http.post(REST_ENDPOINT, json=bad_body)
    assert refused.status_code == 400
    accepted, rejected = stack.recorder.events
    assert isinstance(accepted, PredictionEvent)
    assert (accepted.request.transport, accepted.request.endpoint) == ("http", REST_ENDPOINT)
    assert accepted.request.request_id == ok.headers["x-request-id"]
    assert accepted.instances == rows
    assert isinstance(rejected, RejectionEvent)
    assert rejected.errors[0].reason.value == "missing"
    assert rejected.body_excerpt.startswith('{"inputs"')


async def test_a_failing_model_answers_internal_without_details(broken_stack: Stack) -> None:
    with pytest.raises(InferenceServerException) as info:
        await broken_stack.grpc.infer(MODEL, triton_inputs(triton_aio, example_rows(1)))
    assert info.value.status() == "StatusCode.INTERNAL"
    assert info.value.message() == "the model failed to answer; the server log has the details"
    response = await broken_stack.http.post(REST_ENDPOINT, json=rest_body(example_rows(1)))
    assert response.status_code == 500
    assert "boom" not in response.text
    statuses = [e.status for e in broken_stack.recorder.events if isinstance(e, RejectionEvent)]
    assert statuses == [500, 500]


def _infer_started() -> float:
    labels = {
        "grpc_type": "unary",
        "grpc_service": "inference.GRPCInferenceService",
        "grpc_method": "ModelInfer",
    }
    return REGISTRY.get_sample_value("grpc_server_started_total", labels) or 0.0


def _infer_handled(code: str) -> float:
    labels = {
        "grpc_type": "unary",
        "grpc_service": "inference.GRPCInferenceService",
        "grpc_method": "ModelInfer",
        "grpc_code": code,
    }
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def _eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        await asyncio.sleep(0.02)
    assert condition()


async def test_a_passed_deadline_and_a_client_cancel_are_told_apart(
    slow_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passed deadline is DEADLINE_EXCEEDED and a 504 ``timeout``; a client's own cancel is
    CANCELLED and a 499 ``cancelled`` (nginx's "client closed request"), not a timeout. Traced,
    the first is a failed span, the second is not (OpenTelemetry's gRPC server conventions)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_exporting", True)
    monkeypatch.setattr(tracing, "get_tracer", lambda: provider.get_tracer("test"))
    before = {code: _infer_handled(code) for code in ("DeadlineExceeded", "Canceled")}
    started = _infer_started()
    inputs = triton_inputs(triton_aio, example_rows(1))
    # The model is held: any deadline passes. 1 s, not less: the first call on the channel also
    # connects, and must reach the server before its deadline on a busy machine.
    with pytest.raises(InferenceServerException) as info:
        await slow_stack.grpc.infer(MODEL, inputs, request_id="late", client_timeout=1)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    call = asyncio.ensure_future(slow_stack.grpc.infer(MODEL, inputs, request_id="gone"))
    # Cancelled once the server has the call (cancelled before, it never reaches the server).
    await _eventually(lambda: _infer_started() - started == 2)
    call.cancel()
    with suppress(asyncio.CancelledError):
        await call

    def counted() -> dict[str, float]:
        return {code: _infer_handled(code) - n for code, n in before.items()}

    await _eventually(lambda: counted() == {"DeadlineExceeded": 1, "Canceled": 1})
    records = [
        (e.request.request_id, e.status, [x.reason.value for x in e.errors])
        for e in slow_stack.recorder.events
        if isinstance(e, RejectionEvent)
    ]
    assert records == [("late", 504, ["timeout"]), ("gone", 499, ["cancelled"])]
    spans = {
        span.attributes["request.id"]: span
        for span in exporter.get_finished_spans()
        if span.name.endswith("/ModelInfer")
    }
    late, gone = spans["late"], spans["gone"]
    assert late.attributes["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert late.status.status_code is StatusCode.ERROR
    assert gone.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert gone.status.status_code is StatusCode.UNSET
    slow_stack.metrics.flush()
    for code in ("504", "499"):
        labels = {"transport": "grpc", "endpoint": "ModelInfer", "code": code}
        assert slow_stack.registry.get_sample_value("inference_requests_total", labels) == 1
    # a cancel is no validation failure
    failures = slow_stack.registry.get_sample_value(
        "inference_validation_failures_total",
        {"transport": "grpc", "field": "$request", "reason": "cancelled"},
    )
    assert failures is None
