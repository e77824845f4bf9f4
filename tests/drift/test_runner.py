"""A run on a window whose traffic stopped long ago says how old that window's data is: in its
summary (kept in ``drift_runs``, served by GET /drift) and in the metrics."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.drift.priority import NICENESS
from service.drift.runner import run_job, serve
from service.drift.summary import DriftSummary
from service.metrics import DriftMetrics
from service.model import CONTRACT_FILE, REFERENCE_FILE, LoadedModel
from service.predlog.store import Store
from tests.drift.helpers import log_predictions, sample
from tests.support import ROOT


def a_job(store_url: str, model: LoadedModel, snapshot_dir: Path) -> dict[str, object]:
    """A drift run's job, as the monitor hands it to the child process, with the defaults."""
    return {
        "slot": 0,
        "store_url": store_url,
        "model_tag": model.tag,
        "contract_path": str(model.path / CONTRACT_FILE),
        "reference_path": str(model.path / REFERENCE_FILE),
        "window_size": 1000,
        "max_age_seconds": 0,
        "min_samples": 100,
        "snapshot_dir": str(snapshot_dir),
        "keep": 5,
        "keep_reports": 5,
    }


def test_a_run_records_when_the_data_of_its_window_arrived(
    store: Store, store_url: str, model: LoadedModel, tmp_path: Path
) -> None:
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    oldest = newest - timedelta(hours=1)
    log_predictions(store, model, sample(100, seed=1), received_at=oldest)
    log_predictions(store, model, sample(100, seed=2), received_at=newest, per_request=100)
    job = a_job(store_url, model, tmp_path)  # no age limit (the default): the old window is used

    summary = run_job(job)

    assert summary.status == "ok"
    assert summary.computed_at - summary.window_newest_at > timedelta(days=2)
    assert (summary.window_newest_at, summary.window_oldest_at) == (newest, oldest)
    # As drift_runs keeps it and GET /drift serves it.
    served = summary.to_dict()
    assert served["window_newest_at"] == newest.isoformat()
    assert served["window_oldest_at"] == oldest.isoformat()
    # A p-value depends on both sizes: GET /drift names the reference's as well as the window's.
    assert (served["window_size"], served["reference_size"]) == (200, len(model.reference()))
    assert DriftSummary.from_dict(served) == summary

    registry = CollectorRegistry()
    DriftMetrics(model.contract.feature_names, 60, model.version, registry=registry).show(summary)
    version = {"model_version": model.version}
    gauge = registry.get_sample_value
    assert gauge("model_drift_window_newest_timestamp_seconds", version) == newest.timestamp()
    assert gauge("model_drift_window_oldest_timestamp_seconds", version) == oldest.timestamp()


def test_a_runs_snapshot_loads_back_into_evidently_and_rebuilds_its_report(
    store: Store, store_url: str, model: LoadedModel, tmp_path: Path
) -> None:
    # docs/drift.md: the .json snapshots load back with Snapshot.load(path), and a report pruned by
    # DRIFT_REPORTS_KEEP can be rebuilt from its snapshot.
    from evidently.core.report import Snapshot

    log_predictions(store, model, sample(150, seed=3))
    job = a_job(store_url, model, tmp_path)

    summary = run_job(job)

    name = summary.report.removesuffix(".html")
    loaded = Snapshot.load(tmp_path / f"{name}.json")
    # the run's time, in UTC like its name and computed_at (Evidently's default: local, no zone)
    assert loaded.dump_dict()["timestamp"] == summary.computed_at
    values = {
        m["config"]["column"]: m["value"]
        for m in loaded.dict()["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }
    assert values[model.contract.score_name] == summary.prediction.score
    feature = model.contract.feature_names[0]
    assert values[feature] == summary.features[feature].score
    loaded.save_html(str(tmp_path / "rebuilt.html"))
    rebuilt = (tmp_path / "rebuilt.html").read_text()
    assert model.contract.score_name in rebuilt
    assert feature in rebuilt


def test_a_runs_report_and_snapshot_say_what_was_compared(
    store: Store, store_url: str, model: LoadedModel, tmp_path: Path
) -> None:
    # A report opened on its own (GET /drift/report, a kept file) names the model, the window
    # (its size and when its data was received) and the reference it was compared with;
    # Evidently's report alone says none of them.
    from evidently.core.report import Snapshot

    newest = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    oldest = newest - timedelta(hours=2)
    log_predictions(store, model, sample(100, seed=4), received_at=oldest)
    log_predictions(store, model, sample(20, seed=5), received_at=newest, per_request=20)
    job = {**a_job(store_url, model, tmp_path), "slot": 1_700_000_000}

    summary = run_job(job)

    reference_rows = len(model.reference())
    html = (tmp_path / summary.report).read_text()
    for shown in (
        model.tag,
        "120 instances",
        "received 2026-03-04 03:06:07 to 2026-03-04 05:06:07 UTC",
        f"{reference_rows} rows",
    ):
        assert shown in html, shown
    loaded = Snapshot.load(tmp_path / summary.report.replace(".html", ".json"))
    assert loaded.dump_dict()["name"] == summary.report.removesuffix(".html")
    metadata = loaded.dump_dict()["metadata"]
    assert metadata["model"] == model.tag
    assert metadata["window_size"] == "120"
    assert metadata["window_oldest_at"] == oldest.isoformat()
    assert metadata["window_newest_at"] == newest.isoformat()
    assert metadata["reference_size"] == str(reference_rows)
    # A report rebuilt from the snapshot (docs/drift.md: DRIFT_REPORTS_KEEP) is headed the same way.
    loaded.save_html(str(tmp_path / "rebuilt.html"))
    assert model.tag in (tmp_path / "rebuilt.html").read_text()


def test_the_signals_stopping_its_worker_leave_the_child_to_its_worker() -> None:
    # Ctrl-C of `make serve` signals the whole process group: the drift child died of it with
    # a KeyboardInterrupt traceback in the service's log. BentoML stops a worker with SIGTERM to
    # it and its children: the child died before its worker's shutdown could release the run
    # (test_shutdown.py). It ends when its worker closes stdin (or kills it).
    child = subprocess.Popen(
        [sys.executable, "-m", "service.drift.runner"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        assert child.stdout.readline().strip() == '{"ready": true}'  # Evidently imported
        child.send_signal(signal.SIGINT)
        child.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(1)  # still there for its worker
        child.stdin.close()  # its worker stopping
        child.wait(60)
        errors = child.stderr.read()
    finally:
        child.kill()
    assert child.returncode == 0, errors
    assert "KeyboardInterrupt" not in errors


# Started as process.DriftProcess starts it, but stopped at its first import of pandas (the first
# of its seconds of imports), printing the priority it runs at by then.
_PRIORITY_AT_FIRST_HEAVY_IMPORT = """
import os, runpy, sys

class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            print(os.nice(0), os.sched_getscheduler(0), flush=True)
            os._exit(0)

sys.meta_path.insert(0, Probe())
runpy.run_module("service.drift.runner", run_name="__main__", alter_sys=True)
"""


def test_the_child_lowers_its_priority_before_its_imports() -> None:
    # Its imports take seconds of CPU (pandas, SQLAlchemy: 3 s here, before Evidently's 9): at
    # the workers' priority, every start of a child (after a run's timeout: again and again
    # while the CPU is saturated) took them from the requests.
    child = subprocess.run(
        [sys.executable, "-c", _PRIORITY_AT_FIRST_HEAVY_IMPORT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    nice, policy = map(int, child.stdout.split())
    assert nice >= NICENESS
    if hasattr(os, "SCHED_IDLE"):  # Linux: the policy, unless the platform refuses it
        refused = policy == os.SCHED_OTHER and _sched_idle_refused()
        assert policy == os.SCHED_IDLE or refused


def _sched_idle_refused() -> bool:
    probe = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode != 0


def test_an_unwritable_snapshot_directory_fails_the_run_naming_the_setting_without_a_traceback(
    store: Store,
    store_url: str,
    model: LoadedModel,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A volume not mounted, or not the service user's: the same failure every interval, which
    # printed a 27-line traceback each time and did not say which setting to correct. Under a
    # file, not a read-only directory: the tests may run as root, who writes anywhere.
    (tmp_path / "a-file").write_text("")
    unwritable = tmp_path / "a-file" / "drift"
    log_predictions(store, model, sample(100, seed=4))
    job = a_job(store_url, model, unwritable)
    answers = io.StringIO()

    serve(io.StringIO(json.dumps(job) + "\n"), answers)

    error = json.loads(answers.getvalue())["error"]
    assert error.startswith(f"SnapshotDirUnwritable: DRIFT_SNAPSHOT_DIR {unwritable} cannot be")
    assert "Traceback" not in capfd.readouterr().err
