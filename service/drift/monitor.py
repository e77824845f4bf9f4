"""The drift monitor: a thread in every worker; one run per interval across workers and replicas.

Each interval (``DRIFT_INTERVAL_SECONDS``) every worker tries to claim the interval's slot for its
served model in the ``drift_runs`` table; exactly one succeeds (slot and model tag are the primary
key) and has the run done by its child process (``process.DriftProcess``), then records the
outcome in the row. A worker whose child process is not started yet waits a moment before trying,
so the worker that already paid Evidently's import usually wins again; a slot is skipped while an
earlier run of the model is still going, so slow runs do not pile up. Every worker, the winner or
not, reads its model's newest run back from the store every few seconds and exports it (metrics,
``GET /drift``), so all workers and replicas serving the model answer the same. Only runs of the
served model are shown: after a restart with another model version, nothing is until its first
run (``pending``, the verdict gauges NaN), and replicas of two versions side by side (a rolling
deploy) each run and show their own.

Nothing here is on the request path: the routes read what the thread cached. A store that is
down only delays the runs (logged); a run that fails is recorded as failed and counted. A run cut
short by the worker's own shutdown (a deploy, a restart) is not a failure of drift: its claim is
released, nothing is counted, and the slot is run by a worker that claims it next (a replica that
found it claimed, or the restarted worker), while ``GET /drift`` keeps showing the run before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.drift import snapshots
from service.drift.process import START_TIMEOUT_SECONDS, DriftProcess, RunFailed
from service.drift.runs import DriftRuns, Run, utc_ago
from service.drift.summary import COMPLETED, DriftSummary, Status
from service.metrics import DriftMetrics
from service.model import CONTRACT_FILE, REFERENCE_FILE, LoadedModel
from service.predlog.store import Store
from service.settings import Settings

# Longest the shutdown waits for the thread (a read of a hung store): part of the worst-case
# shutdown the orchestrator's grace period must cover (docs/deployment.md, Shutdown).
STOP_TIMEOUT_SECONDS = 10.0

log = logging.getLogger(__name__)
# Longest wait between two reads of the newest run (shorter for short intervals).
MAX_POLL_SECONDS = 5.0
# How long a worker without a warm child process lets the others claim a slot first.
MAX_COLD_DELAY_SECONDS = 1.0
ERROR_LOG_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class DriftConfig:
    interval_seconds: int
    window_size: int
    window_max_age_seconds: int
    min_samples: int
    snapshot_dir: Path
    snapshot_keep: int
    reports_keep: int
    run_timeout_seconds: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftConfig:
        return cls(
            interval_seconds=settings.drift_interval_seconds,
            window_size=settings.drift_window_size,
            window_max_age_seconds=settings.drift_window_max_age_seconds,
            min_samples=settings.drift_min_samples,
            snapshot_dir=Path(settings.drift_snapshot_dir).resolve(),
            snapshot_keep=settings.drift_snapshot_keep,
            reports_keep=settings.drift_reports_keep,
            run_timeout_seconds=settings.drift_run_timeout_seconds,
        )


class DriftMonitor:
    def __init__(
        self,
        config: DriftConfig,
        store_url: str,
        model: LoadedModel,
        metrics: DriftMetrics | None = None,
    ) -> None:
        self.config = config
        self.store_url = store_url
        self.model = model
        self.metrics = metrics
        self.store = Store(store_url)
        self.runs = DriftRuns(self.store, model.tag)
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.process = DriftProcess()
        interval = config.interval_seconds
        self._poll = min(max(interval / 2, 0.5), MAX_POLL_SECONDS)
        self._cold_delay = min(interval / 4, MAX_COLD_DELAY_SECONDS)
        # The longest a run can be going on: its child's start, then the run itself.
        self._longest_run = START_TIMEOUT_SECONDS + config.run_timeout_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drift-monitor", daemon=True)
        self._latest: Run | None = None
        self._completed: Run | None = None
        self._report: Run | None = None
        self._shown_slot: int | None = None
        # A run's outcome the store could not take when the run ended: recorded on a later poll.
        self._unfinished: tuple[int, Status, DriftSummary | None, str | None] | None = None
        self._last_error_log = 0.0

    # Lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the thread; a run in progress is killed and its slot's claim released."""
        self._stop.set()
        self.process.stop()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
        self.store.close()

    # What the routes serve (cached by the thread: no store access on a request)

    def state(self) -> dict[str, Any]:
        """The latest run in the shape of ``GET /drift``."""
        latest, completed = self._latest, self._completed
        # Every key in every status (null where it has no value), so that a client reading
        # GET /drift never meets a KeyError only while a run is pending or failed.
        base: dict[str, Any] = {
            "status": "pending",  # no run of the served model yet
            "model": self.model.tag,
            "computed_at": None,
            "window_size": None,
            "window_newest_at": None,
            "window_oldest_at": None,
            "reference_size": None,
            "dataset_drift": None,
            "drifted_share": None,
            "drift_share_threshold": None,
            "features": {},
            "prediction": None,
            "interval_seconds": self.config.interval_seconds,
            "min_samples": self.config.min_samples,
            "run_id": None,
            "duration_seconds": None,
            "error": None,
            "report": None,
            "last_completed": None,
        }
        if latest is None:
            return base
        base["run_id"] = snapshots.run_name(latest.slot, latest.model_tag)
        if latest.summary is not None:
            return {**base, **latest.summary.to_dict()}
        return {
            **base,
            "status": latest.status,
            "computed_at": latest.finished_at.isoformat() if latest.finished_at else None,
            "error": latest.error,
            "last_completed": completed.summary.to_dict()
            if completed and completed.summary
            else None,
        }

    def report_path(self) -> tuple[Path | None, str]:
        """The latest HTML report in DRIFT_SNAPSHOT_DIR, or None and why there is none."""
        report = self._report
        if not self._report_file_exists(report):
            # This worker's view is up to a poll behind the store: another worker's run may have
            # written a report since, or its retention deleted the one seen.
            with contextlib.suppress(Exception):  # the store is down: answer from what was seen
                report = self.runs.latest_report() or report
        if report is None or report.summary is None or report.summary.report is None:
            return None, (
                f"no drift report yet for the served model {self.model.tag}: a report is written "
                "by its first run with at least "
                f"DRIFT_MIN_SAMPLES={self.config.min_samples} logged instances; runs happen "
                f"every DRIFT_INTERVAL_SECONDS={self.config.interval_seconds}s (GET /drift "
                "shows the status)"
            )
        path = self.config.snapshot_dir / report.summary.report
        if not path.is_file():
            return None, (
                f"the latest drift report, {report.summary.report}, was written by "
                f"{report.claimed_by} and is not in this replica's DRIFT_SNAPSHOT_DIR "
                f"({self.config.snapshot_dir}): share that directory between replicas, or it "
                "was deleted by retention"
            )
        return path, ""

    def _report_file_exists(self, report: Run | None) -> bool:
        name = report.summary.report if report and report.summary else None
        return name is not None and (self.config.snapshot_dir / name).is_file()

    # The thread

    def current_slot(self, now: float | None = None) -> int:
        interval = self.config.interval_seconds
        return int((time.time() if now is None else now) // interval) * interval

    def _loop(self) -> None:
        schema_ready = False
        attempted: int | None = None
        # The slot another process claimed: tried again if that process gives its claim back
        # (its shutdown cut the run short), so that a deploy does not cost the interval's run.
        contested: int | None = None
        while not self._stop.is_set():
            try:
                if not schema_ready:
                    self.runs.ensure_schema()
                    # After a restart, show the store's latest run of the served model now, not
                    # only once this worker's own run (a cold child: Evidently's import) ended.
                    self.refresh()
                    schema_ready = True
                self._finish()
                slot = self.current_slot()
                if slot != attempted or (slot == contested and not self.runs.claimed(slot)):
                    attempted = slot
                    contested = slot if self._maybe_run(slot) else None
                self.refresh()
            except Exception as exc:  # the store is down: try again next poll
                self._log_error(exc)
            next_slot = self.current_slot() + self.config.interval_seconds
            self._stop.wait(min(self._poll, max(next_slot - time.time(), 0.01)))

    def _maybe_run(self, slot: int) -> bool:
        """Claim ``slot`` and run it if no other process did; True if another process holds
        its claim."""
        # A worker whose child still has to import Evidently lets a warm one win the slot.
        if not self.process.warm and self._stop.wait(self._cold_delay):
            return False
        if self.runs.running_since(utc_ago(self._longest_run)):
            # The previous run is still going (do not pile runs up), or this slot's, in another
            # process.
            return self.runs.claimed(slot)
        if not self.runs.claim(slot, self.config.interval_seconds, self.identity):
            return True
        self.run(slot)
        return False

    def run(self, slot: int) -> Status | None:
        """Run drift for the claimed ``slot`` and record the outcome; None when the worker's
        shutdown cut it short (no outcome: the claim is released, nothing is counted)."""
        summary: DriftSummary | None = None
        error: str | None = None
        if self._stop.is_set():  # stopped since the claim: start no child that nobody kills
            self._release(slot)
            return None
        try:
            summary = DriftSummary.from_dict(
                self.process.run(self.job(slot), self.config.run_timeout_seconds)
            )
            status: Status = summary.status
        except RunFailed as exc:
            if self._stop.is_set():  # stop() killed the child: drift did not fail
                self._release(slot)
                return None
            status, error = "failed", str(exc)
            log.warning("drift run %s failed: %s", self._run_name(slot), error)
        if self.metrics is not None:
            self.metrics.count(status)
        self._unfinished = (slot, status, summary, error)
        try:
            self._finish()
        except Exception as exc:  # the store is down: the next polls try again
            log.warning(
                "drift run %s ended (%s) but the store at %s failed recording it: %s; "
                "recording it once the store is back",
                self._run_name(slot),
                status,
                self.store.display_url,
                exc,
            )
        return status

    def _release(self, slot: int) -> None:
        """Give the claim of ``slot`` back: a failed run would show in GET /drift and count
        towards DriftMonitorFailing after every deploy, and the slot would go without a run."""
        try:
            self.runs.release(slot, self.identity)
        except Exception as exc:  # the thread ends: no later poll to try again
            log.warning(
                "drift run %s was cut short by the worker's shutdown and the store at %s failed "
                "releasing its slot: %s; the run stays 'running' until it is closed as failed "
                "(after %.0fs)",
                self._run_name(slot),
                self.store.display_url,
                exc,
                self._longest_run,
            )
            return
        log.info(
            "drift run %s cut short by the worker's shutdown; its slot is released for another "
            "worker to run",
            self._run_name(slot),
        )

    def _finish(self) -> None:
        """Record the ended run's outcome in its row, if not done yet."""
        if self._unfinished is None:
            return
        # Left 'running', the row would make every worker skip slots until it is stale, and
        # then be closed as failed with a wrong reason.
        self.runs.finish(*self._unfinished)
        self._unfinished = None
        self.runs.prune(self.config.snapshot_keep)
        # A run left 'running' by a worker that died is closed once it cannot be going on.
        self.runs.stale_before(utc_ago(self._longest_run))

    def _run_name(self, slot: int) -> str:
        return snapshots.run_name(slot, self.model.tag)

    def job(self, slot: int) -> dict[str, Any]:
        """What the child process needs for a run (plain JSON)."""
        return {
            "slot": slot,
            "store_url": self.store_url,
            "model_tag": self.model.tag,
            "contract_path": str(self.model.path / CONTRACT_FILE),
            "reference_path": str(self.model.path / REFERENCE_FILE),
            "window_size": self.config.window_size,
            "max_age_seconds": self.config.window_max_age_seconds,
            "min_samples": self.config.min_samples,
            "snapshot_dir": str(self.config.snapshot_dir),
            "keep": self.config.snapshot_keep,
            "keep_reports": self.config.reports_keep,
        }

    def refresh(self) -> None:
        """Read the served model's newest runs back from the store; export a newly completed
        one (none: the metrics keep their state before any run, no verdict)."""
        latest = self.runs.latest()
        completed = latest if latest and latest.status in COMPLETED else self.runs.latest(True)
        report = completed if completed and completed.status == "ok" else self.runs.latest_report()
        if completed is not None and completed.summary is not None:
            if completed.slot != self._shown_slot and self.metrics is not None:
                self.metrics.show(completed.summary)
            self._shown_slot = completed.slot
        self._latest, self._completed, self._report = latest, completed, report

    def _log_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_SECONDS:
            self._last_error_log = now
            log.warning("drift monitor: the store at %s failed: %s", self.store.display_url, exc)
