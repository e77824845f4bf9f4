"""A process killed outright loses what its writer held in memory: counted, not silent.

The killed process is real (a child running a writer on a real SQLite store, SIGKILLed); the
process that finds its ledger is a writer in this one.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from service.predlog import ledger as ledgers
from service.predlog.ledger import Ledger
from service.predlog.records import Entry, event_rows
from service.predlog.spool import Spool
from service.predlog.store import Store
from service.predlog.writer import Writer, WriterConfig
from tests.predlog.helpers import prediction_event, rejection_event, row_count
from tests.support import ROOT, wait_until

FAST = WriterConfig(batch_rows=50, flush_interval=0.05, retry_initial=0.05, shutdown_timeout=2)

# A worker whose writer never commits on its own (an hour's interval, a huge batch): what it is
# given stays in memory, or in the spool once its queue (4 rows) is full.
CHILD = textwrap.dedent(
    """
    import sys, time
    from service.predlog.ledger import Ledger
    from service.predlog.spool import Spool
    from service.predlog.store import Store
    from service.predlog.writer import Writer, WriterConfig
    from tests.predlog.helpers import prediction_event, rejection_event

    url, spool_dir = sys.argv[1:3]
    config = WriterConfig(queue_rows=4, batch_rows=10**6, flush_interval=3600)
    writer = Writer(Store(url), Spool(spool_dir, 10**8), config, ledger=Ledger.open(spool_dir))
    writer.start()
    for event in [prediction_event(2), rejection_event(), prediction_event(1)]:
        writer.publish(event)  # queued: 4 rows
    for event in [prediction_event(3), rejection_event()]:
        writer.publish(event)  # the queue is full: spooled by this thread
    print("published", flush=True)
    time.sleep(3600)
    """
)


@pytest.fixture
def killed(tmp_path: Path, sqlite_url: str) -> Iterator[Path]:
    """The spool directory of a writer process that held 3 prediction rows and 1 rejection row
    in memory (and had spooled 4 more rows) when it was SIGKILLed."""
    spool_dir = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, sqlite_url, str(spool_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "published\n"
        # Alive, it holds its ledger: nobody may count its rows as lost.
        assert list(ledgers.collect(spool_dir)) == []
        assert len(list(spool_dir.glob("*.ledger"))) == 1
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        yield spool_dir
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_rows_a_killed_process_held_in_memory_are_counted_as_dropped(
    killed: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(sqlite_url)
    writer = Writer(store, Spool(killed, 10**8), FAST, ledger=Ledger.open(killed))
    writer.start()
    try:
        wait_until(lambda: writer.stats.drops["worker_died"] == 4, timeout=10)
        assert writer.stats.counts["dropped.predictions"] == 3
        assert writer.stats.counts["dropped.rejections"] == 1
        # What the dead process had spooled is not lost: replayed from its segment.
        wait_until(lambda: row_count(store) == 4, timeout=10)
        assert writer.stats.total("replayed") == 4
        # The writer counts the dead process's rows as dropped, then logs them: wait for the line.
        lost = "had 3 predictions row(s) and 1 rejections row(s) in memory"
        wait_until(lambda: lost in caplog.text, timeout=10)
        # Counted once: its ledger is gone, and only this writer's own is left.
        assert [p.name for p in killed.glob("*.ledger")] == [writer.ledger.path.name]  # type: ignore[union-attr]
    finally:
        writer.close()
        store.close()
    assert writer.stats.drops["worker_died"] == 4
    assert not list(killed.glob("*.ledger"))  # a clean close deletes its own


def test_a_process_that_closed_its_log_leaves_nothing_counted_as_lost(
    tmp_path: Path, sqlite_url: str
) -> None:
    spool_dir = tmp_path / "spool"
    first = Writer(Store(sqlite_url), Spool(spool_dir, 10**8), FAST, ledger=Ledger.open(spool_dir))
    first.start()
    for event in [prediction_event(2), rejection_event(), prediction_event(3)]:
        first.publish(event)
    first.close()
    first.store.close()
    assert first.stats.total("written") == 6
    assert not list(spool_dir.glob("*.ledger"))
    second = Writer(Store(sqlite_url), Spool(spool_dir, 10**8), FAST, ledger=Ledger.open(spool_dir))
    second.start()
    second.flush()
    second.close()
    second.store.close()
    assert second.stats.total("dropped") == 0


def test_a_ledger_counts_what_was_taken_and_not_settled(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    events = [prediction_event(5), rejection_event(), prediction_event(2)]
    for event in events:
        ledger.took(event, event_rows(event))
    ledger.settled(events[:2])
    assert ledgers.read(ledger.path) == {"predictions": 2, "rejections": 0}
    ledger.close()
    assert not ledger.path.exists()
    # A second close must not close whatever now has the ledger's descriptor number.
    with open(tmp_path / "other", "wb") as other:
        ledger.close()
        other.write(b"still open")


def test_rows_spooled_at_shutdown_are_not_also_counted_as_lost_when_sealing_fails(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The store hangs past the shutdown timeout, so close() spools what is in memory; sealing
    the spool then fails (an fsync I/O error, or the orchestrator's SIGKILL during a stalled
    fsync). Those rows are in the spool: the worker's ledger must not outlive it counting them
    as in memory, or whoever collects it reports them as lost as well."""
    entered, release = threading.Event(), threading.Event()

    class Hung(Store):
        def write(self, entries: Sequence[Entry]) -> dict[str, int]:
            entered.set()
            release.wait(10)
            return super().write(entries)

    spool_dir = tmp_path / "spool"
    config = WriterConfig(**{**FAST.__dict__, "shutdown_timeout": 0.2})
    spool = Spool(spool_dir, 10**8)
    writer = Writer(Hung(sqlite_url), spool, config, ledger=Ledger.open(spool_dir))
    writer.start()
    writer.publish(prediction_event(2))
    assert entered.wait(5)
    writer.publish(rejection_event())  # queued behind the hung batch

    def fsync_fails() -> None:
        raise OSError(errno.EIO, "Input/output error")

    spool.close = fsync_fails  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError, match="Input/output error"):
            writer.close()
        assert writer.stats.summary()["spooled"] == 3
        assert not list(spool_dir.glob("*.ledger"))
    finally:
        release.set()
        writer._thread.join(5)
        writer.store.close()


DIES_HOLDING_3_ROWS = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from service.predlog.ledger import Ledger
    from tests.predlog.helpers import prediction_event

    Ledger(Path(sys.argv[1])).took(prediction_event(3), 3)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """``directory``'s entries cannot be deleted, by root either, as on a file system remounted
    read-only after disk errors (ext4's errors=remount-ro)."""
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_dead_ledger_that_cannot_be_deleted_is_counted_once_it_can_and_breaks_nothing(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", DIES_HOLDING_3_ROWS, str(spool_dir)], cwd=ROOT)
    assert dead.returncode == -signal.SIGKILL
    ledger = Ledger.open(spool_dir)
    writer = Writer(Store(sqlite_url), Spool(spool_dir, 10**8), FAST, ledger=ledger)
    try:
        with immutable(spool_dir):
            writer.start()
            writer.publish(prediction_event(2))
            writer.flush()
            writer.flush()
            # Not counted while it cannot be deleted (it would be counted again at every look),
            # and the writer's turns go on: written, reported.
            assert writer.stats.drops["worker_died"] == 0
            assert writer.stats.total("written") == 2
            assert "writer turn failed" not in caplog.text
            assert "cannot collect the prediction log ledger" in caplog.text
        wait_until(lambda: writer.stats.drops["worker_died"] == 3, timeout=10)
    finally:
        writer.close()
        writer.store.close()


def test_a_worker_without_a_ledger_of_its_own_still_counts_a_dead_ones(
    killed: Path, sqlite_url: str
) -> None:
    """A worker whose own ledger could not be created (``Ledger.open`` gives None: the disk was
    full when it started, say after the crash that killed its predecessor) still collects the
    dead worker's: a single-worker service would otherwise never report that loss."""
    writer = Writer(Store(sqlite_url), Spool(killed, 10**8), FAST, ledger=None)
    writer.start()
    try:
        wait_until(lambda: writer.stats.drops["worker_died"] == 4, timeout=10)
    finally:
        writer.close()
        writer.store.close()
    assert not list(killed.glob("*.ledger"))
