"""METRICS_ENABLED=false turns the gRPC call metrics off too (in-process gRPC server)."""

from __future__ import annotations

import bentoml
import grpc
import pytest

from service.inference import Predictor
from service.model import load_model
from service.oip import server as grpc_server
from service.oip.generated import grpc_predict_v2_pb2 as pb
from service.oip.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from service.oip.protocol import InferenceProtocol
from service.oip.server import GrpcServer


async def test_with_metrics_off_calls_are_served_and_no_grpc_metric_is_made(
    monkeypatch: pytest.MonkeyPatch, model_tag: str
) -> None:
    def no_metrics() -> None:
        raise AssertionError("gRPC metrics created with METRICS_ENABLED=false")

    monkeypatch.setattr(grpc_server, "grpc_metrics", no_metrics)
    predictor = Predictor(load_model(bentoml.models.get(model_tag)), 10, 100)
    protocol = InferenceProtocol(predictor, "test", "0")
    server = GrpcServer(protocol, "127.0.0.1", 0, 1 << 20, 1.0, metrics_enabled=False)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            answer = await pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                pb.ServerLiveRequest()
            )
        assert answer.live
    finally:
        await server.stop()
