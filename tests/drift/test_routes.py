"""The drift routes, on a stand-in monitor (no store, no thread)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
from starlette.applications import Starlette

from service.drift.routes import drift_routes


class _SlowStoreMonitor:
    """A monitor whose report lookup waits on the store until released (at most 5 s)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def report_path(self) -> tuple[Path | None, str]:
        self.release.wait(5)
        return None, "no drift report yet"


async def test_a_report_lookup_waiting_on_the_store_does_not_stall_the_event_loop() -> None:
    monitor = _SlowStoreMonitor()
    app = Starlette(routes=drift_routes(lambda: monitor))  # type: ignore[arg-type, return-value]

    async def release_from_the_loop() -> None:
        monitor.release.set()  # runs only once the event loop is free again

    started = time.monotonic()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://drift") as client:
        answer, _ = await asyncio.gather(client.get("/drift/report"), release_from_the_loop())

    assert time.monotonic() - started < 2
    assert answer.status_code == 404
    assert answer.json()["message"] == "no drift report yet"
