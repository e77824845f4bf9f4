"""The drift monitor: its answers from what it cached, its claims and their outcomes (a stand-in
child process, or the real one where its kill is the point)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import OperationalError

from service.drift import snapshots
from service.drift.monitor import DriftConfig, DriftMonitor
from service.drift.process import RunFailed
from service.drift.runs import utc_ago
from service.metrics import DriftMetrics
from service.model import LoadedModel
from tests.drift.helpers import ok_summary
from tests.support import wait_until

Monitors = Callable[..., DriftMonitor]


@pytest.fixture
def monitors(store_url: str, tmp_path: Path) -> Iterator[Monitors]:
    """Makes monitors sharing one store and snapshot directory, as workers and replicas do."""
    config = DriftConfig(
        interval_seconds=60,
        window_size=500,
        window_max_age_seconds=3600,
        min_samples=100,
        snapshot_dir=tmp_path,
        snapshot_keep=10,
        reports_keep=1,
        run_timeout_seconds=60,
    )
    made: list[DriftMonitor] = []

    def make(model: LoadedModel, metrics: DriftMetrics | None = None) -> DriftMonitor:
        monitor = DriftMonitor(config, store_url, model, metrics)
        monitor.runs.ensure_schema()
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        monitor.stop()


@pytest.fixture
def monitor(monitors: Monitors, model: LoadedModel) -> DriftMonitor:
    return monitors(model)


def _metrics(model: LoadedModel) -> tuple[DriftMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = DriftMetrics(model.contract.feature_names, 60, model.version, registry=registry)
    return metrics, registry


def _another_version(model: LoadedModel) -> LoadedModel:
    """The same model under another version's tag (its window and reference are its own)."""
    return replace(model, tag=f"{model.tag.split(':')[0]}:another-version")


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


class _WarmProcess:
    """A warm child whose run completes for the job's model, once ``release`` is set."""

    warm = True

    def __init__(self, held: bool = False) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        if not held:
            self.release.set()

    def run(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.started.set()
        assert self.release.wait(10)
        return ok_summary(f"drift-{job['slot']}.html", model=job["model_tag"]).to_dict()

    def stop(self) -> None:
        self.release.set()


def test_after_a_restart_the_last_run_is_shown_while_this_worker_runs_the_next(
    monitors: Monitors, model: LoadedModel
) -> None:
    before = monitors(model)  # the worker before the restart, serving the same model
    before.process = _WarmProcess()  # type: ignore[assignment]
    before._maybe_run(before.current_slot() - 60)
    before.refresh()
    metrics, registry = _metrics(model)
    monitor = monitors(model, metrics)
    monitor.process = _ColdProcess()  # type: ignore[assignment]

    monitor.start()

    wait_until(lambda: monitor.state()["status"] == "ok", timeout=30)
    assert monitor.state()["run_id"] == before.state()["run_id"]
    assert monitor.state()["model"] == model.tag
    version = {"model_version": model.version}
    assert registry.get_sample_value("model_drift_dataset_drifted", version) == 0
    assert registry.get_sample_value("model_drift_last_run_timestamp_seconds", version) > 0


def test_after_a_restart_with_another_model_version_the_old_verdict_is_not_shown(
    monitors: Monitors, model: LoadedModel, tmp_path: Path
) -> None:
    before = monitors(model)  # the worker before the restart, serving the old version
    before.process = _WarmProcess()  # type: ignore[assignment]
    before._maybe_run(before.current_slot() - 60)
    before.refresh()
    assert before.state()["status"] == "ok"
    newer = _another_version(model)
    metrics, registry = _metrics(newer)
    monitor = monitors(newer, metrics)
    monitor.process = _ColdProcess()  # type: ignore[assignment]

    monitor.start()

    # Its first run is claimed (and goes on: a cold child) once the store's runs were read.
    wait_until(lambda: monitor.runs.running_since(utc_ago(60)), timeout=30)
    monitor.refresh()
    state = monitor.state()
    assert (state["status"], state["model"], state["run_id"]) == ("pending", newer.tag, None)
    assert state["dataset_drift"] is None
    # Its own series, under its version: the old version's verdict is not shown as its own.
    version = {"model_version": newer.version}
    assert math.isnan(registry.get_sample_value("model_drift_dataset_drifted", version))
    assert math.isnan(registry.get_sample_value("model_drift_prediction_drifted", version))
    assert registry.get_sample_value("model_drift_last_run_timestamp_seconds", version) == 0
    (tmp_path / before.state()["report"]).write_text("<html>the old version's</html>")
    path, why = monitor.report_path()
    assert path is None
    assert "no drift report yet" in why


def test_two_model_versions_sharing_the_store_each_get_their_run_in_the_same_interval(
    monitors: Monitors, model: LoadedModel
) -> None:
    # A rolling deploy: replicas of both versions share the log, and claim at the same moments.
    old, new = monitors(model), monitors(_another_version(model))
    old.process = _WarmProcess(held=True)  # type: ignore[assignment]
    new.process = _WarmProcess()  # type: ignore[assignment]
    slot = old.current_slot()
    old_run = threading.Thread(target=old._maybe_run, args=(slot,))
    old_run.start()
    assert old.process.started.wait(5)  # the old version's run is going on...

    new._maybe_run(slot)  # ...and does not hold up the new version's

    old.process.release.set()
    old_run.join(10)
    for monitor in (old, new):
        monitor.refresh()
        state = monitor.state()
        assert (state["status"], state["model"]) == ("ok", monitor.model.tag)
        # named after slot and model: the two runs' files do not overwrite each other
        assert state["run_id"] == snapshots.run_name(slot, monitor.model.tag)
    assert old.state()["run_id"] != new.state()["run_id"]


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
    # The claim, the retry and the asserts in one slot: started in a slot's last tenth of a
    # second, the asserts compared the run with the next slot, or found that slot's run going.
    slot = _early_in_its_slot(monitor)

    monitor.start()

    run = wait_until(monitor.runs.latest, timeout=30)
    assert run.slot == slot
    assert (run.status, run.error) == ("failed", "OperationalError: connection refused")
    assert not monitor.runs.running_since(utc_ago(3600))  # the next slots are not skipped


def test_get_drift_has_every_key_whatever_the_status(
    monitor: DriftMonitor, model: LoadedModel
) -> None:
    # docs/drift.md: GET /drift has one shape; a client reading e.g. its "report" must not get a
    # KeyError only while the served model's run is pending or failed.
    pending = monitor.state()
    slot = monitor.current_slot()
    _finished(monitor, slot - 120, "host:1")
    monitor.refresh()
    ok = monitor.state()
    assert monitor.runs.claim(slot - 60, 60, "host:1")
    monitor.runs.finish(slot - 60, "failed", None, "RuntimeError: boom")
    monitor.refresh()
    failed = monitor.state()

    assert (pending["status"], ok["status"], failed["status"]) == ("pending", "ok", "failed")
    assert set(pending) == set(ok) == set(failed)
    assert (pending["report"], pending["drift_share_threshold"]) == (None, None)
    assert failed["last_completed"]["report"] == ok["report"]
    assert ok["last_completed"] is None


def _early_in_its_slot(monitor: DriftMonitor, margin: float = 15.0) -> int:
    """The current slot, once at least ``margin`` seconds of it are left (a test's claims and
    retries must meet in one slot)."""
    left = monitor.current_slot() + monitor.config.interval_seconds - time.time()
    if left < margin:
        time.sleep(left + 0.1)
    return monitor.current_slot()


def test_a_run_cut_short_by_the_workers_shutdown_is_no_failure_and_its_slot_is_run_again(
    monitors: Monitors, model: LoadedModel
) -> None:
    # A deploy: the worker stops while its (real) drift process is running the slot's run.
    _finished(monitors(model), 60, "host:1")  # the run before, which GET /drift showed
    metrics, registry = _metrics(model)
    worker = monitors(model, metrics)
    slot = _early_in_its_slot(worker)
    worker.start()
    wait_until(lambda: worker.process._proc is not None, timeout=10)  # the child is started
    assert worker.runs.running_since(utc_ago(60))

    worker.stop()

    failed = {"model_version": model.version, "status": "failed"}
    assert registry.get_sample_value("model_drift_runs_total", failed) == 0
    # After the restart: GET /drift shows the run before, not a failure...
    restarted = monitors(model)
    restarted.refresh()
    state = restarted.state()
    assert (state["status"], state["run_id"]) == ("ok", snapshots.run_name(60, model.tag))
    assert not restarted.runs.running_since(utc_ago(3600))  # the next slots are not skipped
    # ...and the interval's slot is claimed and run again.
    restarted.process = _WarmProcess()  # type: ignore[assignment]
    restarted._maybe_run(slot)
    restarted.refresh()
    assert restarted.state()["run_id"] == snapshots.run_name(slot, model.tag)
    assert restarted.state()["status"] == "ok"


class _KilledProcess:
    """A warm child whose run goes on until the worker's shutdown kills it."""

    warm = True

    def __init__(self) -> None:
        self.started = threading.Event()
        self._killed = threading.Event()

    def run(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.started.set()
        self._killed.wait(30)
        raise RunFailed("the drift process exited (code -9)")

    def stop(self) -> None:
        self._killed.set()


def test_a_slot_given_back_by_a_replica_shutting_down_is_run_by_another_in_the_interval(
    monitors: Monitors, model: LoadedModel
) -> None:
    # A rolling deploy: the old replica's worker claimed the slot, and is stopped mid-run.
    leaving, staying = monitors(model), monitors(model)
    leaving.identity, staying.identity = "replica-a:7", "replica-b:7"
    leaving.process = _KilledProcess()  # type: ignore[assignment]
    staying.process = _WarmProcess()  # type: ignore[assignment]
    staying._poll = 0.05
    slot = _early_in_its_slot(leaving)
    running = threading.Thread(target=leaving._maybe_run, args=(slot,))
    running.start()
    assert leaving.process.started.wait(5)
    looked: list[int] = []  # the staying worker's reads of a slot's claim
    claimed = staying.runs.claimed
    staying.runs.claimed = lambda slot: looked.append(slot) or claimed(slot)  # type: ignore[method-assign]
    staying.start()
    wait_until(lambda: staying.state()["status"] == "pending" and staying._thread.is_alive())
    wait_until(lambda: looked.count(slot) >= 3, timeout=30)  # found it claimed, several polls
    assert staying.runs.running_since(utc_ago(60))

    leaving.stop()
    running.join(10)

    wait_until(lambda: staying.state()["run_id"] == snapshots.run_name(slot, model.tag), 10)
    run = staying.runs.latest()
    assert run is not None
    assert (run.slot, run.status, run.claimed_by) == (slot, "ok", "replica-b:7")
