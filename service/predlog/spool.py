"""A local append-only spool for log entries the store could not take (yet).

Layout of ``PREDICTION_LOG_SPOOL_DIR``::

    <host>-<pid>-<random>.spool   segments: one line per entry (see records.encode_line)
    quarantine/<host>-<pid>.jsonl entries the store refused as data (kept for inspection)

Several processes (BentoML workers, and replicas if they share the directory) use one
directory. Ownership is an exclusive ``flock`` on the segment file:

- a process appends only to its own *active* segment, which it created and keeps locked; the
  segment is created under a temporary name and renamed once locked, so nobody sees it unlocked;
- it *seals* the segment (fsync, close, which releases the lock) when the store comes back or at
  shutdown, and starts a new one on the next append;
- any process *claims* an unlocked segment (sealed, or left by a process that died: the kernel
  drops a dead process's locks) to replay it, and deletes it once every entry is committed. A
  replay cut short leaves the file for the next claim; entries committed twice are ignored by the
  store (primary keys).

Durability: each append is one ``write()`` of whole lines, so a process crash loses nothing that
was appended; the writer fsyncs the active segment every turn (at least once per flush interval),
so a power loss can lose at most that interval. A line torn by a crash fails its checksum and is
counted as dropped (``corrupt``) at replay.

Size cap: when the directory holds ``max_bytes`` or more, further entries are refused and
returned to the caller, which counts them as dropped; so are entries the disk cannot take (full,
unwritable), after the partial write is cut off. The size is rescanned when the writer reports
(about once per flush interval) and tracked between scans, so it is approximate by what other
processes appended meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

from service.predlog.records import CorruptLine, Entry, decode_line, encode_line

log = logging.getLogger(__name__)

SUFFIX = ".spool"
QUARANTINE = "quarantine"


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class _Active:
    """This process's segment being appended to."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)  # an operator may have removed it
        stem = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        tmp = directory / f".{stem}.tmp"
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.path = directory / f"{stem}{SUFFIX}"
        os.rename(tmp, self.path)
        self.size = 0
        self.oldest: datetime | None = None
        self.dirty = False

    def write(self, data: bytes) -> None:
        """Append whole lines, or nothing: a failed write (disk full) is cut off again."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            os.ftruncate(self.fd, self.size)
            raise
        self.size += len(data)
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            os.fsync(self.fd)
            self.dirty = False

    def close(self) -> None:
        self.sync()
        os.close(self.fd)


class Claimed:
    """A segment this process holds for replay: read it, then :meth:`done` or :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def batches(self, rows: int) -> Iterator[tuple[list[Entry], int]]:
        """Entries in order, grouped to about ``rows`` rows, with the count of corrupt lines
        met since the previous batch."""
        batch: list[Entry] = []
        size = corrupt = 0
        with open(os.dup(self._fd), "rb") as file:
            file.seek(0)
            for line in file:
                try:
                    entry = decode_line(line)
                except CorruptLine as exc:
                    log.error("%s: skipping a damaged spool line (%s)", self.path.name, exc)
                    corrupt += 1
                    continue
                batch.append(entry)
                size += entry.records
                if size >= rows:
                    yield batch, corrupt
                    batch, size, corrupt = [], 0, 0
        if batch or corrupt:
            yield batch, corrupt

    def done(self) -> None:
        """Every entry is in the store: delete the segment."""
        self.path.unlink(missing_ok=True)
        os.close(self._fd)

    def release(self) -> None:
        """Give the segment back, for a later replay."""
        os.close(self._fd)


class Spool:
    """The spool directory as seen by one process; thread-safe."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        try:
            (self.directory / QUARANTINE).mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only, full: the service still answers, appends are refused
            log.error(
                "cannot create the prediction log spool %s (%s); records the store cannot take "
                "are dropped and counted until it can be written",
                self.directory,
                exc,
            )
        self._lock = threading.Lock()
        # Why the last append was refused although the spool had room (None: it was not).
        self.write_error: OSError | None = None
        self._active: _Active | None = None
        self._sealed: dict[Path, datetime] = {}  # own sealed segments -> their oldest entry
        self._size = self.scan()

    # Appending (writer thread, and the worker's event loop when the queue is full)

    def append(self, entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
        """Append ``entries``; returns (spooled, refused because the spool is full)."""
        lines = [encode_line(e) for e in entries]
        kept: list[Entry] = []
        refused: list[Entry] = []
        data: list[bytes] = []
        with self._lock:
            self.write_error = None  # a refusal for lack of room must not report an old error
            size = self._size
            for entry, line in zip(entries, lines, strict=True):
                if size + len(line) > self.max_bytes:
                    refused.append(entry)
                else:
                    kept.append(entry)
                    data.append(line)
                    size += len(line)
            if data:
                try:
                    if self._active is None:
                        self._active = _Active(self.directory)
                    self._active.write(b"".join(data))
                except OSError as exc:  # disk full, directory unwritable: refused like a full spool
                    self.write_error = exc  # the writer logs it, at most once per 10 s
                    return [], entries
                if self._active.oldest is None:
                    self._active.oldest = min(e.received_at for e in kept)
                self._size = size
        return kept, refused

    def sync(self) -> None:
        """fsync what was appended since the last sync."""
        with self._lock:
            if self._active is not None:
                self._active.sync()

    def seal(self) -> None:
        """Close the active segment so that it can be claimed for replay."""
        with self._lock:
            if self._active is not None:
                self._active.close()
                self._sealed[self._active.path] = self._active.oldest or datetime.now(UTC)
                self._active = None

    def close(self) -> None:
        self.seal()

    def has_active(self) -> bool:
        return self._active is not None

    # Replaying

    def segments(self) -> list[Path]:
        """Every segment in the directory, oldest name first (claimable or not)."""
        found: list[tuple[float, Path]] = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            # A segment may be replayed and deleted by another process meanwhile.
            with contextlib.suppress(FileNotFoundError):
                found.append((path.stat().st_mtime, path))
        return [path for _, path in sorted(found)]

    def claim(self) -> Claimed | None:
        """Lock a segment nobody holds (sealed, or left by a dead process); None if none."""
        own = self._active.path if self._active is not None else None
        for path in self.segments():
            if path == own:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # replayed and deleted by another process meanwhile
            if _lock(fd):
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    self._sealed.pop(path, None)
                    return Claimed(path, fd)
            os.close(fd)
        return None

    # Sizes and ages

    def scan(self) -> int:
        """Bytes in the directory now (all processes' segments and the quarantine)."""
        total = 0
        for directory in (self.directory, self.directory / QUARANTINE):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # not made yet
                for path in directory.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        if path.is_file():
                            total += path.stat().st_size
        with self._lock:
            self._size = total
        return total

    @property
    def size(self) -> int:
        return self._size

    def oldest(self) -> datetime | None:
        """Oldest entry this process spooled that is still waiting for replay."""
        with self._lock:
            for path in [p for p in self._sealed if not p.exists()]:
                del self._sealed[path]  # replayed by another process
            times = list(self._sealed.values())
            if self._active is not None and self._active.oldest is not None:
                times.append(self._active.oldest)
        return min(times, default=None)

    # Quarantine

    def quarantine(self, entry: Entry, error: BaseException) -> bool:
        """Keep an entry the store refused as data, with the reason, out of the replay path;
        False if it was kept already (by any process: a replay cut short and started again
        meets the same refused entry)."""
        directory = self.directory / QUARANTINE
        path = directory / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        record = {
            "error": f"{type(error).__name__}: {error}"[:2000],
            "line": encode_line(entry).decode(),
        }
        ids = [row["event_id"].encode() for row in entry.rows]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with self._lock:
                # Refusals are rare and event ids unique: a plain search of the files will do.
                for kept in directory.glob("*.jsonl"):
                    with contextlib.suppress(FileNotFoundError):
                        data = kept.read_bytes()
                        if ids and all(i in data for i in ids):
                            return False
                with open(path, "ab") as file:
                    file.write(orjson.dumps(record) + b"\n")
        except OSError as exc:  # the row is counted as dropped either way
            log.error("cannot write to the spool's quarantine %s: %s", path, exc)
        return True
