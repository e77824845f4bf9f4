"""BentoML's HTTP request metrics, recorded beside the event loop rather than on it.

BentoML's ``RunnerTrafficMetricsMiddleware`` updates four multiprocess metrics on every request
(``bentoml_service_request_total``, ``..._duration_seconds``, ``..._in_progress``,
``bentoml_service_last_request_timestamp_seconds``): five label lookups and six locked writes to
memory-mapped files, on the event loop that also parses requests and answers them. Profiled at
saturation with single-instance requests, that was the largest part of what observability cost
on the event loop.

:class:`DeferredTrafficMetricsMiddleware` exports the same series, with the same labels, buckets
and meaning. The request path only counts requests in flight and appends ``(endpoint, status,
seconds)`` to a deque; the worker's metrics thread (``service.metrics.flusher.FLUSHER``) applies
them once a second, grouped, in the same turn as the service's own request metrics, and sets the
in-progress gauge to the count in flight. Scrapes see values at most that stale. Websockets and
anything that is not HTTP keep BentoML's own code.

One difference: BentoML labels a request with its raw path, so every path a client makes up (a
scanner's probes, unknown model names under ``/v2/models/``) would add series for good. Here the
``endpoint`` label is the path of the app's route that matches (a route with parameters: its
template, e.g. ``/v2/models/{name}/infer``), and ``other`` for a path that is no route. And a
browser's CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
``cors_preflight`` whatever its path: under its route, a preflight refused for its origin (400)
read as ``/predict``'s client errors, and the allowed ones as prediction traffic.

:func:`install` makes BentoML use it: BentoML's service app imports the middleware class from its
module when it builds its middleware stack (``_bentoml_impl/server/app.py``), so replacing the
module's attribute before the worker builds its app is enough. The unit tests check that both
classes export identical series for the same requests; the served tests read them from
``/metrics``.
"""

from __future__ import annotations

import atexit
import re
import time
from collections import deque
from collections.abc import Iterable
from timeit import default_timer

import numpy as np
from bentoml._internal.context import server_context
from bentoml._internal.server.http import instruments
from starlette.routing import BaseRoute, Mount, Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import flusher
from service.metrics.flusher import observe_many, take_all

# BentoML's own class, kept before install() replaces it in its module.
BentoMLTrafficMetricsMiddleware = instruments.RunnerTrafficMetricsMiddleware
# The endpoint label of a path that is no route of the app.
OTHER = "other"
# The endpoint label of a CORS preflight; no request path (they start with "/") can be it.
PREFLIGHT = "cors_preflight"
_MAX_CACHED_PATHS = 1024


def route_labels(
    routes: Iterable[BaseRoute], prefix: str = ""
) -> list[tuple[re.Pattern[str], str]]:
    """(path regex, endpoint label) of every HTTP route, mounted apps' routes included."""
    found: list[tuple[re.Pattern[str], str]] = []
    for route in routes:
        if isinstance(route, Mount):
            found += route_labels(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            regex, label, _ = compile_path(prefix + route.path)
            found.append((regex, label))
    return found


class DeferredTrafficMetricsMiddleware(BentoMLTrafficMetricsMiddleware):
    """BentoML's request metrics middleware, its HTTP bookkeeping moved to a thread."""

    def __init__(self, app: ASGIApp, *args: object, **kwargs: object) -> None:
        super().__init__(app, *args, **kwargs)  # type: ignore[arg-type]
        # path -> requests in flight, only while there are any: written by the event loop only
        self._in_flight: dict[str, int] = {}
        # (path, status, seconds) of finished requests: thread-safe append and popleft
        self._done: deque[tuple[str, int, float]] = deque()
        self._last_request = 0.0  # wall-clock time of the last request outside skip_paths
        self._skip = tuple(self.skip_paths)
        self._shown: set[str] = set()  # endpoints in flight at the last turn
        self._flusher: flusher.Flusher | None = None  # the worker's, from the first request
        self._routes: list[tuple[re.Pattern[str], str]] = []  # the app's, from the first request
        # path -> endpoint label, for the paths seen first
        self._labels: dict[str, str] = {PREFLIGHT: PREFLIGHT}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await super().__call__(scope, receive, send)  # type: ignore[arg-type]
            return
        if self._flusher is None:
            self._start(scope)
        # The raw path: the flushing thread maps it to its route's endpoint label (_label).
        path: str = scope["path"]
        if scope["method"] == "OPTIONS" and is_preflight(scope["headers"]):
            path = PREFLIGHT
        if not path.startswith(self._skip):
            self._last_request = time.time()
        started = default_timer()
        status = 0

        async def send_recorded(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not message.get("more_body", False):
                self._done.append((path, status, max(default_timer() - started, 0.0)))
            await send(message)

        in_flight = self._in_flight
        in_flight[path] = in_flight.get(path, 0) + 1
        try:
            await self.app(scope, receive, send_recorded)
        finally:
            left = in_flight[path] - 1
            if left:
                in_flight[path] = left
            else:  # only busy paths stay: the dict stays small whatever paths clients try
                del in_flight[path]

    def _start(self, scope: Scope) -> None:
        if not self._is_setup:
            self._setup()  # BentoML's: creates the metrics, zero series for the service routes
        # Starlette passes the app this middleware is part of; its routes are complete by now.
        self._routes = route_labels(getattr(scope.get("app"), "routes", ()))
        self._flusher = flusher.FLUSHER
        self._flusher.register(self.flush, "BentoML request metrics")
        atexit.register(self.stop)  # the last requests' counts must reach the files

    def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.unregister(self.flush)
        self.flush()

    def flush(self) -> None:
        """Apply the requests finished so far and the current in-flight counts."""
        if not self._is_setup:
            return
        done = take_all(self._done)
        service = {
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        durations: dict[tuple[str, int], list[float]] = {}
        for path, status, seconds in done:
            durations.setdefault((self._label(path), status), []).append(seconds)
        for (endpoint, status), values in durations.items():
            labels = {"endpoint": endpoint, "http_response_code": status, **service}
            self.metrics_request_total.labels(**labels).inc(len(values))
            observe_many(
                self.metrics_request_duration.labels(**labels), np.asarray(values, dtype=float)
            )
        # A copy: the event loop changes the counts meanwhile (dict() of a dict is atomic). Every
        # endpoint busy since the last turn is set, to 0 if idle now: as in BentoML's, a series
        # exists for every endpoint that had a request.
        in_flight: dict[str, int] = {}
        for path, count in dict(self._in_flight).items():
            endpoint = self._label(path)
            in_flight[endpoint] = in_flight.get(endpoint, 0) + count
        for endpoint in in_flight.keys() | self._shown | {e for e, _ in durations}:
            self.metrics_request_in_progress.labels(endpoint=endpoint, **service).set(
                in_flight.get(endpoint, 0)
            )
        self._shown = set(in_flight)
        if self._last_request:
            self.metrics_last_request_timestamp.labels(**service).set(self._last_request)

    def _label(self, path: str) -> str:
        # Cached: matching runs every route's regex, per request on this thread otherwise. The
        # cache is bounded, since clients choose the paths.
        label = self._labels.get(path)
        if label is None:
            label = next((lbl for regex, lbl in self._routes if regex.match(path)), OTHER)
            if len(self._labels) < _MAX_CACHED_PATHS:
                self._labels[path] = label
        return label


def is_preflight(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an ``OPTIONS`` request's headers make it a CORS preflight, as Starlette's
    ``CORSMiddleware`` (BentoML's) tells one: ``Origin`` and ``Access-Control-Request-Method``."""
    names = {name.lower() for name, _ in headers}
    return b"origin" in names and b"access-control-request-method" in names


def install() -> None:
    """Make BentoML's service app use :class:`DeferredTrafficMetricsMiddleware` (call before the
    worker builds its app, i.e. at import of the service module)."""
    instruments.RunnerTrafficMetricsMiddleware = DeferredTrafficMetricsMiddleware  # type: ignore[misc]
