"""Slot claims in the drift_runs table: exactly one claimant per slot and model, whatever the
contention, on real SQLite and real PostgreSQL; the newest runs of a model read back; retention;
the upgrade of a table of the first version (the slot alone as its key)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
    text,
)

from service.drift.runs import UNKNOWN_MODEL, DriftRuns, drift_runs, utc_ago
from service.drift.summary import ColumnDrift
from service.predlog.schema import SCHEMA_VERSION, Json, Timestamp
from service.predlog.store import SchemaMissing, Store
from tests.drift.helpers import ok_summary
from tests.predlog.helpers import concurrently
from tests.support import ROOT

CLAIMANTS = 8
MODEL = "credit_risk:v1"


def _claim(args: tuple[str, int, str]) -> bool:
    url, slot, who = args
    store = Store(url)  # a store (connection pool) of its own, as every worker has
    try:
        runs = DriftRuns(store, MODEL)
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
    runs = DriftRuns(store, MODEL)
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


def test_each_model_claims_and_reads_back_its_own_runs(store: Store) -> None:
    old, new = DriftRuns(store, "credit_risk:v1"), DriftRuns(store, "credit_risk:v2")
    old.ensure_schema()
    assert old.claim(60, 60, "replica-a:1")
    assert not old.claim(60, 60, "replica-a:2")  # one run per slot for a model...
    assert not new.running_since(utc_ago(60))  # ...whose run going on is not the other's
    assert new.claim(60, 60, "replica-b:1")  # ...and one for each model
    assert new.latest() is None  # the other model's run is not this one's
    new.finish(60, "ok", ok_summary(model="credit_risk:v2"), None)
    assert old.running_since(utc_ago(60))  # recording one model's run left the other's alone
    assert new.latest() is not None
    assert old.latest() is None
    old.finish(60, "failed", None, "boom")
    latest = new.latest(completed=True)
    assert latest is not None
    assert (latest.model_tag, latest.status) == ("credit_risk:v2", "ok")
    assert new.latest_report() == latest
    assert old.latest(completed=True) is None
    assert old.latest_report() is None
    # Retention counts every model's rows, as the snapshot files of a shared directory.
    assert old.claim(120, 60, "replica-a:1")
    assert new.prune(keep=1) == 2


def test_only_the_claimant_releases_its_claim_and_only_while_its_run_is_going(
    store: Store,
) -> None:
    runs, other_model = DriftRuns(store, MODEL), DriftRuns(store, "credit_risk:v2")
    runs.ensure_schema()
    assert runs.claim(60, 60, "a")
    runs.finish(60, "ok", ok_summary(), None)
    assert runs.claim(120, 60, "a")
    assert other_model.claim(120, 60, "a")

    assert not runs.release(120, "b")  # another worker's claim stays
    assert not runs.release(60, "a")  # an ended run stays
    assert runs.release(120, "a")

    assert not runs.claimed(120)
    assert other_model.claimed(120)  # the other model's claim of the slot stays
    latest = runs.latest()
    assert latest is not None
    assert latest.slot == 60  # the run before is the newest again
    assert runs.claim(120, 60, "b")  # the slot can be claimed again


def _first_version(metadata: MetaData) -> Table:
    """drift_runs as the first version created it: the slot alone as its key, no model_tag."""
    return Table(
        "drift_runs",
        metadata,
        Column("slot", BigInteger, primary_key=True),
        Column("interval_seconds", Integer, nullable=False),
        Column("claimed_at", Timestamp, nullable=False),
        Column("claimed_by", String(200), nullable=False),
        Column("status", String(20), nullable=False),
        Column("finished_at", Timestamp, nullable=True),
        Column("summary", Json, nullable=True),
        Column("error", Text, nullable=True),
    )


def test_a_first_version_table_is_upgraded_keeping_its_runs(store: Store) -> None:
    metadata = MetaData()
    old = _first_version(metadata)
    metadata.create_all(store.engine)
    now = datetime.now(UTC)
    common = {"interval_seconds": 60, "claimed_at": now, "claimed_by": "a", "finished_at": now}
    with store.engine.begin() as conn:
        conn.execute(
            insert(old),
            [
                {**common, "slot": 60, "status": "ok", "summary": ok_summary().to_dict()},
                {**common, "slot": 120, "status": "failed", "summary": None, "error": "boom"},
            ],
        )

    DriftRuns(store, MODEL).ensure_schema()
    DriftRuns(store, MODEL).ensure_schema()  # once only

    with store.read() as conn:
        rows = conn.execute(
            select(drift_runs.c.slot, drift_runs.c.model_tag, drift_runs.c.status).order_by(
                drift_runs.c.slot
            )
        ).all()
    assert [tuple(r) for r in rows] == [(60, MODEL, "ok"), (120, UNKNOWN_MODEL, "failed")]
    latest = DriftRuns(store, MODEL).latest()  # the failed run is nobody's
    assert latest is not None
    assert (latest.slot, latest.summary.model if latest.summary else None) == (60, MODEL)
    assert DriftRuns(store, "credit_risk:v2").claim(60, 60, "b")  # the new key


def test_the_drift_table_leaves_the_prediction_log_schema_alone(store: Store) -> None:
    DriftRuns(store, MODEL).ensure_schema()
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
            DriftRuns(store, MODEL).ensure_schema()
    finally:
        store.close()


def test_the_docs_document_the_columns_of_the_table() -> None:
    section = (ROOT / "docs" / "drift.md").read_text().split("\n## The `drift_runs` table", 1)[1]
    block = section.split("\n\n")[1]
    documented = re.findall(r"^\| `(\w+)` \|", block, flags=re.MULTILINE)
    assert documented == [column.name for column in drift_runs.columns]


def test_the_docs_query_of_a_models_verdicts_over_time_runs(sqlite_url: str) -> None:
    # docs/drift.md's SQLite query, as written but for the model tag: a data scientist pastes it
    # to see how a sustained drift built up, run by run.
    section = (ROOT / "docs" / "drift.md").read_text().split("\n## The `drift_runs` table", 1)[1]
    (query,) = re.findall(r"```sql\n(.*?);\n```", section, flags=re.DOTALL)
    store = Store(sqlite_url)
    try:
        runs = DriftRuns(store, MODEL)
        runs.ensure_schema()
        purpose = ColumnDrift("chi-square two-sample p_value", 1e-9, 0.05, True)
        drifted = replace(
            ok_summary(window_size=400), drifted_share=0.25, features={"purpose": purpose}
        )
        for slot, summary in ((600, ok_summary()), (660, drifted)):
            assert runs.claim(slot, 60, "host:1")
            runs.finish(slot, "ok", summary, None)
        with store.engine.connect() as conn:
            rows = conn.execute(text(query.replace("credit_risk:<version>", MODEL))).all()
    finally:
        store.close()
    assert [tuple(row) for row in rows] == [
        ("1970-01-01 00:11:00", "ok", 400, 0.25, 0, 1e-9),
        ("1970-01-01 00:10:00", "ok", 500, 0.0, 0, None),
    ]
