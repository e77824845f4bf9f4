"""A deploy in the middle of a drift run, in a real `bentoml serve`: SIGTERM while the run is
going (its child process still importing Evidently), then a start of the same service on the
same store. The cut-short run is no failure: nothing failed is recorded or shown, and the
restarted service runs the interval's slot itself (an hour long here: lost, it would not run
again for up to an hour)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from service.drift.runs import drift_runs
from service.predlog.store import Store
from tests.support import ServedService, wait_until

# The first run starts the drift child process, which imports Evidently: slow on a busy machine.
FIRST_RUN_SECONDS = 240


def _runs(url: str) -> list[Any]:
    store = Store(url)
    try:
        with store.read() as conn:
            return list(conn.execute(select(drift_runs)).mappings())
    finally:
        store.close()


def _running(url: str) -> bool:
    return any(run["status"] == "running" for run in _runs(url))


def test_a_run_cut_short_by_a_deploy_is_no_failure_and_the_restart_runs_its_slot(
    model_tag: str,
) -> None:
    state = Path(tempfile.mkdtemp(prefix="drift-shutdown-"))
    env = {
        "DRIFT_ENABLED": "true",
        "DRIFT_INTERVAL_SECONDS": "3600",
        "DRIFT_SNAPSHOT_DIR": str(state / "drift"),
        "PREDICTION_LOG_URL": f"sqlite:///{state}/predictions.db",
        "PREDICTION_LOG_SPOOL_DIR": str(state / "spool"),
        "ACCESS_LOG": "false",
    }
    url = env["PREDICTION_LOG_URL"]
    with ServedService(env=env, workers=1) as before:
        wait_until(lambda: _running(url), timeout=60)
        # The deploy comes while the child is importing Evidently (seconds), not in the first
        # milliseconds of its interpreter.
        time.sleep(1)
        assert _running(url), "the run ended before the deploy: nothing to cut short"
    assert not [line for line in before.output.splitlines() if "failed" in line], before.output
    assert _runs(url) == []  # the claim is given back: no failed run, no running one

    with ServedService(env=env, workers=1) as after:

        def settled() -> dict[str, Any] | None:
            shown = httpx.get(f"{after.url}/drift", timeout=10).json()
            assert shown["status"] != "failed", shown
            return shown if shown["status"] != "pending" else None

        shown = wait_until(settled, timeout=FIRST_RUN_SECONDS, interval=0.5)
    assert shown["status"] == "insufficient_data"  # no traffic: the slot's run, completed
    (run,) = _runs(url)
    assert run["status"] == "insufficient_data"
