"""The deferred BentoML request metrics export what BentoML's own middleware exports.

Both middlewares, each on a fresh registry, see the same requests through a small ASGI app; the
series they export (names, labels, counts, buckets) must be the same, at the same moments.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from bentoml._internal.context import server_context
from bentoml._internal.server.http import instruments
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from service import bentoml_metrics
from service.bentoml_metrics import DeferredTrafficMetricsMiddleware
from service.metrics import flusher

BUCKETS = (0.05, 1.0, 10.0)
SLOW_SECONDS = 0.1  # between the first two buckets


class MetricsClient:
    """BentoML's PrometheusClient, reduced to what the middleware uses, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for kind in ("Histogram", "Counter", "Gauge", "Summary"):
            setattr(self, kind, partial(getattr(prometheus_client, kind), registry=self.registry))


class App:
    """Answers ``/status/<code>``; ``/slow`` after SLOW_SECONDS; ``/held`` once released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/slow":
            await asyncio.sleep(SLOW_SECONDS)
        if path == "/held":
            await self.release.wait()
        status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"y"})


def _no_view(request: Any) -> Response:
    return Response()


# What Starlette passes the middleware as scope["app"]: the routes of App, one of them mounted.
ROUTED = Starlette(
    routes=[
        *(Route(path, _no_view) for path in ("/predict", "/livez", "/slow", "/held")),
        Mount("/", routes=[Route(p, _no_view) for p in ("/status/400", "/status/404")]),
        Route("/v2/models/{name}/infer", _no_view, methods=["POST"]),
    ]
)


def middleware(cls: type, app: App) -> tuple[Any, CollectorRegistry]:
    client = MetricsClient()
    instance = cls(app, namespace="bentoml_service", skip_paths=["/livez"])
    instance._setup(metrics_client=client, duration_buckets=BUCKETS)
    return instance, client.registry


async def request(
    app: Any, path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http",
        "path": path,
        "method": method,
        "headers": headers or [],
        "app": ROUTED,
    }
    await app(scope, receive, send)


def series(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample but the creation times, and the durations' sums (timing, not counting)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith(("_created", "_sum"))
        and s.name != "bentoml_service_last_request_timestamp_seconds"
    }


@pytest.fixture(autouse=True)
def flushed_by_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's flusher would apply the requests once a second: the tests do."""
    monkeypatch.setattr(flusher, "FLUSHER", flusher.Flusher(seconds=3600.0))


def test_the_same_series_as_bentomls_middleware() -> None:
    async def scenario() -> None:
        app = App()
        ours, our_registry = middleware(DeferredTrafficMetricsMiddleware, app)
        # BentoML's class even after an earlier test imported the service (which installs ours).
        theirs, their_registry = middleware(bentoml_metrics.BentoMLTrafficMetricsMiddleware, app)
        paths = ["/predict"] * 3 + ["/status/400", "/status/404", "/livez", "/slow", "/metrics"]
        for path in paths:
            await request(ours, path)
            await request(theirs, path)
        assert series(our_registry) != series(their_registry)  # not yet applied
        ours.flush()
        assert series(our_registry) == series(their_registry)
        count = our_registry.get_sample_value
        labels = {"endpoint": "/predict", "http_response_code": "200"}
        assert count("bentoml_service_request_total", {**labels, **service_labels()}) == 3
        slow = {"endpoint": "/slow", "http_response_code": "200", **service_labels()}
        assert count("bentoml_service_request_duration_seconds_bucket", {**slow, "le": "1.0"}) == 1
        assert count("bentoml_service_request_duration_seconds_bucket", {**slow, "le": "0.05"}) == 0

        # In flight: counted by both while held, back to 0 once answered.
        held = [asyncio.create_task(request(m, "/held")) for m in (ours, theirs, ours)]
        await asyncio.sleep(0.01)
        ours.flush()
        in_progress = "bentoml_service_request_in_progress"
        gauge = {"endpoint": "/held", **service_labels()}
        assert count(in_progress, gauge) == 2
        assert their_registry.get_sample_value(in_progress, gauge) == 1
        app.release.set()
        await asyncio.gather(*held)
        ours.flush()
        assert count(in_progress, gauge) == 0
        assert count("bentoml_service_request_total", {**gauge, "http_response_code": "200"}) == 2

    asyncio.run(scenario())


def service_labels() -> dict[str, str]:
    return {
        "service_name": server_context.bento_name,
        "service_version": server_context.bento_version,
        "runner_name": str(server_context.service_name),
    }


def test_last_request_time_skips_the_probes() -> None:
    async def scenario() -> None:
        ours, registry = middleware(DeferredTrafficMetricsMiddleware, App())
        before = time.time()
        await request(ours, "/predict")
        ours.flush()
        name = "bentoml_service_last_request_timestamp_seconds"
        stamp = registry.get_sample_value(name, service_labels())
        assert stamp is not None
        assert before <= stamp <= time.time()
        await asyncio.sleep(0.01)
        await request(ours, "/livez")
        ours.flush()
        assert registry.get_sample_value(name, service_labels()) == stamp

    asyncio.run(scenario())


def test_install_replaces_the_class_bentoml_builds_its_app_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        instruments, "RunnerTrafficMetricsMiddleware", instruments.RunnerTrafficMetricsMiddleware
    )
    bentoml_metrics.install()
    assert instruments.RunnerTrafficMetricsMiddleware is DeferredTrafficMetricsMiddleware
    # BentoML's app imports it by this name when it builds its middleware stack: if a BentoML
    # upgrade moves it, this fails instead of the metrics silently going back on the event loop.
    import _bentoml_impl.server.app as app_module

    source = Path(app_module.__file__).read_text()
    assert "from bentoml._internal.server.http.instruments import (" in source
    assert "RunnerTrafficMetricsMiddleware," in source


def test_paths_that_are_no_route_share_one_endpoint_label() -> None:
    async def scenario() -> None:
        ours, registry = middleware(DeferredTrafficMetricsMiddleware, App())
        for i in range(50):  # a scanner's probes
            await request(ours, f"/probe-{i}")
        for name in ("credit_risk", "made-up-1", "made-up-2"):
            await request(ours, f"/v2/models/{name}/infer")
        await request(ours, "/predict")
        ours.flush()

        endpoints = {
            s.labels["endpoint"]
            for family in registry.collect()
            for s in family.samples
            if "endpoint" in s.labels
        }
        assert endpoints == {"other", "/v2/models/{name}/infer", "/predict"}
        count = registry.get_sample_value
        labels = {"http_response_code": "200", **service_labels()}
        assert count("bentoml_service_request_total", {"endpoint": "other", **labels}) == 50
        template = {"endpoint": "/v2/models/{name}/infer", **labels}
        assert count("bentoml_service_request_total", template) == 3

    asyncio.run(scenario())


def test_cors_preflights_have_an_endpoint_label_of_their_own() -> None:
    # Under /predict, a preflight refused for its origin (400) read as the route's client errors.
    async def scenario() -> None:
        ours, registry = middleware(DeferredTrafficMetricsMiddleware, App())
        origin = (b"origin", b"https://app.example")
        asks = (b"Access-Control-Request-Method", b"POST")  # any case, as a proxy may write it
        for path in ("/predict", "/v2/models/credit_risk/infer", "/status/400"):
            await request(ours, path, "OPTIONS", [origin, asks])
        # Not preflights: BentoML's CORS middleware passes them to the routes, as the service does
        await request(ours, "/predict", "OPTIONS", [origin])
        await request(ours, "/predict", "OPTIONS", [asks])
        await request(ours, "/predict", "POST", [origin, asks])
        ours.flush()
        count = registry.get_sample_value
        labels = {"http_response_code": "200", **service_labels()}
        preflights = {"endpoint": "cors_preflight", **labels}
        assert count("bentoml_service_request_total", preflights) == 2
        refused = {**preflights, "http_response_code": "400"}
        assert count("bentoml_service_request_total", refused) == 1
        assert count("bentoml_service_request_total", {"endpoint": "/predict", **labels}) == 3

    asyncio.run(scenario())
