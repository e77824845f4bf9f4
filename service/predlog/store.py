"""The SQL store of the prediction log: connect, create or check the schema, write, prune, read.

One code path for SQLite and PostgreSQL (SQLAlchemy Core). The dialect differences live here and
nowhere else:

- SQLite runs in WAL mode with a busy timeout, so several worker processes can write the same
  file (one writer at a time, readers never blocked); write transactions start with
  ``BEGIN IMMEDIATE`` so that a read-then-write transaction (the prune) cannot fail on a lock
  upgrade. ``synchronous=NORMAL``: a committed row survives a process crash; a power loss may lose
  the last commits.
- PostgreSQL takes plain inserts from any number of processes and replicas; schema creation is
  serialised with an advisory lock. ``postgresql://`` URLs use psycopg 3. Tables go into the first
  schema of the search path that exists: add ``?options=-csearch_path%3Dmy_schema`` to the URL to
  choose one. When none does (``current_schema()`` is NULL: the schema was never created, or the
  URL misspells it), :class:`SchemaMissing` names it and says how to fix it; the writer takes that
  as a store that is down, not as a reason to stop the service.

Inserts use ``ON CONFLICT DO NOTHING`` on the primary key, so replaying an entry that was in fact
committed (e.g. the connection dropped during COMMIT) does not duplicate it.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Engine,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.sql.dml import Insert

from service.predlog.records import Entry, Row, instance_rows, requests_from_instance_rows
from service.predlog.schema import (
    DATA_TABLES,
    SCHEMA_VERSION,
    VIEW_DDL,
    metadata,
    prediction_requests,
    predictions,
    schema_version,
)

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_SECONDS = 10.0
SQLITE_PAGE_SIZE = 16384  # of a new store (see _sqlite_on_connect)
POSTGRES_CONNECT_TIMEOUT_SECONDS = 5
PRUNE_CHUNK_ROWS = 5000
# pg_advisory_xact_lock key serialising schema creation across processes and replicas.
_SCHEMA_LOCK_KEY = 0x7072_6564_6C6F_67  # "predlog"
_READONLY = "predlog_readonly"


class _AlreadyPresent(Exception):
    """Some of the rows written are in the store already."""


class SchemaMismatch(RuntimeError):
    """The store holds tables this version of the service must not write to."""


class SchemaMissing(RuntimeError):
    """PostgreSQL: no schema of the search path exists (or may be used by this user), so the
    tables can be neither created nor found. Not fatal: it lasts until the schema is created."""


_SEARCH_PATH_ITEM = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^,\s]+))\s*(?:,|$)')
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")


def _search_path_schemas(search_path: str, user: str) -> list[str]:
    """The schema names of a ``search_path`` setting as PostgreSQL resolves them: unquoted names
    lower-cased, ``$user`` the current user."""
    names = []
    for match in _SEARCH_PATH_ITEM.finditer(search_path):
        quoted, bare = match.groups()
        name = quoted.replace('""', '"') if quoted is not None else bare.lower()
        names.append(user if name == "$user" else name)
    return names


def _sql_identifier(name: str) -> str:
    return name if _PLAIN_IDENTIFIER.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def _missing_schema_message(
    search_path: str, names: list[str], missing: list[str], user: str
) -> str:
    setting = "search_path=" + (search_path or "''")
    fix_url = "correct search_path in the store URL (PREDICTION_LOG_URL)"
    if not names:
        return (
            f"the search path is empty ({setting}), so the prediction log has no schema to create "
            f"or read its tables in: {fix_url}, e.g. ?options=-csearch_path%3Dmy_schema"
        )
    if missing:
        quoted = ", ".join(f'"{name}"' for name in missing)
        said = f"schema {quoted} of the search path ({setting}) does not exist"
        create = "create it"
        if len(missing) > 1:
            said = f"schemas {quoted} of the search path ({setting}) do not exist"
            create = "create one"
        return (
            f"{said}, so the prediction log has no schema to create its tables in: {create} "
            f"(CREATE SCHEMA {_sql_identifier(missing[0])};) or {fix_url}"
        )
    quoted = ", ".join(f'"{name}"' for name in names)
    return (
        f'user "{user}" may not use schema {quoted} of the search path ({setting}), so the '
        f"prediction log has no schema to create its tables in: grant it (GRANT USAGE, CREATE ON "
        f"SCHEMA {_sql_identifier(names[0])} TO {_sql_identifier(user)};) or {fix_url}"
    )


def is_refusal(exc: BaseException) -> bool:
    """Did the store refuse the rows themselves (retrying cannot help), not fail to take them?"""
    return isinstance(exc, IntegrityError | DataError)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module (it would not BEGIN before DDL and cannot
    # BEGIN IMMEDIATE); the "begin" listener emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # A new file's page size (an existing file keeps its own): a 100-instance row is ~26 KB of
    # JSON, which 4 KB pages split over seven overflow pages. 16 KB pages cost 15-25% less CPU per
    # insert (1, 100 and 1000 instances per row, measured in process) for 2-14% more bytes on disk.
    cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    # Switching a new database file to WAL needs it to itself, and SQLite answers "database is
    # locked" at once, without its busy timeout, while another process (a sibling worker
    # starting at the same moment) holds it: wait like the busy timeout would.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    readonly = conn.get_execution_options().get(_READONLY, False)
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def parse_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"PREDICTION_LOG_URL {parsed.render_as_string()!r}: only sqlite:///path and "
            "postgresql://... stores are supported"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError("PREDICTION_LOG_URL: an in-memory SQLite store would lose every row")
    # A driver named in the URL (postgresql+psycopg2://, common in other applications' settings)
    # is imported only by create_engine, in every worker: each failed its start with a traceback
    # and was restarted, forever. Only psycopg (3) and SQLite's own are installed.
    try:
        parsed.get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError):
        raise ValueError(
            f"PREDICTION_LOG_URL {parsed.render_as_string()!r}: its driver "
            f"{parsed.get_driver_name()!r} is not installed; name none (postgresql://..., "
            "sqlite:///...) or postgresql+psycopg://"
        ) from None
    return parsed


def make_engine(url: str) -> Engine:
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        directory = Path(parsed.database).parent
        connect_args: dict[str, Any] = (
            {} if "timeout" in parsed.query else {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
        )
        engine = create_engine(
            parsed,
            connect_args=connect_args,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )
        # The directory is created on each connection attempt, not once here: one that cannot
        # be created yet (read-only volume) is a store that is down, retried, not a failed start.
        event.listen(engine, "do_connect", lambda *_: directory.mkdir(parents=True, exist_ok=True))
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args = (
        {}
        if "connect_timeout" in parsed.query
        else {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS}
    )
    return create_engine(
        parsed,
        connect_args=connect_args,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        # A pooled connection broken by a database restart is replaced before use, rather than
        # failing a batch and sending the writer into its retry backoff.
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
    )


class _BulkInsert:
    """An INSERT compiled once, its rows converted by the dialect's own bind processors and
    handed to the driver's ``executemany``.

    ``conn.execute(insert, rows)`` does the same, but re-processes every parameter of every row
    in Python: about 30 us of CPU per row, measured when a row was an instance (schema 1), a
    fifth of a core at tens of thousands of logged instances per second, on the serving worker's
    GIL. Here rows become tuples in C (``itemgetter``), and a column whose first two rows hold
    the same object is converted once per run of that object: ``feature_names``, one list shared
    by the requests of the same features (``records._names_list``).
    """

    def __init__(self, statement: Insert, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names: list[str] = list(compiled.positiontup or compiled.params)
        assert len(self.names) > 1  # itemgetter of one name would not give tuples
        self._get = itemgetter(*self.names)
        columns = statement.table.columns
        processors = [
            columns[name].type.dialect_impl(dialect).bind_processor(dialect) for name in self.names
        ]
        self._processors = [(i, p) for i, p in enumerate(processors) if p is not None]

    def parameters(self, rows: Sequence[Row]) -> list[Any]:
        columns: list[Sequence[Any]] = list(zip(*map(self._get, rows), strict=True))
        for i, process in self._processors:
            column = columns[i]
            if len(column) > 1 and column[0] is column[1]:
                converted: list[Any] = []
                last: Any = object()
                value_out: Any = None
                for value in column:
                    if value is not last:
                        last, value_out = value, process(value)
                    converted.append(value_out)
                columns[i] = converted
            else:
                columns[i] = list(map(process, column))
        tuples = zip(*columns, strict=True)
        if self.positional:
            return list(tuples)
        return [dict(zip(self.names, values, strict=True)) for values in tuples]

    def execute(self, conn: Connection, rows: Sequence[Row]) -> int:
        """Rows inserted (SQLite and psycopg sum them over the executemany)."""
        return conn.exec_driver_sql(self.sql, self.parameters(rows)).rowcount


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _literal(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


def _as_utc(value: datetime) -> datetime:
    # SQLite hands timestamps back naive (they are stored as UTC text).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Store:
    """The tables behind ``PREDICTION_LOG_URL``; safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self.display_url = self.engine.url.render_as_string(hide_password=True)
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._inserts = {
            name: _BulkInsert(dialect_insert(table).on_conflict_do_nothing(), self.engine.dialect)
            for name, table in DATA_TABLES.items()
        }

    def close(self) -> None:
        self.engine.dispose()

    def read(self) -> Connection:
        """A connection for reads only (SQLite: a plain BEGIN, which never waits for writers)."""
        return self.engine.connect().execution_options(**{_READONLY: True})

    def probe(self) -> None:
        """Raise unless the store would take a write now: a write transaction opened and rolled
        back (SQLite takes its write lock, so a read-only or vanished file fails too)."""
        with self.engine.connect() as conn:
            conn.begin()
            conn.execute(text("SELECT 1"))
            conn.rollback()

    # Schema

    def check_search_path(self, conn: Connection) -> None:
        """PostgreSQL: raise :class:`SchemaMissing` unless the search path leads to a schema
        (``current_schema()`` is not NULL), saying which schema is missing and how to fix it."""
        if self.dialect != "postgresql":
            return
        current, search_path, user = conn.execute(
            text("SELECT current_schema(), current_setting('search_path'), current_user")
        ).one()
        if current is not None:
            return
        names = _search_path_schemas(search_path, user)
        query = text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)")
        existing = set(conn.execute(query, {"names": names}).scalars()) if names else set()
        missing = [name for name in names if name not in existing]
        raise SchemaMissing(_missing_schema_message(search_path, names, missing, user))

    def ensure_schema(self) -> None:
        """Create the tables if the store has none; refuse a store of another schema version.

        Raises :class:`SchemaMissing` (PostgreSQL) while the search path names no schema that
        exists, :class:`SchemaMismatch` for tables this service must not write to.
        """
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                self.check_search_path(conn)
            inspector = inspect(conn)
            if inspector.has_table(schema_version.name):
                found = conn.execute(select(schema_version.c.version)).scalars().all()
                if found != [SCHEMA_VERSION]:
                    raise SchemaMismatch(
                        f"the prediction log at {self.display_url} has schema version "
                        f"{', '.join(map(str, found)) or 'none'}; this service writes version "
                        f"{SCHEMA_VERSION}. Migrate the tables (`python -m service.predlog "
                        "migrate`; docs/prediction-log.md) or point PREDICTION_LOG_URL at "
                        "another database."
                    )
                metadata.create_all(conn, checkfirst=True)  # a table dropped by hand comes back
                self._create_view(conn)
                return
            names = [t.name for t in DATA_TABLES.values()] + [predictions.name]
            clashing = [name for name in names if inspector.has_table(name)]
            if clashing:
                raise SchemaMismatch(
                    f"{self.display_url} already has table(s) {', '.join(clashing)} without a "
                    f"{schema_version.name} table: they were not created by this service. "
                    "Point PREDICTION_LOG_URL at another database or schema."
                )
            metadata.create_all(conn, checkfirst=True)
            self._compress_with_lz4(conn)
            self._create_view(conn)
            conn.execute(
                insert(schema_version), {"version": SCHEMA_VERSION, "created_at": datetime.now(UTC)}
            )
            log.info("created the prediction log tables (schema %d)", SCHEMA_VERSION)

    def _compress_with_lz4(self, conn: Connection) -> None:
        """PostgreSQL 14+: compress the JSON arrays with lz4 rather than pglz (measured here:
        half the server CPU per logged instance, 5.4 -> 2.7 us). Servers built without lz4 keep
        pglz."""
        if self.dialect != "postgresql":
            return
        try:
            with conn.begin_nested():
                for column in ("instances", "labels", "scores"):
                    conn.exec_driver_sql(
                        f"ALTER TABLE {prediction_requests.name} "
                        f"ALTER COLUMN {column} SET COMPRESSION lz4"
                    )
        except DBAPIError as exc:
            log.info("prediction log: lz4 compression not available (%s); using pglz", exc.orig)

    def _create_view(self, conn: Connection) -> None:
        conn.exec_driver_sql(VIEW_DDL[self.dialect])
        if self.dialect == "postgresql":
            conn.exec_driver_sql(f"COMMENT ON VIEW predictions IS {_literal(predictions.comment)}")
            for column in predictions.columns:
                conn.exec_driver_sql(
                    f"COMMENT ON COLUMN predictions.{column.name} IS {_literal(column.comment)}"
                )

    def migrate(self, batch: int = 1000) -> int:
        """Upgrade a store of schema version 1 (a ``predictions`` table of one row per instance)
        to this version, in one transaction; returns the instances moved (0 if already current).

        Stop every writer first: a service of the old version would fail to find its table.
        """
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                self.check_search_path(conn)
            if not inspect(conn).has_table(schema_version.name):
                raise SchemaMismatch(f"{self.display_url} has no prediction log to migrate")
            found = conn.execute(select(schema_version.c.version)).scalars().all()
            if found == [SCHEMA_VERSION]:
                return 0
            if found != [1]:
                raise SchemaMismatch(
                    f"{self.display_url} has schema version {found}: only 1 can be migrated"
                )
            metadata.create_all(conn, tables=[prediction_requests], checkfirst=True)
            self._compress_with_lz4(conn)
            old = predictions  # version 1's table had the view's columns
            rows = conn.execute(
                select(old)
                .order_by(old.c.event_id, old.c.instance_index)
                .execution_options(yield_per=batch * 10)
            ).mappings()
            moved = 0
            insert_requests = self._inserts["predictions"]
            # A group is only readable until groupby moves on: take its rows at once.
            events = (
                [dict(row) for row in group] for _, group in groupby(rows, itemgetter("event_id"))
            )
            for part in _chunks(events, batch):
                requests = requests_from_instance_rows([row for event in part for row in event])
                insert_requests.execute(conn, requests)
                moved += sum(r["instance_count"] for r in requests)
            conn.exec_driver_sql("DROP TABLE predictions")
            self._create_view(conn)
            conn.execute(update(schema_version).values(version=SCHEMA_VERSION))
            log.info(
                "migrated %s to schema %d: %d instances", self.display_url, SCHEMA_VERSION, moved
            )
            return moved

    def version(self) -> int | None:
        """The schema version, None if the store has no tables (raises :class:`SchemaMissing`
        if there is no schema to look in)."""
        with self.read() as conn:
            self.check_search_path(conn)
            if not inspect(conn).has_table(schema_version.name):
                return None
            return conn.execute(select(func.max(schema_version.c.version))).scalar()

    # Writing

    def write(self, entries: Sequence[Entry]) -> dict[str, int]:
        """Commit every row of ``entries`` in one transaction (rows already present are skipped);
        returns the records inserted per table.

        Entries may be in the store already (a replay cut short and started again): the count
        of rows each insert took tells; when it falls short, the write is done again, looking
        for the entries first, to know whose records were inserted. New entries (fresh event
        ids) cost no such query.
        """
        try:
            return self._write(entries, look_first=False)
        except _AlreadyPresent:
            return self._write(entries, look_first=True)

    def _write(self, entries: Sequence[Entry], look_first: bool) -> dict[str, int]:
        by_table: dict[str, list[Entry]] = defaultdict(list)
        for entry in entries:
            by_table[entry.table].append(entry)
        inserted: dict[str, int] = {}
        with self.engine.begin() as conn:
            for name, group in by_table.items():
                if look_first:
                    table = DATA_TABLES[name]
                    ids = [row["event_id"] for entry in group for row in entry.rows]
                    query = select(table.c.event_id).where(table.c.event_id.in_(ids))
                    present = set(conn.execute(query).scalars())
                    group = [e for e in group if any(r["event_id"] not in present for r in e.rows)]
                rows = [row for entry in group for row in entry.rows]
                if rows and self._inserts[name].execute(conn, rows) != len(rows) and not look_first:
                    raise _AlreadyPresent  # rolls back
                inserted[name] = sum(entry.records for entry in group)
        return inserted

    # Retention

    def prune(
        self,
        retention_days: float | None,
        max_rows: int | None,
        now: datetime | None = None,
        chunk: int = PRUNE_CHUNK_ROWS,
    ) -> dict[str, int]:
        """Delete records older than ``retention_days`` and beyond the newest ``max_rows`` of
        each kind (instances for predictions, requests for rejections); returns the records
        deleted per kind.

        Deletes in chunks of about ``chunk`` table rows, each its own short transaction, so that
        writers are never held up for long. Safe to run from every worker at once: a row deleted
        twice is deleted once.
        """
        now = now or datetime.now(UTC)
        deleted: dict[str, int] = {}
        for name, table in DATA_TABLES.items():
            count = 0
            if retention_days:
                count += self._delete_older(table, now - timedelta(days=retention_days), chunk)
            if max_rows:
                boundary = self._newest_boundary(table, max_rows)
                if boundary is not None:
                    # Strictly older than the request holding the max_rows-th newest record:
                    # records of one request are kept or deleted together.
                    count += self._delete_older(table, _as_utc(boundary), chunk)
            deleted[name] = count
        return deleted

    @staticmethod
    def _records(table: Table) -> Any:
        """What one row of ``table`` counts for: its instances, or 1."""
        return table.c.instance_count if table is prediction_requests else literal(1)

    def _newest_boundary(self, table: Table, max_rows: int) -> datetime | None:
        """received_at of the row at which the newest rows reach ``max_rows`` records."""
        at = table.c.received_at
        running = (
            func.sum(self._records(table))
            .over(order_by=(at.desc(), table.c.event_id.desc()))
            .label("running")
        )
        newest = select(at, running).subquery()
        with self.read() as conn:
            return conn.execute(
                select(newest.c.received_at)
                .where(newest.c.running >= max_rows)
                .order_by(newest.c.received_at.desc())
                .limit(1)
            ).scalar()

    def _delete_older(self, table: Table, cutoff: datetime, chunk: int) -> int:
        at = table.c.received_at
        total = 0
        while True:
            with self.engine.begin() as conn:
                edge = conn.execute(
                    select(at).where(at < cutoff).order_by(at).offset(chunk).limit(1)
                ).scalar()
                condition = at < cutoff if edge is None else at <= edge
                if table is prediction_requests:
                    # RETURNING, not a SELECT before: a concurrent pruner may delete rows first.
                    deleted = delete(table).where(condition).returning(table.c.instance_count)
                    total += sum(conn.execute(deleted).scalars())
                else:
                    total += conn.execute(delete(table).where(condition)).rowcount
            if edge is None:
                return total

    # Reading (CLI)

    def iter_rows(
        self, table: str, since: datetime, until: datetime, batch: int = 1000
    ) -> Iterator[list[dict[str, Any]]]:
        """Records of ``table`` received in ``[since, until)``, in time order, about ``batch``
        table rows at a time; predictions one row per instance, as in the ``predictions`` view."""
        t = DATA_TABLES[table]
        query = (
            select(t)
            .where(t.c.received_at >= since, t.c.received_at < until)
            .order_by(t.c.received_at, t.c.event_id)
            .execution_options(yield_per=batch)
        )
        with self.read() as conn:
            for part in conn.execute(query).mappings().partitions():
                yield self._public_rows(t, part)

    def find(self, request_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every record of the request ``request_id``, per kind (predictions per instance)."""
        found: dict[str, list[dict[str, Any]]] = {}
        with self.read() as conn:
            for name, t in DATA_TABLES.items():
                query = (
                    select(t)
                    .where(t.c.request_id == request_id)
                    .order_by(t.c.received_at, t.c.event_id)
                )
                found[name] = self._public_rows(t, conn.execute(query).mappings().all())
        return found

    @staticmethod
    def _public_rows(table: Table, rows: Sequence[Any]) -> list[dict[str, Any]]:
        if table is prediction_requests:
            return [
                {**r, "received_at": _as_utc(r["received_at"])}
                for row in rows
                for r in instance_rows(row)
            ]
        return [{**row, "received_at": _as_utc(row["received_at"])} for row in rows]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Records, table rows and time range per kind."""
        result: dict[str, dict[str, Any]] = {}
        with self.read() as conn:
            for name, t in DATA_TABLES.items():
                records, count, oldest, newest = conn.execute(
                    select(
                        func.coalesce(func.sum(self._records(t)), 0),
                        func.count(),
                        func.min(t.c.received_at),
                        func.max(t.c.received_at),
                    )
                ).one()
                result[name] = {
                    "rows": int(records),
                    "requests": count,
                    "oldest": oldest and _as_utc(oldest),
                    "newest": newest and _as_utc(newest),
                }
        return result
