"""The writer against real stores: batches, a full queue, a store that fails, hangs, refuses rows
or comes back, the spool cap, and shutdown. Every row is accounted for by the counters."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from service.events import Event
from service.predlog import spool as spool_module
from service.predlog.records import Entry, decode_line, encode_line, event_rows, to_entry
from service.predlog.spool import Spool
from service.predlog.store import SchemaMismatch, Store
from service.predlog.writer import Writer, WriterConfig
from tests.predlog.helpers import (
    TcpProxy,
    concurrently,
    prediction_event,
    rejection_event,
    row_count,
    row_keys,
)
from tests.support import wait_until

FAST = WriterConfig(
    batch_rows=50, flush_interval=0.05, retry_initial=0.05, retry_max=0.2, shutdown_timeout=2
)
MakeWriter = Callable[..., Writer]


@pytest.fixture
def make_writer(tmp_path: Path) -> Iterator[MakeWriter]:
    writers: list[Writer] = []

    def make(url: str, spool_dir: Path | None = None, start: bool = True, **config: Any) -> Writer:
        spool = Spool(spool_dir or tmp_path / "spool", config.pop("spool_max_bytes", 10**8))
        writer = Writer(Store(url), spool, WriterConfig(**{**FAST.__dict__, **config}))
        writers.append(writer)
        if start:
            writer.start()
        return writer

    yield make
    for writer in writers:
        if writer.running:
            writer.close()
        writer.store.close()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    yield proxy
    proxy.close()


def events(n: int) -> list[Event]:
    """A mix: mostly predictions of 1 to 3 instances, every fifth a rejection."""
    return [rejection_event() if i % 5 == 4 else prediction_event(1 + i % 3) for i in range(n)]


def rows_of(published: list[Event]) -> int:
    return sum(event_rows(e) for e in published)


def expected_keys(published: list[Event]) -> tuple[set[tuple[str, int]], set[str]]:
    preds = {
        (e.request.request_id, i)
        for e in published
        if hasattr(e, "instances")
        for i in range(len(e.instances))
    }
    return preds, {e.request.request_id for e in published if not hasattr(e, "instances")}


@contextmanager
def sqlite_write_locked(url: str) -> Iterator[None]:
    """Another connection holds the database's write lock (a backup, a long manual transaction)."""
    conn = sqlite3.connect(make_url(url).database or "", isolation_level=None, timeout=0)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_events_are_committed_in_batches(store_url: str, make_writer: MakeWriter) -> None:
    writer = make_writer(store_url, flush_interval=0.2)
    commits = []
    event.listen(writer.store.engine, "commit", lambda conn: commits.append(1))
    published = events(250)
    parts = [published[i::4] for i in range(4)]  # four request threads
    concurrently(lambda part: [writer.publish(e) for e in part], parts)
    writer.flush()
    assert row_keys(writer.store) == expected_keys(published)
    assert writer.stats.total("written") == rows_of(published) == 450
    assert writer.stats.total("spooled") == 0
    assert len(commits) <= 20  # 450 rows in batches of about 50, not 250 transactions


def test_a_locked_sqlite_store_neither_blocks_nor_loses(
    sqlite_url: str, make_writer: MakeWriter
) -> None:
    writer = make_writer(f"{sqlite_url}?timeout=0.3", queue_rows=40)
    with sqlite_write_locked(sqlite_url):
        # Publishing completes while the store cannot take a single row: the request path never
        # waits for it (if it did, this loop would hang until the lock is released).
        published = events(300)
        for e in published:
            writer.publish(e)
        assert writer.stats.total("spooled") > 0  # the full queue spilled from this thread
        writer.flush()
        assert writer.stats.total("written") == 0
        assert writer.stats.up is False
    wait_until(lambda: writer.stats.total("replayed") == writer.stats.total("spooled"))
    writer.flush()
    assert row_keys(writer.store) == expected_keys(published)
    stats = writer.stats
    assert stats.total("written") + stats.total("spooled") == rows_of(published)
    assert stats.total("dropped") == 0
    assert stats.failures["write"] + stats.failures["connect"] > 0
    assert stats.up is True
    assert writer.spool.segments() == []


class Transitions:
    """An extra observer recording the store's ups and downs, as a metrics backend would."""

    def __init__(self) -> None:
        self.ups: list[bool] = []

    def store_up(self, up: bool) -> None:
        if not self.ups or self.ups[-1] != up:
            self.ups.append(up)

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None


def test_postgresql_cut_off_mid_load(
    postgresql_url: str, proxy: TcpProxy, make_writer: MakeWriter, tmp_path: Path
) -> None:
    transitions = Transitions()
    store = Store(proxy.url_for(postgresql_url))
    writer = Writer(store, Spool(tmp_path / "spool", 10**8), FAST, transitions)
    writer.start()
    published = events(600)
    for i, e in enumerate(published):
        writer.publish(e)
        if i == 150:
            proxy.cut()  # connection refused, open connections reset
        if i == 450:
            proxy.restore()
        time.sleep(0.002)
    writer.flush()  # every event written or spooled; then the spool replayed
    wait_until(lambda: writer.stats.up and not writer.spool.segments())
    writer.close()
    store.close()
    direct = Store(postgresql_url)
    assert row_keys(direct) == expected_keys(published)
    direct.close()
    stats = writer.stats
    assert stats.total("spooled") > 0
    # A batch whose commit reached PostgreSQL just before the cut but whose answer was lost is
    # spooled, then found in the store by the replay and not counted as replayed
    # (docs/prediction-log.md, "Counters"):
    # at most the one batch the writer had in flight at the cut.
    spooled, replayed = stats.total("spooled"), stats.total("replayed")
    assert spooled - FAST.batch_rows <= replayed <= spooled
    assert stats.total("written") + stats.total("spooled") == rows_of(published)
    assert stats.total("dropped") == 0
    assert sum(stats.failures.values()) > 0
    assert transitions.ups == [True, False, True]


def test_a_store_down_at_startup_is_not_fatal(
    postgresql_url: str, proxy: TcpProxy, make_writer: MakeWriter
) -> None:
    proxy.cut()
    writer = make_writer(proxy.url_for(postgresql_url))
    assert writer.stats.up is False
    published = events(40)
    for e in published:
        writer.publish(e)
    writer.flush()
    assert writer.stats.total("spooled") == rows_of(published)
    assert writer.stats.age > 0  # the oldest unwritten record is waiting
    assert writer.stats.spool_size > 0
    proxy.restore()
    wait_until(lambda: writer.stats.total("replayed") == rows_of(published))
    writer.flush()
    assert row_keys(writer.store) == expected_keys(published)
    assert (writer.stats.age, writer.stats.depth) == (0, 0)


def test_an_idle_writer_notices_the_store_going_down_and_coming_back(
    postgresql_url: str, proxy: TcpProxy, make_writer: MakeWriter
) -> None:
    # No traffic at night: on-call still learns the store is down (prediction_log_store_up)
    # before the morning's requests are spooled.
    writer = make_writer(proxy.url_for(postgresql_url), idle_probe_seconds=0.2)
    assert writer.stats.up is True
    proxy.cut()
    wait_until(lambda: writer.stats.up is False, timeout=10)
    assert writer.stats.failures["connect"] >= 1
    proxy.restore()
    wait_until(lambda: writer.stats.up is True, timeout=10)
    assert writer.stats.total("spooled") == 0  # nothing was published


def test_a_busy_writer_does_not_probe(store_url: str, make_writer: MakeWriter) -> None:
    writer = make_writer(store_url, idle_probe_seconds=2.0)
    writer.publish(prediction_event(1, "first"))
    writer.flush()  # the first write's one-time costs, before the timed loop
    probes: list[float] = []
    probe = writer.store.probe
    writer.store.probe = lambda: (probes.append(time.monotonic()), probe())[1]  # type: ignore[method-assign]
    deadline = time.monotonic() + 3.0
    for i in itertools.count():
        if time.monotonic() > deadline:
            break
        writer.publish(prediction_event(1, f"busy-{i}"))
        writer.flush()
    assert probes == []  # each write says the store answers
    wait_until(lambda: bool(probes), timeout=10)  # idle: asked


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "service.predlog.writer"
        and r.levelno >= logging.WARNING
        and "unavailable" in r.getMessage()
    ]


def test_a_search_path_schema_that_does_not_exist_is_named_and_waited_for(
    missing_schema: tuple[str, str],
    postgres_admin: Engine,
    make_writer: MakeWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, schema = missing_schema
    with caplog.at_level(logging.WARNING):
        writer = make_writer(url)  # not fatal: the service keeps answering
        assert writer.stats.up is False
        published = events(40)
        for e in published:
            writer.publish(e)
        writer.flush()
        assert writer.stats.total("spooled") == rows_of(published)
        wait_until(lambda: writer.stats.failures["connect"] >= 4)  # retried, and retried
        writer.flush()
    # One warning for the outage, not one per retry; it names the schema and the fix.
    (warning,) = outage_warnings(caplog)
    assert f'schema "{schema}" of the search path (search_path={schema}) does not exist' in warning
    assert f"CREATE SCHEMA {schema};" in warning
    assert "correct search_path in the store URL (PREDICTION_LOG_URL)" in warning
    assert writer.stats.up is False

    with postgres_admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    wait_until(lambda: writer.stats.total("replayed") == rows_of(published))
    writer.flush()
    assert writer.stats.up is True
    assert row_keys(writer.store) == expected_keys(published)
    assert row_count(writer.store) == rows_of(published)  # each record once
    stats = writer.stats
    assert (stats.total("written"), stats.total("dropped")) == (0, 0)
    assert stats.total("spooled") == stats.total("replayed") == rows_of(published)
    assert writer.spool.segments() == []


def test_a_store_down_for_many_retries_is_logged_once_per_outage(
    postgresql_url: str, proxy: TcpProxy, make_writer: MakeWriter, caplog: pytest.LogCaptureFixture
) -> None:
    def logged_over_retries() -> int:
        """Outage lines logged once the outage is under way; asserts that retries add none."""
        retries = writer.stats.failures["connect"]
        # A failure is counted before its line is logged, and the next one after it: count the
        # lines once the failure after the first two is counted, so that theirs are out.
        wait_until(lambda: writer.stats.failures["connect"] >= retries + 3)
        logged = len(outage_warnings(caplog))
        wait_until(lambda: writer.stats.failures["connect"] >= retries + 7)
        assert len(outage_warnings(caplog)) == logged
        return logged

    proxy.cut()
    with caplog.at_level(logging.WARNING):
        writer = make_writer(proxy.url_for(postgresql_url))
        # One line per cause (the proxy may first reset a connection, then refuse them).
        first = logged_over_retries()
        assert first in (1, 2)
        proxy.restore()
        # The writer marks the store up, then logs that it answers: wait for both.
        wait_until(lambda: writer.stats.up)
        wait_until(lambda: any("answers" in r.getMessage() for r in caplog.records))
        proxy.cut()  # a second outage is logged again
        writer.publish(prediction_event())
        wait_until(lambda: not writer.stats.up)
        assert logged_over_retries() - first in (1, 2)


def test_a_log_location_that_cannot_be_written_counts_drops_then_recovers(
    tmp_path: Path, make_writer: MakeWriter, caplog: pytest.LogCaptureFixture
) -> None:
    """A volume missing or read-only at start (here a file where the directories must go: root
    may write anywhere): the log starts, drops and counts, and writes once the location is."""
    volume = tmp_path / "volume"
    volume.write_text("not a directory")
    writer = make_writer(f"sqlite:///{volume}/log/predictions.db", spool_dir=volume / "spool")
    assert writer.stats.up is False
    lost = events(20)
    for e in lost:
        writer.publish(e)
    with caplog.at_level(logging.ERROR):
        writer.flush()
    assert writer.stats.drops["spool_full"] == rows_of(lost)
    dropping = [r.getMessage() for r in caplog.records if "dropping rows" in r.getMessage()]
    assert dropping
    assert all("cannot be written" in m and "is full" not in m for m in dropping)
    volume.unlink()  # the volume is mounted, or made writable
    wait_until(lambda: writer.stats.up)
    kept = events(20)
    for e in kept:
        writer.publish(e)
    writer.flush()
    assert row_keys(writer.store) == expected_keys(kept)


def test_spool_over_its_cap_counts_every_drop(
    sqlite_url: str, make_writer: MakeWriter, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(f"{sqlite_url}?timeout=0.1", spool_max_bytes=20_000)
    published = [prediction_event(2) for _ in range(100)]  # about 2.5 kB per spool line
    with sqlite_write_locked(sqlite_url), caplog.at_level(logging.ERROR):
        for e in published:
            writer.publish(e)
        writer.flush()
        stats = writer.stats
        assert stats.drops["spool_full"] > 0
        assert stats.total("spooled") + stats.total("dropped") == rows_of(published)
        assert "is full" in caplog.text
    wait_until(lambda: writer.stats.total("replayed") == writer.stats.total("spooled"))
    writer.flush()
    assert row_count(writer.store) == rows_of(published) - writer.stats.total("dropped")


def test_a_row_the_store_refuses_is_set_aside_and_the_others_written(
    sqlite_url: str, make_writer: MakeWriter
) -> None:
    writer = make_writer(sqlite_url)
    with writer.store.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON prediction_requests "
                "WHEN NEW.request_id = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END"
            )
        )
    published = [*events(30), prediction_event(2, request_id="bad"), *events(30)]
    for e in published:
        writer.publish(e)
    writer.flush()
    good = [e for e in published if e.request.request_id != "bad"]
    assert row_keys(writer.store) == expected_keys(good)
    assert writer.stats.drops["refused"] == 2
    (quarantined,) = (writer.spool.directory / "quarantine").iterdir()
    assert "refused by a constraint" in quarantined.read_text()
    assert writer.stats.up is True


def test_shutdown_with_the_store_down_leaves_a_spool_the_next_process_replays(
    postgresql_url: str, proxy: TcpProxy, make_writer: MakeWriter, tmp_path: Path
) -> None:
    first = make_writer(proxy.url_for(postgresql_url), tmp_path / "spool")
    proxy.cut()
    published = events(50)
    for e in published:
        first.publish(e)
    first.close()
    assert first.stats.total("spooled") == rows_of(published)
    assert len(first.spool.segments()) == 1
    proxy.restore()
    second = make_writer(proxy.url_for(postgresql_url), tmp_path / "spool")
    wait_until(lambda: second.stats.total("replayed") == rows_of(published))
    assert row_keys(second.store) == expected_keys(published)
    # The writer counts a segment's last batch replayed, then deletes the segment on its next
    # turn, once the segment's read comes to its end: wait for that too.
    wait_until(lambda: second.spool.segments() == [])


def test_shutdown_with_a_hung_store_is_bounded_and_loses_nothing(
    postgresql_url: str, proxy: TcpProxy, make_writer: MakeWriter, tmp_path: Path
) -> None:
    writer = make_writer(proxy.url_for(postgresql_url), tmp_path / "spool", shutdown_timeout=1)
    before = events(10)
    for e in before:
        writer.publish(e)
    writer.flush()
    proxy.pause()  # the server stops answering, connections stay open
    after = events(10)
    for e in after:
        writer.publish(e)
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 10  # shutdown_timeout + 1 s join, plus slack
    assert writer.running  # stuck in the store; its batch was spooled by close()
    assert writer.spool.segments()
    proxy.resume()
    replayer = make_writer(postgresql_url, tmp_path / "spool")
    wait_until(lambda: not replayer.spool.segments())
    assert row_keys(replayer.store) == expected_keys(before + after)


def test_a_hung_store_shows_in_the_backlog_age_and_queue_depth(
    postgresql_url: str, proxy: TcpProxy, make_writer: MakeWriter, tmp_path: Path
) -> None:
    # The writer thread reports between turns; stuck in a store that does not answer, it
    # cannot. The lag must show all the same (PredictionLogLagging, the lag panel), not the 0
    # of its last report.
    writer = make_writer(proxy.url_for(postgresql_url), tmp_path / "spool", shutdown_timeout=1)
    writer.publish(events(1)[0])
    writer.flush()
    assert (writer.stats.age, writer.stats.depth) == (0, 0)
    proxy.pause()  # the server stops answering, connections stay open
    published = events(60)  # more than a batch: one batch in flight, the rest queued
    for e in published:
        writer.publish(e)
    wait_until(lambda: writer.stats.age >= 2, timeout=10, interval=0.1)
    assert 0 < writer.stats.depth < rows_of(published)
    proxy.resume()
    wait_until(lambda: (writer.stats.age, writer.stats.depth) == (0, 0), timeout=10)
    writer.flush()
    assert writer.stats.total("written") == rows_of(published) + 1


def test_a_store_of_another_schema_version_fails_startup_loudly(
    store_url: str, make_writer: MakeWriter
) -> None:
    store = Store(store_url)
    store.ensure_schema()
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE predlog_schema_version SET version = 999"))
    store.close()
    with pytest.raises(SchemaMismatch, match="999"):
        make_writer(store_url)


def test_an_observer_that_raises_breaks_nothing(sqlite_url: str, tmp_path: Path) -> None:
    class Broken:
        def __getattr__(self, name: str) -> Callable[..., None]:
            def fail(*args: object) -> None:
                raise RuntimeError("metrics backend bug")

            return fail

    writer = Writer(Store(sqlite_url), Spool(tmp_path / "spool", 10**8), FAST, Broken())
    writer.start()
    published = events(20)
    for e in published:
        writer.publish(e)
    writer.close()
    assert row_keys(writer.store) == expected_keys(published)
    assert writer.stats.total("written") == rows_of(published)
    writer.store.close()


def test_under_sustained_load_the_spool_is_still_replayed_and_reported_once_per_interval(
    sqlite_url: str, make_writer: MakeWriter, tmp_path: Path
) -> None:
    # A segment another process left behind.
    left = Spool(tmp_path / "spool", 10**8)
    backlog = events(40)
    left.append([to_entry(e) for e in backlog])
    left.close()
    writer = make_writer(sqlite_url, tmp_path / "spool", batch_rows=20, flush_interval=0.2)
    scans = []
    scan = writer.spool.scan
    writer.spool.scan = lambda: scans.append(1) or scan()  # type: ignore[method-assign]
    writer.flush()
    scans.clear()
    turns_before = writer._turns
    published: list[Event] = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # every event a full batch: each one wakes the writer
        published.append(prediction_event(20))
        writer.publish(published[-1])
        time.sleep(0.005)
    writer.flush()
    turns = writer._turns - turns_before
    assert writer.stats.total("replayed") == rows_of(backlog)
    assert row_keys(writer.store) == expected_keys(backlog + published)
    # The gauges (spool size, backlog age) were reported all along, about every 0.2 s, not on
    # each of the turns a full batch started.
    assert 4 <= len(scans) <= 1.5 / 0.2 + 4
    assert turns >= 3 * len(scans)


def test_a_long_replay_scans_the_spool_once_per_interval_not_after_each_batch(
    sqlite_url: str, make_writer: MakeWriter, tmp_path: Path
) -> None:
    # A replay polls the queue between its batches instead of waiting a flush interval; the
    # housekeeping (report, spool scan) must still come once per interval, or a spool of hours
    # of outage is scanned after each of its batches.
    left = Spool(tmp_path / "spool", 10**8)
    backlog = [rejection_event() for _ in range(30)]
    left.append([to_entry(e) for e in backlog])
    left.close()
    writer = make_writer(
        sqlite_url, tmp_path / "spool", start=False, batch_rows=1, flush_interval=3600
    )
    scans = []
    scan = writer.spool.scan
    writer.spool.scan = lambda: scans.append(1) or scan()  # type: ignore[method-assign]
    writer.start()
    writer.flush()  # a turn now, not in an hour: its housekeeping finds the segment
    wait_until(lambda: not writer.spool.segments())
    assert writer.stats.total("replayed") == 30  # 30 batches, one after the other
    assert len(scans) == 1  # by that first turn only


def test_a_line_that_is_not_an_entry_is_dropped_and_the_lines_after_it_replayed(
    sqlite_url: str, make_writer: MakeWriter, tmp_path: Path
) -> None:
    body = orjson.dumps({"v": 2, "table": "rejections", "rows": [{"received_at": "not a time"}]})
    bad = b"%08x %s\n" % (zlib.crc32(body), body)
    good = [rejection_event() for _ in range(5)]
    lines = [encode_line(to_entry(e)) for e in good]
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "left-1-0000.spool").write_bytes(lines[0] + bad + b"".join(lines[1:]))
    writer = make_writer(sqlite_url, tmp_path / "spool", batch_rows=1)
    wait_until(lambda: not writer.spool.segments())
    writer.flush()
    assert row_keys(writer.store) == expected_keys(good)
    assert writer.stats.total("replayed") == 5
    assert writer.stats.counts["dropped.unknown"] == 1


def test_a_replay_cut_short_by_a_bug_keeps_its_segment_for_the_next_try(
    sqlite_url: str, make_writer: MakeWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    left = Spool(tmp_path / "spool", 10**8)
    backlog = [rejection_event() for _ in range(5)]
    left.append([to_entry(e) for e in backlog])
    left.close()
    calls = 0

    def fails_once(line: bytes) -> Entry:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("a bug")
        return decode_line(line)

    monkeypatch.setattr(spool_module, "decode_line", fails_once)
    writer = make_writer(sqlite_url, tmp_path / "spool", batch_rows=1)
    wait_until(lambda: not writer.spool.segments())
    writer.flush()
    assert row_keys(writer.store) == expected_keys(backlog)
    assert writer.stats.total("dropped") == 0


class _FailsOnce(Store):
    """Fails (as a store that went away) the first write holding a request of ``request_id``
    (``alone``: holding only that request)."""

    def __init__(self, url: str, request_id: str, alone: bool = False) -> None:
        super().__init__(url)
        self.request_id = request_id
        self.alone = alone
        self.failed = False

    def write(self, entries: Sequence[Entry]) -> dict[str, int]:
        hit = any(e.rows[0]["request_id"] == self.request_id for e in entries)
        if not self.failed and hit and (len(entries) == 1 or not self.alone):
            self.failed = True
            raise OperationalError("INSERT", {}, Exception("connection lost"))
        return super().write(entries)


def test_a_replay_cut_short_and_started_again_counts_each_record_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    left = Spool(tmp_path / "spool", 10**8)
    backlog = [prediction_event(1 + i % 3, request_id=f"r{i}") for i in range(12)]
    left.append([to_entry(e) for e in backlog])
    left.close()
    config = WriterConfig(**{**FAST.__dict__, "batch_rows": 4})
    writer = Writer(_FailsOnce(sqlite_url, "r7"), Spool(tmp_path / "spool", 10**8), config)
    writer.start()
    try:
        wait_until(lambda: not writer.spool.segments())
        writer.flush()
        assert row_keys(writer.store) == expected_keys(backlog)
        assert writer.stats.total("replayed") == rows_of(backlog)
    finally:
        writer.close()
        writer.store.close()


def test_a_refused_row_met_again_by_a_replay_started_again_is_dropped_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    # The batch is refused, then written entry by entry: the store goes away after the refusal.
    store = _FailsOnce(sqlite_url, "last", alone=True)
    store.ensure_schema()
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON prediction_requests "
                "WHEN NEW.request_id = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END"
            )
        )
    left = Spool(tmp_path / "spool", 10**8)
    names = ["a", "bad", "b", "c", "last", "z"]
    backlog = [prediction_event(2, request_id=name) for name in names]
    left.append([to_entry(e) for e in backlog])
    left.close()
    writer = Writer(store, Spool(tmp_path / "spool", 10**8), FAST)
    writer.start()
    try:
        wait_until(lambda: not writer.spool.segments())
        writer.flush()
        assert store.failed
        good = [e for e in backlog if e.request.request_id != "bad"]
        assert row_keys(store) == expected_keys(good)
        assert writer.stats.total("replayed") == rows_of(good)
        assert writer.stats.drops["refused"] == 2
        (quarantined,) = (tmp_path / "spool" / "quarantine").iterdir()
        assert quarantined.read_bytes().count(b"\n") == 1
    finally:
        writer.close()
        store.close()


def test_after_close_spooled_what_a_hung_store_held_the_writer_thread_leaves_it_alone(
    sqlite_url: str, tmp_path: Path
) -> None:
    entered, release = threading.Event(), threading.Event()

    class Hung(Store):
        def write(self, entries: Sequence[Entry]) -> dict[str, int]:
            entered.set()
            release.wait(10)  # a lock held by another process, a stalled disk
            return super().write(entries)

    config = WriterConfig(**{**FAST.__dict__, "shutdown_timeout": 0.2})
    writer = Writer(Hung(sqlite_url), Spool(tmp_path / "spool", 10**8), config)
    writer.start()
    published = events(3)
    for e in published:
        writer.publish(e)
    assert entered.wait(30)
    writer.close()
    assert writer.running
    (segment,) = writer.spool.segments()
    release.set()  # the hung commit goes through after all
    writer._thread.join(30)
    assert not writer.running
    # Spooled once, by close(); the writer thread neither counted its commit nor replayed the
    # segment close() had just sealed.
    assert writer.stats.summary()["spooled"] == rows_of(published)
    assert writer.stats.total("written") == writer.stats.total("replayed") == 0
    assert writer.spool.segments() == [segment]
    assert row_keys(writer.store) == expected_keys(published)
    writer.store.close()
