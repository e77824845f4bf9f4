"""The store, on SQLite and on the real PostgreSQL: schema creation and versioning, idempotent
writes, concurrent writers and retention."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Column, Engine, MetaData, Table, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from service.predlog.observer import CountingObserver
from service.predlog.records import instance_rows, to_entry
from service.predlog.retention import Pruner
from service.predlog.schema import (
    SCHEMA_VERSION,
    prediction_requests,
    predictions,
    rejections,
    schema_version,
)
from service.predlog.store import SchemaMismatch, SchemaMissing, Store, is_refusal
from tests.predlog.helpers import (
    POSTGRES_URL,
    concurrently,
    prediction_event,
    rejection_event,
    row_count,
    row_keys,
)
from tests.support import wait_until


def test_tables_are_created_once_with_their_version(store: Store) -> None:
    store.ensure_schema()  # a second worker starting finds them
    assert store.version() == SCHEMA_VERSION
    assert row_count(store) == 0


def test_workers_starting_together_create_the_schema_once(store_url: str) -> None:
    stores = [Store(store_url) for _ in range(4)]
    concurrently(Store.ensure_schema, stores)
    with stores[0].engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predlog_schema_version")).scalar() == 1
    for store in stores:
        store.close()


def test_a_store_of_another_schema_version_is_refused(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(schema_version).values(version=SCHEMA_VERSION + 1))
    expected = f"schema version {SCHEMA_VERSION + 1}; this service writes version {SCHEMA_VERSION}"
    with pytest.raises(SchemaMismatch, match=expected):
        Store(store.engine.url.render_as_string(hide_password=False)).ensure_schema()


def test_tables_not_created_by_the_service_are_refused(store_url: str) -> None:
    foreign = Store(store_url)
    with foreign.engine.begin() as conn:
        conn.execute(text("CREATE TABLE predictions (id INTEGER PRIMARY KEY)"))
    with pytest.raises(SchemaMismatch, match="not created by this service"):
        foreign.ensure_schema()
    foreign.close()


def test_a_search_path_schema_that_does_not_exist_is_named_until_it_is_created(
    missing_schema: tuple[str, str], postgres_admin: Engine
) -> None:
    url, schema = missing_schema
    store = Store(url)
    try:
        for call in (store.ensure_schema, store.version, store.migrate):
            with pytest.raises(SchemaMissing) as raised:
                call()
            assert str(raised.value).startswith(
                f'schema "{schema}" of the search path (search_path={schema}) does not exist'
            )
            assert f"create it (CREATE SCHEMA {schema};)" in str(raised.value)
        with postgres_admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        assert store.version() is None
        store.ensure_schema()
        assert store.version() == SCHEMA_VERSION
    finally:
        store.close()


def test_a_search_path_of_several_missing_schemas_names_them(postgres_admin: Engine) -> None:
    suffix = os.urandom(4).hex()
    a, b = f"predlog_missing_a_{suffix}", f"Predlog_Missing_B_{suffix}"
    search_path = f'{a},"{b}"'
    store = Store(f"{POSTGRES_URL}?options={quote(f'-csearch_path={search_path}')}")
    try:
        with pytest.raises(SchemaMissing) as raised:
            store.ensure_schema()
    finally:
        store.close()
    assert str(raised.value).startswith(f'schemas "{a}", "{b}" of the search path')
    assert f"create one (CREATE SCHEMA {a};)" in str(raised.value)


def test_a_table_dropped_by_hand_comes_back(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE rejections"))
    store.ensure_schema()
    store.write([to_entry(rejection_event())])
    assert row_count(store) == 1


def test_writing_an_entry_twice_stores_it_once(store: Store) -> None:
    # A replay after a COMMIT whose answer was lost must not duplicate rows.
    entries = [to_entry(prediction_event(3)), to_entry(rejection_event())]
    assert store.write(entries) == {"predictions": 3, "rejections": 1}
    assert store.write(entries) == {"predictions": 0, "rejections": 0}
    assert row_count(store) == 4


def test_a_write_counts_only_the_records_it_inserted(store: Store) -> None:
    # A replay started again sends entries committed by its first try: they are not counted.
    entries = [to_entry(prediction_event(n)) for n in (1, 2, 3, 4)] + [
        to_entry(rejection_event()) for _ in range(3)
    ]
    store.write([entries[1], entries[4]])
    assert store.write(entries) == {"predictions": 1 + 3 + 4, "rejections": 2}
    assert row_count(store) == 10 + 3


def test_the_same_client_request_id_twice_is_stored_twice(store: Store) -> None:
    store.write([to_entry(prediction_event(1, request_id="retry-me")) for _ in range(2)])
    assert row_count(store) == 2
    assert len(store.find("retry-me")["predictions"]) == 2


def test_find_returns_every_row_of_a_request(store: Store) -> None:
    event = prediction_event(3, request_id="abc")
    store.write([to_entry(event), to_entry(prediction_event(2)), to_entry(rejection_event("abc"))])
    found = store.find("abc")
    assert [r["instance_index"] for r in found["predictions"]] == [0, 1, 2]
    assert [r["features"] for r in found["predictions"]] == event.instances
    assert found["predictions"][0]["received_at"] == event.request.received_at
    assert len(found["rejections"]) == 1


def test_a_row_refused_as_data_is_told_apart_from_an_unavailable_store(store: Store) -> None:
    entry = to_entry(prediction_event(1))
    entry.rows[0]["instance_count"] = None  # NOT NULL
    with pytest.raises(IntegrityError) as refused:
        store.write([entry])
    assert is_refusal(refused.value)
    broken = Store(store.engine.url.render_as_string(hide_password=False))
    with broken.engine.begin() as conn:
        cascade = " CASCADE" if store.dialect == "postgresql" else ""  # the view depends on it
        conn.execute(text(f"DROP TABLE prediction_requests{cascade}"))
    with pytest.raises(DBAPIError) as missing:
        broken.write([to_entry(prediction_event(1))])
    assert not is_refusal(missing.value)
    broken.close()


def test_several_writers_write_one_store_at_once(store_url: str) -> None:
    # Each Store has its own engine and connections, as each worker process has; SQLite's file
    # locking applies between connections of one process as between processes. (The served
    # tests run two real worker processes.)
    stores = [Store(store_url) for _ in range(3)]

    def write(store: Store) -> None:
        store.ensure_schema()
        for _ in range(40):
            store.write([to_entry(prediction_event(2)) for _ in range(5)])

    concurrently(write, stores)
    assert row_count(stores[0]) == 3 * 40 * 5 * 2
    for store in stores:
        store.close()


def test_sqlite_store_is_in_wal_mode_in_a_created_directory(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/a/b/log.db")
    store.ensure_schema()
    assert (tmp_path / "a" / "b" / "log.db").exists()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


@pytest.mark.parametrize("url", ["mysql://x@y/z", "sqlite://", "sqlite:///:memory:"])
def test_unsupported_stores_are_refused_at_startup(url: str) -> None:
    with pytest.raises(ValueError, match="PREDICTION_LOG_URL"):
        Store(url)


# Retention

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def aged(days: float, instances: int = 1):  # type: ignore[no-untyped-def]
    return to_entry(prediction_event(instances, received_at=NOW - timedelta(days=days)))


def test_prune_deletes_rows_older_than_the_retention(store: Store) -> None:
    old = [aged(40, 3), aged(31), to_entry(rejection_event(received_at=NOW - timedelta(days=35)))]
    young = [aged(29, 2), aged(1), to_entry(rejection_event(received_at=NOW))]
    store.write(old + young)
    deleted = store.prune(retention_days=30, max_rows=None, now=NOW, chunk=2)
    assert deleted == {"predictions": 4, "rejections": 1}
    assert row_keys(store) == row_keys_of(young)


def test_prune_keeps_the_newest_rows_up_to_the_cap(store: Store) -> None:
    entries = [aged(day) for day in range(10)]
    store.write(entries)
    assert store.prune(retention_days=None, max_rows=4, now=NOW, chunk=3)["predictions"] == 6
    assert row_keys(store) == row_keys_of(entries[:4])


def test_prune_keeps_the_rows_of_one_request_together(store: Store) -> None:
    entries = [aged(0, 3), aged(1, 3), aged(2, 3)]
    store.write(entries)
    store.prune(retention_days=None, max_rows=4, now=NOW)
    # 4 rows would split the second request: it is kept whole.
    assert row_keys(store) == row_keys_of(entries[:2])


def test_prune_from_every_worker_at_once_is_safe(store_url: str) -> None:
    store = Store(store_url)
    store.ensure_schema()
    store.write([aged(d % 60, 2) for d in range(300)])
    stores = [Store(store_url) for _ in range(3)]
    results = concurrently(lambda s: s.prune(30, None, NOW, chunk=50), stores)
    assert sum(r["predictions"] for r in results) == 2 * sum(1 for d in range(300) if d % 60 > 30)
    assert row_count(store) == 2 * sum(1 for d in range(300) if d % 60 <= 30)
    for s in (store, *stores):
        s.close()


def row_keys_of(entries: list) -> tuple[set[tuple[str, int]], set[str]]:  # type: ignore[type-arg]
    preds = {
        (r["request_id"], r["instance_index"])
        for e in entries
        if e.table == "predictions"
        for request in e.rows
        for r in instance_rows(request)
    }
    rejected = {r["request_id"] for e in entries if e.table == "rejections" for r in e.rows}
    return preds, rejected


def test_the_pruner_runs_periodically_and_counts(store: Store) -> None:
    now = datetime.now(UTC)
    store.write([to_entry(prediction_event(2, received_at=now - timedelta(days=400))),
                 to_entry(prediction_event(1, received_at=now))])  # fmt: skip
    observer = CountingObserver()
    pruner = Pruner(store, observer, retention_days=365, max_rows=0, interval_seconds=0.1)
    pruner.start()
    wait_until(lambda: observer.total("pruned") == 2)
    pruner.close()
    assert row_count(store) == 1


def test_a_failing_prune_is_counted_and_retried() -> None:
    unreachable = Store("postgresql://postgres@127.0.0.1:1/test")
    observer = CountingObserver()
    pruner = Pruner(unreachable, observer, retention_days=1, max_rows=0, interval_seconds=0.05)
    pruner.start()
    wait_until(lambda: observer.failures["prune"] >= 2)
    pruner.close()
    unreachable.close()


def version_1_store(url: str) -> tuple[Store, list[dict], list[dict]]:  # type: ignore[type-arg]
    """A store as schema version 1 left it: a `predictions` table of one row per instance."""
    v1 = MetaData()
    Table(
        "predictions",
        v1,
        *(
            Column(c.name, c.type, primary_key=c.name in ("event_id", "instance_index"))
            for c in predictions.columns
        ),
    )
    for table in (rejections, schema_version):
        table.to_metadata(v1)
    store = Store(url)
    instances = [
        row
        for n in (1, 3, 2)
        for row in instance_rows(to_entry(prediction_event(n, received_at=NOW)).rows[0])
    ]
    refused = to_entry(rejection_event(received_at=NOW)).rows
    with store.engine.begin() as conn:
        v1.create_all(conn)
        conn.execute(insert(schema_version), {"version": 1, "created_at": NOW})
        conn.execute(insert(v1.tables["predictions"]), instances[::-1])  # any physical order
        conn.execute(insert(v1.tables["rejections"]), refused)
    return store, instances, refused


def test_a_version_1_store_is_migrated_in_place_and_reads_as_before(store_url: str) -> None:
    store, instances, refused = version_1_store(store_url)
    with pytest.raises(SchemaMismatch, match=r"service\.predlog migrate"):
        store.ensure_schema()
    assert store.migrate() == len(instances) == 6
    assert store.version() == SCHEMA_VERSION
    store.ensure_schema()  # the service starts on it
    with store.read() as conn:
        view = conn.execute(
            select(predictions).order_by(predictions.c.event_id, predictions.c.instance_index)
        ).mappings()
        assert [{**r, "received_at": r["received_at"].replace(tzinfo=UTC)} for r in view] == sorted(
            instances, key=lambda r: (r["event_id"], r["instance_index"])
        )
        (count,) = conn.execute(select(func.count()).select_from(prediction_requests)).one()
    assert count == 3
    assert [r["event_id"] for r in store.find(refused[0]["request_id"])["rejections"]] == [
        refused[0]["event_id"]
    ]
    assert store.migrate() == 0  # already current
    store.close()


def test_the_command_line_sends_a_version_1_store_to_migrate(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.predlog.cli import main

    version_1_store(sqlite_url)[0].close()
    monkeypatch.setenv("PREDICTION_LOG_URL", sqlite_url)
    assert main(["status"]) == 1
    assert "run `python -m service.predlog migrate`" in capsys.readouterr().err
    assert main(["migrate"]) == 0
    assert "schema version 2 (6 instances moved)" in capsys.readouterr().out
    assert main(["status"]) == 0
