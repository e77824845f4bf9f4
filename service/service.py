"""The BentoML service: loads the registered model in each worker and mounts the routes.

Served by ``bentoml serve`` (see bentofile.yaml) and by the container's standard entrypoint.
Each worker also runs the gRPC (Open Inference Protocol) server on GRPC_PORT: see
``service/oip/server.py``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import bentoml
from bentoml import get_current_service  # bound once: `bentoml.<name>` imports on every access
from bentoml.exceptions import BentoMLException

from service import (
    bentoml_metrics,
    cors,
    header_limit,
    prometheus_dir,
    route_errors,
    timeout,
    tracing,
)
from service.balance import Board
from service.drift.monitor import DriftConfig, DriftMonitor
from service.drift.routes import drift_routes
from service.events import EventSink
from service.http import PREDICT_ENDPOINT, build_http_app
from service.inference import Predictor
from service.metrics import (
    LATENCY_BUCKETS,
    DriftMetrics,
    PredictionLogMetrics,
    ProcessMetrics,
    ServiceMetrics,
    TraceMetrics,
)
from service.model import load_model
from service.oip.protocol import InferenceProtocol, server_version
from service.oip.rest import infer_endpoint, v2_routes
from service.oip.server import (
    ConnectionLimits,
    GrpcPortUnavailable,
    GrpcServer,
    HttpPortUnavailable,
    check_http_port_free,
    check_port_free,
    serving_http_host,
    serving_http_port,
)
from service.oip.servicer import INFER_RPC
from service.openapi import openapi_routes
from service.predlog import AccessLog, PredictionLog
from service.settings import get_settings, misspelled_settings

if TYPE_CHECKING:
    from bentoml._internal.bento.bento import BentoModelInfo

log = logging.getLogger(__name__)
settings = get_settings()
SERVICE_NAME = "credit_risk_service"
GC_THRESHOLDS = (10_000, 20, 20)  # gc.set_threshold: generations 0, 1, 2 (see __init__)
# In the `bentoml serve` process, before it prepares the workers' metrics directory.
prometheus_dir.use_own()
# Before BentoML builds its middleware: the prediction routes open their own server spans.
try:
    tracer_provider = tracing.configure_tracing(
        SERVICE_NAME, self_traced=[r"/predict\b", r"/infer\b"]
    )
except tracing.UnsupportedTracingSetting as exc:
    # Stopped as invalid settings are (service/settings.py): the message alone, exit code 1.
    raise SystemExit(f"invalid settings (environment variables):\n  {exc}") from None
# Also before: BentoML's request metrics, the same series, updated beside the event loop.
bentoml_metrics.install()
# Also before: BentoML's request timeout, its 504 in the prediction endpoints' error shape.
timeout.install()
# Also before: the 404s and 405s of BentoML's own routes in the service's JSON.
route_errors.install()
# Before uvicorn reads the first request: bounds on the size of request heads, and their time.
header_limit.install(settings.request_timeout_seconds)


def _current_predictor() -> Predictor:
    return get_current_service().predictor


def _current_protocol() -> InferenceProtocol:
    return get_current_service().oip


def _current_drift() -> DriftMonitor | None:
    return get_current_service().drift


http_app = build_http_app(
    _current_predictor,
    settings.max_body_bytes,
    extra_routes=[
        *v2_routes(_current_protocol, settings.max_body_bytes),
        *drift_routes(_current_drift),
        *openapi_routes(_current_predictor, SERVICE_NAME, server_version()),
    ],
)


class _ModelTagModel(bentoml.models.BentoModel):
    """The model MODEL_TAG names. `bentoml build`, and outside a bento `bentoml serve` before any
    deployment hook runs, look it up, and a tag the store lacks ended them in BentoML's own words
    ("could not be found locally and failed to fetch from remote because No cloud context default
    found"), naming neither the setting nor what to do. Serving a bento, BentoML resolves the
    models it packed instead, and check_model_tag refuses a MODEL_TAG naming another."""

    def resolve(self, base_path: str | os.PathLike[str] | None = None) -> bentoml.Model:
        try:  # a BentoCloud context, if there is one, may still provide it
            return super().resolve(base_path)
        except BentoMLException:  # NotFound too
            raise _model_tag_missing(_REGISTER) from None

    def to_info(self, alias: str | None = None) -> BentoModelInfo:
        # What `bentoml build` asks of the model it packs: the same failure, the same refusal.
        try:
            return super().to_info(alias)
        except BentoMLException:
            raise _model_tag_missing(_REGISTER) from None


_REGISTER = (
    "set it to one `bentoml models list` shows, unset it for the latest, or register one "
    "(`make model` trains the example if there is none)"
)


def _model_tag_missing(advice: str) -> SystemExit:
    """The one-line refusal of a MODEL_TAG the model store lacks, as for other invalid settings."""
    present = ", ".join(str(m.tag) for m in bentoml.models.list()) or "none"
    return SystemExit(
        "invalid settings (environment variables):\n"
        f"  MODEL_TAG={settings.model_tag!r}: no such model in the model store (models there: "
        f"{present}); {advice}"
    )


@bentoml.service(
    name=SERVICE_NAME,
    workers=settings.workers,
    traffic={"timeout": settings.request_timeout_seconds},
    # BentoML's CORS middleware, for CORS_ALLOW_ORIGINS (service/cors.py).
    http=cors.bentoml_http_config(settings.cors_allow_origins),
    # BentoML's text access log line per request, written on the event loop, costs a fifth of a
    # worker's time for single-instance requests (profiled); the JSON access log replaces it.
    logging={"access": {"enabled": False}},
    # BentoML's request metrics with the same sub-millisecond buckets as ours.
    metrics={
        "enabled": settings.metrics_enabled,
        "duration": {"buckets": list(LATENCY_BUCKETS)},
    },
)
@bentoml.asgi_app(http_app, path="/")
class CreditRiskService:
    # Resolved by `bentoml build`, which packs this exact model version into the bento.
    model_ref = _ModelTagModel(settings.model_tag)

    def __init__(self) -> None:
        model = load_model(self.model_ref)
        sinks: list[EventSink] = []
        # registry=None: in BentoML's multiprocess mode values go to per-process files whatever
        # the registry, and an unregistered metric cannot clash with a second instance in tests.
        self.metrics: ServiceMetrics | None = None
        self.process_metrics: ProcessMetrics | None = None
        if settings.metrics_enabled:
            # The endpoints answering predictions, labelled as their request paths label them
            endpoints = [
                ("http", PREDICT_ENDPOINT),
                ("http", infer_endpoint(model.contract.model_name)),
            ]
            if settings.grpc_enabled:
                endpoints.append(("grpc", INFER_RPC))
            self.metrics = ServiceMetrics(model, registry=None, endpoints=endpoints)
            self.metrics.start()
            sinks.append(self.metrics)
            self.process_metrics = ProcessMetrics(registry=None)
            self.process_metrics.start()
        self.trace_metrics: TraceMetrics | None = None
        if settings.metrics_enabled and tracing.exporting():
            self.trace_metrics = TraceMetrics(tracing.SPAN_COUNTS, registry=None)
            self.trace_metrics.start()
        self.prediction_log: PredictionLog | None = None
        if settings.prediction_log_enabled:
            observer = PredictionLogMetrics(registry=None) if settings.metrics_enabled else None
            self.prediction_log = PredictionLog.from_settings(settings, observer=observer)
            sinks.append(self.prediction_log)
        self.access_log: AccessLog | None = None
        if settings.access_log:
            self.access_log = AccessLog(include_features=settings.access_log_features)
            sinks.append(self.access_log)
        # Requests uvicorn refuses before they reach the service (malformed, head too large or
        # too slow) are counted and have an access-log line; they are no prediction-log row.
        self._refusal_observers = [
            sink.refused for sink in (self.metrics, self.access_log) if sink is not None
        ]
        for observer in self._refusal_observers:
            header_limit.observe(observer)
        self.predictor = Predictor(
            model,
            max_instances=settings.max_batch_size,
            max_model_batch_rows=settings.max_model_batch_rows,
            sinks=sinks,
            on_batch=self.metrics.observe_batch if self.metrics else None,
            model_observer=self.metrics,
            max_queued_rows=settings.max_queued_rows,
        )
        self.predictor.warm_up()
        # Drift reads its window from the prediction log: without the log there is nothing to
        # compare. The monitor's thread starts here; its runs happen in a child process.
        self.drift: DriftMonitor | None = None
        if settings.drift_enabled and settings.prediction_log_enabled:
            drift_metrics = (
                DriftMetrics(
                    model.contract.feature_names,
                    settings.drift_interval_seconds,
                    model.version,
                    registry=None,
                )
                if settings.metrics_enabled
                else None
            )
            self.drift = DriftMonitor(
                DriftConfig.from_settings(settings),
                settings.prediction_log_url,
                model,
                drift_metrics,
            )
            self.drift.start()
        self.oip = InferenceProtocol(self.predictor, SERVICE_NAME, server_version())
        self.grpc_server: GrpcServer | None = None
        log.info("loaded %s", model.tag)
        # Everything loaded so far (BentoML, pandas, scikit-learn, the model: ~250k objects)
        # lives as long as the worker. Left to the collector, each full collection walks all of
        # it: ~170 ms with the worker stopped, several times a minute under load (measured with
        # 1000-instance requests: 8% of the worker's CPU and the whole p99). Frozen, a full
        # collection walks only what requests created: ~2 ms.
        gc.collect()
        gc.freeze()
        # A young-generation collection every 10,000 container allocations rather than 700: a
        # 100-instance request allocates hundreds, nearly all dead by the next collection.
        # Measured in paired runs (make overhead, 2-vCPU Intel Xeon VM, 2026-12-06): 3-4% less
        # server CPU per instance for 1 and 100 instances per request; 50,000 gained no more.
        gc.set_threshold(*GC_THRESHOLDS)

    @bentoml.on_deployment
    def check_environment_names() -> None:
        # Once per start, in `bentoml serve`'s main process, not in every worker; before the
        # other checks (BentoML runs the hooks in name order), whose refusal a misspelling may
        # explain: GRPC_PORTS=4001 and "GRPC_PORT 0.0.0.0:3001 is in use".
        for warning in misspelled_settings(os.environ):
            log.warning(warning)

    @bentoml.on_deployment
    def check_model_tag() -> None:
        # Serving a bento (the image), BentoML resolves only the model `bentoml build` packed: a
        # MODEL_TAG naming another one failed in every worker, with a traceback, restarted
        # forever (outside a container). Outside a bento _ModelTagModel.resolve has refused it.
        if bentoml.models.BentoModel(settings.model_tag).stored is None:
            raise _model_tag_missing("unset it to serve the one the image was built with")

    @bentoml.on_deployment
    def check_grpc_port() -> None:
        # Runs once, in `bentoml serve`'s main process, before any worker starts: a taken port
        # stops the service with a clear message instead of serving HTTP only.
        if settings.grpc_enabled:
            try:
                check_port_free(settings.grpc_host, settings.grpc_port, serving_http_port())
            except GrpcPortUnavailable as exc:
                # The message alone (exit code 1), as for invalid settings: at the end of
                # BentoML's CLI traceback an operator would look for a bug rather than a port.
                raise SystemExit(str(exc)) from None

    @bentoml.on_deployment
    def check_http_port() -> None:
        # As check_grpc_port, for the port BentoML binds after the deployment hooks: a taken one
        # otherwise ends `bentoml serve` in a traceback that names neither the port nor the fix.
        host, port = serving_http_host(), serving_http_port()
        if host is not None and port is not None:
            try:
                check_http_port_free(host, port)
            except HttpPortUnavailable as exc:
                raise SystemExit(str(exc)) from None

    @bentoml.on_startup
    async def start_balancer(self) -> None:
        # worker_index is None outside `bentoml serve` (in-process tests): nothing to balance.
        index = bentoml.server_context.worker_index
        if settings.connection_balancing and index is not None:
            http_app.balancer.start(Board.for_siblings(index - 1))

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        # On the worker's event loop, next to the HTTP server; a failure stops the worker.
        if settings.grpc_enabled:
            server = GrpcServer(
                self.oip,
                host=settings.grpc_host,
                port=settings.grpc_port,
                max_message_bytes=settings.max_body_bytes,
                grace_seconds=settings.grpc_shutdown_grace_seconds,
                metrics_enabled=settings.metrics_enabled,
                connections=ConnectionLimits(
                    max_idle_seconds=settings.grpc_max_connection_idle_seconds,
                    max_age_seconds=settings.grpc_max_connection_age_seconds,
                    max_age_grace_seconds=settings.grpc_max_connection_age_grace_seconds,
                ),
            )
            await server.start()
            self.grpc_server = server

    def __is_ready__(self) -> bool:
        # __init__ returns only once the model is loaded; /readyz is 503 until then.
        return self.predictor is not None

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        self.oip.ready = False
        # First: every worker stops sampling as the shutdown starts, so a sibling that has
        # already exited is not counted as a worker death (service_worker_deaths_total).
        if self.process_metrics is not None:
            self.process_metrics.stop()
        await http_app.balancer.stop()
        if self.grpc_server is not None:  # before the predictor: calls in flight still need it
            await self.grpc_server.stop()
        # Answer the requests already accepted first: their events must reach the logs.
        await self.predictor.aclose()
        # Side by side, off the event loop: with the store hung, each waits for it (the drift
        # thread up to 10 s), and one after the other the log's PREDICTION_LOG_SHUTDOWN_TIMEOUT_
        # SECONDS would start only after drift's wait, nearer the orchestrator's SIGKILL.
        stopping: list[Awaitable[None]] = []
        if self.drift is not None:  # kills a run in progress: it must not hold up the shutdown
            stopping.append(asyncio.to_thread(self.drift.stop))
        if self.prediction_log is not None:
            # Blocking (commits, fsync). Bounded by PREDICTION_LOG_SHUTDOWN_TIMEOUT_SECONDS; what
            # the store cannot take is spooled.
            stopping.append(asyncio.to_thread(self.prediction_log.close))
        for result in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(result, BaseException):  # the other one still finished its work
                log.error("shutdown step failed", exc_info=result)
        for observer in self._refusal_observers:
            header_limit.forget(observer)
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.close)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        await asyncio.to_thread(tracer_provider.shutdown)  # exports the spans still buffered
        if self.trace_metrics is not None:  # with the spans the shutdown could not export
            await asyncio.to_thread(self.trace_metrics.stop)
