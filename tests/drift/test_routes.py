"""The drift routes, on a stand-in monitor (no store, no thread)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
from starlette.applications import Starlette

from service.drift.routes import drift_routes


class _SlowStoreMonitor:
    """A stand-in monitor (no store, no thread) whose report lookup waits on the store until
    released (at most 30 s: a bound on a hang)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.released_while_waiting: bool | None = None

    def report_path(self) -> tuple[Path | None, str]:
        self.released_while_waiting = self.release.wait(30)
        return None, "no drift report yet"


async def test_a_report_lookup_waiting_on_the_store_does_not_stall_the_event_loop() -> None:
    monitor = _SlowStoreMonitor()
    app = Starlette(routes=drift_routes(lambda: monitor))  # type: ignore[arg-type, return-value]

    async def release_from_the_loop() -> None:
        monitor.release.set()  # runs only once the event loop is free again

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://drift") as client:
        answer, _ = await asyncio.gather(client.get("/drift/report"), release_from_the_loop())

    # On the event loop, the lookup would have held it for its whole wait: the release, which
    # only the loop can run, would have come after it.
    assert monitor.released_while_waiting is True
    assert answer.status_code == 404
    assert answer.json()["message"] == "no drift report yet"
