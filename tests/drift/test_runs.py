"""Slot claims in the drift_runs table: exactly one claimant per slot, whatever the contention,
on real SQLite and real PostgreSQL; the newest runs read back; retention."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import func, inspect, select

from service.drift.runs import DriftRuns, drift_runs, utc_ago
from service.predlog.schema import SCHEMA_VERSION
from service.predlog.store import SchemaMissing, Store
from tests.drift.helpers import ok_summary
from tests.predlog.helpers import concurrently
from tests.support import ROOT

CLAIMANTS = 8


def _claim(args: tuple[str, int, str]) -> bool:
    url, slot, who = args
    store = Store(url)  # a store (connection pool) of its own, as every worker has
    try:
        runs = DriftRuns(store)
        runs.ensure_schema()
        return runs.claim(slot, 60, who)
    finally:
        store.close()


def test_a_slot_is_claimed_once_by_concurrent_threads(store_url: str) -> None:
    for slot in (600, 660, 720):
        won = concurrently(_claim, [(store_url, slot, f"thread-{i}") for i in range(CLAIMANTS)])
        assert won.count(True) == 1


# A claimant process: connects, says ready, claims when told to go, prints whether it won.
_CLAIMANT = """
import sys
from tests.drift.test_runs import _claim
print("ready", flush=True)
sys.stdin.readline()
print(_claim((sys.argv[1], int(sys.argv[2]), sys.argv[3])), flush=True)
"""


def test_a_slot_is_claimed_once_by_concurrent_processes(store_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMANT, store_url, "1200", f"process-{i}"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)  # each imports pandas (seconds): few, but truly concurrent
    ]
    for proc in procs:  # every process imported and connected...
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:  # ...then all claim at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    won = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert won.count("True") == 1, won
    store = Store(store_url)
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(drift_runs)).scalar_one() == 1
    store.close()


def test_runs_are_recorded_and_read_back_newest_first(store: Store) -> None:
    runs = DriftRuns(store)
    runs.ensure_schema()
    assert runs.latest() is None
    summary = ok_summary()
    assert runs.claim(60, 60, "a")
    assert runs.running_since(utc_ago(60))
    runs.finish(60, "ok", summary, None)
    assert not runs.running_since(utc_ago(60))
    assert runs.claim(120, 60, "b")
    runs.finish(120, "failed", None, "boom")

    latest, completed = runs.latest(), runs.latest(completed=True)
    assert latest is not None
    assert (latest.slot, latest.status, latest.error) == (120, "failed", "boom")
    assert completed is not None
    assert completed.summary == summary
    assert runs.latest_report() == completed

    assert runs.prune(keep=1) == 1
    assert runs.latest(completed=True) is None


def test_the_drift_table_leaves_the_prediction_log_schema_alone(store: Store) -> None:
    DriftRuns(store).ensure_schema()
    assert inspect(store.engine).has_table("drift_runs")
    assert store.version() == SCHEMA_VERSION
    store.ensure_schema()  # the log still accepts the store as its own


def test_a_search_path_schema_that_does_not_exist_is_named(
    missing_schema: tuple[str, str],
) -> None:
    url, schema = missing_schema
    store = Store(url)
    try:
        with pytest.raises(SchemaMissing, match=f'schema "{schema}" .* does not exist'):
            DriftRuns(store).ensure_schema()
    finally:
        store.close()
