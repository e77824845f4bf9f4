"""``GET /drift`` (the latest run's summary, JSON) and ``GET /drift/report`` (its HTML report).

Thin: ``GET /drift`` answers from what the worker's monitor thread cached; ``GET /drift/report``
may look the newest report up in the store (another worker's run may have written it since the
last poll), off the event loop, and the report is streamed from DRIFT_SNAPSHOT_DIR by Starlette.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from service.asgi import JSONResponse
from service.drift.monitor import DriftMonitor

OFF = (
    "drift monitoring is off: set DRIFT_ENABLED=true (it also needs the prediction log, "
    "PREDICTION_LOG_ENABLED=true)"
)


def drift_routes(get_monitor: Callable[[], DriftMonitor | None]) -> list[BaseRoute]:
    async def drift(request: Request) -> Response:
        monitor = get_monitor()
        if monitor is None:
            return JSONResponse({"status": "disabled", "error": OFF}, status_code=404)
        return JSONResponse(monitor.state())

    async def report(request: Request) -> Response:
        monitor = get_monitor()
        if monitor is None:
            return JSONResponse({"error": "not_found", "message": OFF}, status_code=404)
        # The lookup can wait on the store (a PostgreSQL that does not answer: its connect
        # timeout), which must not stall the worker's predictions.
        path, why = await asyncio.to_thread(monitor.report_path)
        if path is None:
            return JSONResponse({"error": "not_found", "message": why}, status_code=404)
        return FileResponse(path, media_type="text/html")

    return [
        Route("/drift", drift, methods=["GET"]),
        Route("/drift/report", report, methods=["GET"]),
    ]
