"""What a worker holds in memory for the log, counted in a file that outlives the worker.

The writer's queue is in memory, off the request path: a worker killed outright (SIGKILL, the
OOM killer, a crash in native code) loses the records it had taken but not yet committed or
spooled, at most about one flush interval of its traffic. Preventing that would put a write on
every request; the loss must at least not be silent. So each worker counts, per table, the rows
it has taken and the rows that have left its memory (written, spooled or dropped: each counted
by the observer there) in a small memory-mapped file in the spool directory. The kernel keeps a
mapped file's pages when the process dies, so the counts survive it.

Layout: ``<host>-<pid>-<random>.ledger``, created locked (an exclusive ``flock`` held for the
worker's life, as for spool segments); four little-endian unsigned 64-bit counters: predictions
taken, predictions settled, rejections taken, rejections settled. A writer that finds a ledger
nobody holds (the kernel drops a dead process's locks) counts each table's difference as dropped
(``worker_died``) and deletes the file (:func:`collect`); a worker that closes its log deletes
its own.

A worker killed between a commit and the count that follows it makes that batch count as lost
although it is in the store: the ledger errs towards reporting a loss, never towards hiding one.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from service.events import Event, PredictionEvent
from service.predlog.records import event_rows

log = logging.getLogger(__name__)

SUFFIX = ".ledger"
TABLES = ("predictions", "rejections")
_COUNTER = struct.Struct("<Q")
_SIZE = _COUNTER.size * 2 * len(TABLES)


def _table(event: Event) -> int:
    return 0 if isinstance(event, PredictionEvent) else 1


class Ledger:
    """This process's counts; thread-safe, cheap enough for the request path (no system call)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        tmp = directory / f".{stem}.tmp"
        self._fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            # Written, not truncated to size: the blocks must exist before the mapping is
            # written, or a full disk would kill the worker (SIGBUS) rather than fail here.
            os.write(self._fd, bytes(_SIZE))
            os.fsync(self._fd)
            self._map = mmap.mmap(self._fd, _SIZE)
            self.path = directory / f"{stem}{SUFFIX}"
            os.rename(tmp, self.path)  # locked before anyone can see it
        except OSError:
            os.close(self._fd)
            tmp.unlink(missing_ok=True)
            raise
        self._counts = [0] * (2 * len(TABLES))
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, directory: str | Path) -> Ledger | None:
        """This process's ledger in ``directory``; None if it cannot be created there (the
        spool cannot be written either, and the writer says so): records still flow."""
        try:
            return cls(Path(directory))
        except OSError as exc:
            log.error(
                "cannot keep the prediction log's ledger in %s (%s): rows lost if this worker is "
                "killed will not be counted",
                directory,
                exc,
            )
            return None

    def took(self, event: Event, rows: int) -> None:
        """``event`` (``rows`` rows) is now in this process's memory."""
        self._add(2 * _table(event), rows)

    def settled(self, events: Iterable[Event]) -> None:
        """``events`` have left this process's memory (each counted as written, spooled or
        dropped)."""
        # Summed first: a writer's batch holds up to hundreds of events, one store per table.
        rows = [0] * len(TABLES)
        for event in events:
            rows[_table(event)] += event_rows(event)
        for table, count in enumerate(rows):
            if count:
                self._add(2 * table + 1, count)

    def _add(self, index: int, rows: int) -> None:
        with self._lock:
            if self._closed:  # a writer thread stuck in the store past shutdown, coming back
                return
            self._counts[index] += rows
            # One aligned 8-byte store: a kill cannot leave half a counter.
            _COUNTER.pack_into(self._map, index * _COUNTER.size, self._counts[index])

    def close(self) -> None:
        """The log closed: everything is written or spooled (and counted); delete the file.
        Idempotent: a second call must not close a descriptor number reused since."""
        with self._lock:
            if self._closed:
                return
            self.path.unlink(missing_ok=True)
            self._closed = True
            self._map.close()
            os.close(self._fd)


def read(path: Path) -> dict[str, int]:
    """Rows taken but never settled, by table, in the ledger at ``path``."""
    data = path.read_bytes()
    if len(data) != _SIZE:
        raise ValueError(f"{len(data)} bytes, not {_SIZE}")
    counts = [_COUNTER.unpack_from(data, i * _COUNTER.size)[0] for i in range(2 * len(TABLES))]
    return {table: max(counts[2 * i] - counts[2 * i + 1], 0) for i, table in enumerate(TABLES)}


def collect(
    directory: str | Path, own: Path | None = None
) -> Iterator[tuple[Path, dict[str, int]]]:
    """Ledgers left by processes that died without closing their log: each one's path and rows
    lost by table; the file is deleted before it is yielded, so that it is counted once.

    A ledger that cannot be read or deleted (a file system remounted read-only after disk
    errors) is skipped, and counted at a later call once it can be: counted without being
    deleted, it would be counted again at every call. Its error is logged once."""
    for path in Path(directory).glob(f"*{SUFFIX}"):
        if path == own:
            continue
        try:
            lost = _take(path)
        except OSError as exc:
            if path not in _uncollectable:
                _uncollectable.add(path)
                log.error(
                    "cannot collect the prediction log ledger %s (%s): the rows its dead process "
                    "held will be counted once it can be deleted",
                    path,
                    exc,
                )
            continue
        if lost is not None:
            _uncollectable.discard(path)
            yield path, lost


# Ledgers whose collection failed, already logged: collect() runs every flush interval.
_uncollectable: set[Path] = set()


def _take(path: Path) -> dict[str, int] | None:
    """The rows lost by the dead process whose ledger is ``path``, deleting it; None if the
    process is alive or another collector took it first. Several collectors never count one
    twice: a ledger is read and deleted only under its lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # collected by another process meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its process is alive
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None  # collected and deleted between our open and our lock
        except FileNotFoundError:
            return None
        try:
            lost = read(path)
        except ValueError as exc:  # damaged (a ledger is renamed into place only once whole)
            log.error("ignoring the damaged prediction log ledger %s: %s", path, exc)
            lost = dict.fromkeys(TABLES, 0)
        path.unlink()
        return lost
    finally:
        os.close(fd)
