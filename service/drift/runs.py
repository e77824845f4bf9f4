"""The ``drift_runs`` table: which process runs drift for which model in which interval slot, and
what it found.

It lives beside the prediction log, in the same store, so every worker and replica sharing the
log also shares the claims. A slot is ``floor(now / interval) * interval`` (unix seconds); the
slot and the served model's tag are the table's primary key: the INSERT that claims them succeeds
in exactly one process serving that model, the others find the row there (``ON CONFLICT DO
NOTHING`` returns no row). Replicas serving another model version (a rolling deploy) claim rows
of their own, so each version gets its runs, on its own window. The row then receives the run's
status and summary, which every worker serving the model reads back to export the same metrics;
a worker never reads another model's runs. A run cut short by its own worker's shutdown is no
outcome: its worker deletes the row (``release``), so that the slot can be claimed again.

The table has a MetaData of its own, created with ``checkfirst``: adding drift does not change
the prediction log's tables, so its SCHEMA_VERSION stays as it is. A table of the first version
(the slot alone as its key, no ``model_tag``) is upgraded in place by ``ensure_schema``: its runs
are few (``DRIFT_SNAPSHOT_KEEP``) and each completed one names its model in its summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from service.drift.summary import COMPLETED, DriftSummary, Status
from service.predlog.schema import Json, Timestamp
from service.predlog.store import Store

log = logging.getLogger(__name__)
metadata = MetaData()
RUNNING = "running"
# pg_advisory_xact_lock key serialising the creation of the table across processes.
_SCHEMA_LOCK_KEY = 0x6472_6966_7472_756E  # "driftrun"

drift_runs = Table(
    "drift_runs",
    metadata,
    Column(
        "slot",
        BigInteger,
        primary_key=True,
        comment="start of the interval slot the run belongs to, unix seconds",
    ),
    Column(
        "model_tag",
        String(200),
        primary_key=True,
        comment="the served model the run is for, `name:version`: one run per slot and model",
    ),
    Column("interval_seconds", Integer, nullable=False, comment="DRIFT_INTERVAL_SECONDS"),
    Column("claimed_at", Timestamp, nullable=False, comment="when the slot was claimed, UTC"),
    Column("claimed_by", String(200), nullable=False, comment="host:pid of the claiming worker"),
    Column(
        "status",
        String(20),
        nullable=False,
        comment="running, ok, insufficient_data or failed",
    ),
    Column("finished_at", Timestamp, nullable=True, comment="when the run ended, UTC"),
    Column("summary", Json, nullable=True, comment="the run's summary (GET /drift), if completed"),
    Column("error", Text, nullable=True, comment="why the run failed"),
    comment="one row per drift run: the claim of a slot for a model, then its outcome",
)
# The key of the upgraded table's rows whose model is unknown (no summary: failed or running).
UNKNOWN_MODEL = ""


@dataclass(frozen=True, slots=True)
class Run:
    slot: int
    model_tag: str
    claimed_by: str
    status: str
    finished_at: datetime | None
    summary: DriftSummary | None
    error: str | None

    @classmethod
    def from_row(cls, row: Any) -> Run:
        finished = row.finished_at
        if finished is not None and finished.tzinfo is None:  # SQLite hands back naive UTC
            finished = finished.replace(tzinfo=UTC)
        return cls(
            slot=int(row.slot),
            model_tag=row.model_tag,
            claimed_by=row.claimed_by,
            status=row.status,
            finished_at=finished,
            summary=DriftSummary.from_dict(row.summary) if row.summary else None,
            error=row.error,
        )


class DriftRuns:
    """Claims and results of the drift runs of one model (``model_tag``) in the prediction log's
    store; retention and the closing of abandoned runs span all models."""

    def __init__(self, store: Store, model_tag: str) -> None:
        self.store = store
        self.model_tag = model_tag
        self._mine = drift_runs.c.model_tag == model_tag
        dialect_insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert
        # RETURNING tells whether the row went in: psycopg reports no rowcount for ON CONFLICT.
        self._claim = (
            dialect_insert(drift_runs).on_conflict_do_nothing().returning(drift_runs.c.slot)
        )

    def ensure_schema(self) -> None:
        with self.store.engine.begin() as conn:
            if self.store.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                self.store.check_search_path(conn)  # no schema to create in: say which and why
            inspector = inspect(conn)
            if inspector.has_table(drift_runs.name) and "model_tag" not in {
                column["name"] for column in inspector.get_columns(drift_runs.name)
            }:
                self._upgrade(conn)
            metadata.create_all(conn, checkfirst=True)

    def _upgrade(self, conn: Connection) -> None:
        """Give a first-version table (the slot alone as its key) its ``model_tag`` column and
        key: rebuilt, in the caller's transaction, with every row; a completed run's model is in
        its summary, a failed or running one's is unknown (``UNKNOWN_MODEL``: no model shows it).

        Both stores can drop and create a table in a transaction (SQLite cannot change a primary
        key in place); ``ensure_schema`` holds the lock (PostgreSQL) or the write lock (SQLite),
        so the other workers starting find the table upgraded.
        """
        old = [column for column in drift_runs.c if column.name != "model_tag"]
        rows = [dict(row) for row in conn.execute(select(*old)).mappings()]
        for row in rows:
            summary = row["summary"]
            row["model_tag"] = summary.get("model", UNKNOWN_MODEL) if summary else UNKNOWN_MODEL
        drift_runs.drop(conn)
        metadata.create_all(conn)
        if rows:
            conn.execute(insert(drift_runs), rows)
        log.info(
            "drift_runs at %s upgraded: its runs are now claimed per served model "
            "(model_tag, %d runs kept)",
            self.store.display_url,
            len(rows),
        )

    def claim(self, slot: int, interval_seconds: int, claimed_by: str) -> bool:
        """Claim the slot for this model; True in exactly one of the processes trying."""
        row = {
            "slot": slot,
            "model_tag": self.model_tag,
            "interval_seconds": interval_seconds,
            "claimed_at": datetime.now(UTC),
            "claimed_by": claimed_by,
            "status": RUNNING,
        }
        with self.store.engine.begin() as conn:
            return conn.execute(self._claim, row).first() is not None

    def running_since(self, since: datetime) -> bool:
        """Is a run of this model claimed after ``since`` still running (in any process)?"""
        query = select(func.count()).where(
            self._mine, drift_runs.c.status == RUNNING, drift_runs.c.claimed_at >= since
        )
        with self.store.read() as conn:
            return bool(conn.execute(query).scalar_one())

    def finish(
        self, slot: int, status: Status, summary: DriftSummary | None, error: str | None
    ) -> None:
        values = {
            "status": status,
            "finished_at": datetime.now(UTC),
            "summary": summary.to_dict() if summary else None,
            "error": error,
        }
        with self.store.engine.begin() as conn:
            conn.execute(
                update(drift_runs).where(self._mine, drift_runs.c.slot == slot).values(values)
            )

    def release(self, slot: int, claimed_by: str) -> bool:
        """Give up ``claimed_by``'s claim of ``slot`` while its run is still 'running' (its worker
        is shutting down): the row goes, so that the slot can be claimed again, and this model's
        newest run is again the one before. Returns whether there was such a claim."""
        with self.store.engine.begin() as conn:
            return (
                conn.execute(
                    delete(drift_runs).where(
                        self._mine,
                        drift_runs.c.slot == slot,
                        drift_runs.c.status == RUNNING,
                        drift_runs.c.claimed_by == claimed_by,
                    )
                ).rowcount
                > 0
            )

    def claimed(self, slot: int) -> bool:
        """Does a row (a claim, running or ended) hold ``slot`` for this model?"""
        query = select(func.count()).where(self._mine, drift_runs.c.slot == slot)
        with self.store.read() as conn:
            return bool(conn.execute(query).scalar_one())

    def latest(self, completed: bool = False) -> Run | None:
        """This model's newest finished run (``completed``: the newest with a summary)."""
        return self._newest(COMPLETED if completed else (*COMPLETED, "failed"))

    def latest_report(self) -> Run | None:
        """This model's newest run that wrote an HTML report."""
        return self._newest(("ok",))

    def _newest(self, statuses: tuple[str, ...]) -> Run | None:
        query = (
            select(drift_runs)
            .where(self._mine, drift_runs.c.status.in_(statuses))
            .order_by(drift_runs.c.slot.desc())
            .limit(1)
        )
        with self.store.read() as conn:
            row = conn.execute(query).first()
        return Run.from_row(row) if row else None

    def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` rows, of every model (as the snapshot files of
        every model in DRIFT_SNAPSHOT_DIR); returns the rows deleted."""
        with self.store.read() as conn:
            boundary = conn.execute(
                select(drift_runs.c.slot)
                .order_by(drift_runs.c.slot.desc())
                .offset(keep - 1)
                .limit(1)
            ).scalar()
        if boundary is None:
            return 0
        with self.store.engine.begin() as conn:
            return conn.execute(delete(drift_runs).where(drift_runs.c.slot < boundary)).rowcount

    def stale_before(self, cutoff: datetime) -> int:
        """Mark runs still 'running' that were claimed before ``cutoff`` as failed (their worker
        died mid-run without releasing its claim); returns how many."""
        with self.store.engine.begin() as conn:
            return conn.execute(
                update(drift_runs)
                .where(drift_runs.c.status == RUNNING, drift_runs.c.claimed_at < cutoff)
                .values(
                    status="failed",
                    finished_at=datetime.now(UTC),
                    error="the worker running it stopped before it finished",
                )
            ).rowcount


def utc_ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)
