"""The drift monitor's answers from what it cached (no child process: a stand-in, if any)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from service.drift import snapshots
from service.drift.monitor import DriftConfig, DriftMonitor
from service.drift.process import RunFailed
from service.drift.runs import utc_ago
from service.model import LoadedModel
from tests.drift.helpers import ok_summary
from tests.predlog.helpers import wait_until


@pytest.fixture
def monitor(store_url: str, model: LoadedModel, tmp_path: Path) -> Iterator[DriftMonitor]:
    config = DriftConfig(
        interval_seconds=60,
        window_size=500,
        window_max_age_seconds=3600,
        min_samples=100,
        snapshot_dir=tmp_path,
        snapshot_keep=2,
        reports_keep=1,
        run_timeout_seconds=60,
    )
    monitor = DriftMonitor(config, store_url, model)
    monitor.runs.ensure_schema()
    yield monitor
    monitor.stop()


def _finished(monitor: DriftMonitor, slot: int, worker: str) -> None:
    """A run of ``slot`` done by ``worker``, its report named after the slot."""
    assert monitor.runs.claim(slot, 60, worker)
    monitor.runs.finish(slot, "ok", ok_summary(f"drift-{slot}.html"), None)


def test_a_report_deleted_since_the_last_poll_gives_way_to_the_newer_one(
    monitor: DriftMonitor, tmp_path: Path
) -> None:
    _finished(monitor, 60, "a")
    (tmp_path / "drift-60.html").write_text("<html>60</html>")
    monitor.refresh()
    assert monitor.report_path() == (tmp_path / "drift-60.html", "")

    # Another worker's run replaces the report (retention keeps one) before this one polls.
    _finished(monitor, 120, "b")
    (tmp_path / "drift-120.html").write_text("<html>120</html>")
    (tmp_path / "drift-60.html").unlink()

    assert monitor.report_path() == (tmp_path / "drift-120.html", "")


def test_a_report_another_worker_wrote_is_served_before_this_one_polls(
    monitor: DriftMonitor, tmp_path: Path
) -> None:
    monitor.refresh()  # nothing run yet
    _finished(monitor, 60, "another-worker")
    (tmp_path / "drift-60.html").write_text("<html>60</html>")

    assert monitor.report_path() == (tmp_path / "drift-60.html", "")


def test_a_report_missing_from_this_replica_says_where_it_was_written(
    monitor: DriftMonitor, tmp_path: Path
) -> None:
    _finished(monitor, 60, "replica-b:7")
    monitor.refresh()

    path, why = monitor.report_path()

    assert path is None
    assert "drift-60.html" in why
    assert "replica-b:7" in why
    assert "DRIFT_SNAPSHOT_DIR" in why


class _ColdProcess:
    """A child process still importing Evidently: its run ends only when stopped."""

    warm = False

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def run(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._stopped.wait(30)
        return ok_summary().to_dict()

    def stop(self) -> None:
        self._stopped.set()


def test_after_a_restart_the_last_run_is_shown_while_this_worker_runs_the_next(
    monitor: DriftMonitor,
) -> None:
    previous = monitor.current_slot() - 60
    _finished(monitor, previous, "the-worker-before-the-restart")
    monitor.process = _ColdProcess()  # type: ignore[assignment]

    monitor.start()

    wait_until(lambda: monitor.state()["status"] == "ok", timeout=5)
    assert monitor.state()["run_id"] == snapshots.run_name(previous, monitor.model.tag)


class _FailingProcess:
    """A warm child whose run fails (its read of the window hit a store that went down)."""

    warm = True

    def run(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise RunFailed("OperationalError: connection refused")

    def stop(self) -> None:
        pass


def test_a_run_ending_while_the_store_is_down_is_recorded_once_it_is_back(
    monitor: DriftMonitor,
) -> None:
    finish = monitor.runs.finish
    failures = iter([OperationalError("UPDATE", {}, Exception("store down"))])

    def finish_once_the_store_is_back(*args: Any) -> None:
        for exc in failures:
            raise exc
        finish(*args)

    monitor.runs.finish = finish_once_the_store_is_back  # type: ignore[method-assign]
    monitor.process = _FailingProcess()  # type: ignore[assignment]
    monitor._poll = 0.05

    monitor.start()

    run = wait_until(monitor.runs.latest, timeout=5)
    assert run.slot == monitor.current_slot()
    assert (run.status, run.error) == ("failed", "OperationalError: connection refused")
    assert not monitor.runs.running_since(utc_ago(3600))  # the next slots are not skipped
