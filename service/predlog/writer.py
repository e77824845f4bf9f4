"""The background writer: a bounded queue in front of the store, with the spool behind it.

Request path: :meth:`Writer.publish` appends the event to an in-memory queue bounded in rows and
returns. Only when the queue is full does the caller itself, on the worker's event loop, convert
the event and append it to the spool (one ``write()`` to a local file, fsynced by the writer thread
later), so nothing is lost and nothing waits on the store.

Writer thread, once per flush interval or as soon as a batch's worth of rows is queued:

1. take the queued events, convert them to entries (records.to_entry) and commit them in batches
   of about ``batch_rows`` rows, one transaction each;
2. if the store fails, spool the batch, mark the store down and retry with exponential backoff
   (``retry_initial`` doubling to ``retry_max``); meanwhile every batch goes straight to the spool.
   A retry re-checks the schema, so a store that came back empty is recreated. The outage is
   logged once per cause (a WARNING with the store's reason, e.g. that the schema named in the
   PostgreSQL search path does not exist, and how to fix it), not once per retry;
3. while the store is up, replay spooled segments (its own and those of any process sharing the
   spool directory) a batch per turn, interleaved with live batches;
4. fsync the spool; then the housekeeping: probe a store idle for ``idle_probe_seconds``, count
   the rows of processes that died holding them in memory (:func:`ledger.collect`), and report
   the gauges (queue depth, spool size, oldest unwritten record age).

Looking for segments to replay and the housekeeping read the spool directory. Under load the
thread turns whenever a batch fills (tens of times a second per worker); such turns do them at
most once per flush interval. Turns started by the timer, ``flush()`` or ``close()`` always do.
A turn stuck in a store that hangs reports nothing: a watch thread then reports the queue depth
and the backlog age instead, every ``WATCH_SECONDS`` or flush interval, whichever is longer
(:meth:`Writer._watch`).

If the store refuses a batch as data (a constraint or type error: retrying cannot help), the batch
is retried entry by entry and only the refused entries are set aside (spool quarantine, counted as
dropped ``refused``), so one bad row never holds up the others.

:meth:`Writer.close` (worker shutdown): the thread drains the queue to the store, or to the spool
when the store is down or ``shutdown_timeout`` has passed, fsyncs and seals the spool. If the
store hangs beyond the timeout, the closing thread spools whatever is still in memory itself; the
writer thread, should the store answer later, neither counts, spools nor replays anything more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from service.events import Event, PredictionEvent
from service.predlog import ledger as ledgers
from service.predlog.ledger import Ledger
from service.predlog.observer import CountingObserver, LogObserver, Observers, Operation
from service.predlog.records import Entry, event_rows, to_entry
from service.predlog.spool import Claimed, Spool
from service.predlog.store import SchemaMismatch, Store, is_refusal

log = logging.getLogger(__name__)
# How much longer than shutdown_timeout close() waits for the writer thread to finish its turn:
# part of the worst-case shutdown (docs/deployment.md, Shutdown).
CLOSE_MARGIN_SECONDS = 1.0
# Longest a turn stuck in the store goes without the backlog being reported.
WATCH_SECONDS = 1.0
# What ended the writer's wait: a full batch queued, wake() (flush, close), or neither.
Wakeup = Literal["rows", "wake", "timeout"]


@dataclass(frozen=True)
class WriterConfig:
    queue_rows: int = 10_000
    batch_rows: int = 500
    flush_interval: float = 0.5
    retry_initial: float = 0.5
    retry_max: float = 30.0
    shutdown_timeout: float = 10.0
    # An idle writer asks the store whether it still answers after this long without a word
    # from it: without writes, a store gone down would show on prediction_log_store_up (and
    # PredictionLogStoreDown) only once traffic came back and was spooled.
    idle_probe_seconds: float = 30.0


class _EventQueue:
    """FIFO of events bounded by the rows they will become; wakes the writer at ``wake_rows``."""

    def __init__(self, capacity_rows: int, wake_rows: int) -> None:
        self._items: deque[tuple[Event, int]] = deque()
        self._capacity = capacity_rows
        self._wake_rows = wake_rows
        self._rows = 0
        self._woken = False
        self._by_rows = False  # the last wake-up was a full batch, not wake() or a timeout
        self._cond = threading.Condition(threading.Lock())

    def offer(self, event: Event, rows: int) -> bool:
        with self._cond:
            # An event larger than the whole queue is still taken when the queue is empty.
            if self._items and self._rows + rows > self._capacity:
                return False
            self._items.append((event, rows))
            self._rows += rows
            if self._rows >= self._wake_rows and not self._woken:
                self._woken = self._by_rows = True
                self._cond.notify()
        return True

    def take(self, max_rows: int) -> list[Event]:
        """At least one event if any is queued, up to ``max_rows`` rows."""
        taken: list[Event] = []
        with self._cond:
            rows = 0
            while self._items and (not taken or rows + self._items[0][1] <= max_rows):
                event, n = self._items.popleft()
                taken.append(event)
                rows += n
            self._rows -= rows
        return taken

    def wait(self, timeout: float) -> Wakeup:
        """Until woken or ``timeout`` (none at all if 0): what ended the wait."""
        with self._cond:
            if not self._woken and timeout > 0:
                self._cond.wait(timeout)
            woken: Wakeup = "timeout" if not self._woken else "rows" if self._by_rows else "wake"
            self._woken = self._by_rows = False
        return woken

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._by_rows = False
            self._cond.notify()

    @property
    def rows(self) -> int:
        return self._rows

    def oldest(self) -> datetime | None:
        with self._cond:
            return self._items[0][0].request.received_at if self._items else None


def _by_table(entries: list[Entry]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for entry in entries:
        rows[entry.table] = rows.get(entry.table, 0) + entry.records
    return rows


class Writer:
    """Moves events from the request path to the store; one per process."""

    def __init__(
        self,
        store: Store,
        spool: Spool,
        config: WriterConfig = WriterConfig(),
        observer: LogObserver | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.config = config
        # Counts what this process holds in memory (see ledger.py); None when it could not be
        # created, or in a process that serves nothing (the replay command). Dead processes'
        # ledgers are collected either way.
        self.ledger = ledger
        self.stats = CountingObserver()
        self.observer: LogObserver = (
            Observers(self.stats, observer) if observer is not None else self.stats
        )
        self._queue = _EventQueue(config.queue_rows, config.batch_rows)
        self._up = False
        self._retry_at = 0.0  # monotonic time of the next reconnection attempt
        self._housekeeping_at = 0.0  # monotonic time of the next replay look-up and housekeeping
        self._answered_at = 0.0  # monotonic time the store last took a write or a probe
        self._backoff = config.retry_initial
        self._outage_reasons: set[str] = set()  # why the store is down, as logged this outage
        self._inflight: list[Entry] = []
        # close() spools what the writer thread holds when the store hangs past the timeout; from
        # then on the thread must not spool, count or replay it too.
        self._handover = threading.Lock()
        self._taken_over = False
        self._replay: tuple[Claimed, Iterator[tuple[list[Entry], int]]] | None = None
        self._replay_oldest: datetime | None = None
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._turns = 0
        self._turn_done = threading.Condition()
        self._turn_started: float | None = None  # monotonic start of the turn in progress
        self._spool_oldest: datetime | None = None  # as of the last report
        self._last_drop_log = 0.0
        self._thread = threading.Thread(target=self._run, name="predlog-writer", daemon=True)
        self._watchdog = threading.Thread(
            target=self._watch, name="predlog-backlog-watch", daemon=True
        )

    # Request path

    def publish(self, event: Event) -> None:
        """Queue ``event``; when the queue is full, spool it from this thread. Never blocks on
        the store, never raises."""
        rows = event_rows(event)
        if self.ledger is not None:
            self.ledger.took(event, rows)
        if self._queue.offer(event, rows):
            return
        entries = self._convert([event])
        if entries:
            self._spool(entries)
        if self.ledger is not None:
            self.ledger.settled([event])

    # Lifecycle

    def start(self) -> None:
        """Connect (creating the tables if needed) and start the thread.

        A store that is down is not an error here: entries are spooled until it answers. A store
        of another schema version is: :class:`SchemaMismatch` is raised, loudly, at startup.
        """
        try:
            self.store.ensure_schema()
        except SchemaMismatch:
            raise
        except Exception as exc:
            self._store_failed("connect", exc)
        else:
            self._answered_at = time.monotonic()
            self._set_up(True)
        self._thread.start()
        self._watchdog.start()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event published before the call has been written or spooled."""
        with self._turn_done:
            target = self._turns + 2  # the turn in progress may have missed the latest events
            self._queue.wake()
            self._turn_done.wait_for(lambda: self._turns >= target or not self.running, timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Write (or spool) everything queued and stop; returns within about shutdown_timeout."""
        self._deadline = time.monotonic() + self.config.shutdown_timeout
        self._closing.set()
        self._queue.wake()
        if self._thread.is_alive():
            self._thread.join(self.config.shutdown_timeout + CLOSE_MARGIN_SECONDS)
        if self._thread.is_alive():
            log.error(
                "the prediction log store did not answer within %.0fs of shutdown; spooling "
                "what is still in memory",
                self.config.shutdown_timeout,
            )
            with self._handover:
                self._taken_over = True
                leftover, self._inflight = self._inflight, []
            self._spool(leftover + self._convert(self._queue.take(2**62)))
        # Everything has left memory (written, spooled or counted as dropped). Before sealing the
        # spool, whose fsync may fail or stall into the orchestrator's SIGKILL: a ledger left
        # behind would have rows already in the spool counted as lost too.
        if self.ledger is not None:
            self.ledger.close()
        self.spool.close()
        self.observer.queue_depth(self._queue.rows)
        summary = self.stats.summary()
        left = len(self.spool.segments())
        log.info(
            "prediction log closed: %s; %d spool segment(s) waiting in %s",
            ", ".join(f"{k}={v}" for k, v in summary.items()),
            left,
            self.spool.directory,
        )

    # Writer thread

    def _run(self) -> None:
        while True:
            timeout = 0.0 if self._replay is not None else self.config.flush_interval
            woken = self._queue.wait(timeout)
            closing = self._closing.is_set()
            # The housekeeping (see the module's docstring) and the replay look-up once per flush
            # interval, or when asked (flush, close). Not after a replay's poll (timeout 0), which
            # comes back at once: a long replay would scan the spool after each of its batches.
            housekeeping = (
                woken == "wake"
                or (woken == "timeout" and timeout > 0)
                or time.monotonic() >= self._housekeeping_at
            )
            self._turn_started = time.monotonic()
            try:
                self._turn(closing, housekeeping)
            except Exception:  # a bug here must not kill the thread and lose the queue
                log.exception("prediction log writer turn failed")
                with self._handover:
                    leftover, self._inflight = self._inflight, []
                    if not self._taken_over:
                        self._spool(leftover)
                if self._replay is not None:
                    # A generator that raised is finished: read on, it would look like the end
                    # of the segment and have it deleted. Keep the segment for a later replay.
                    self._replay[0].release()
                    self._replay = None
                    self._replay_oldest = None
            self._turn_started = None
            with self._turn_done:
                self._turns += 1
                self._turn_done.notify_all()
            if closing and self._queue.rows == 0:
                break
        if self._replay is not None:
            self._replay[0].release()
            self._replay = None

    def _turn(self, closing: bool, housekeeping: bool) -> None:
        # Take what is queued now, not what keeps arriving: under sustained load the turn must
        # still end, to replay and report.
        budget = self._queue.rows
        while budget > 0 and (events := self._queue.take(self.config.batch_rows)):
            budget -= sum(event_rows(event) for event in events)
            try:
                self._inflight = self._convert(events)
                self._deliver(self._inflight)
                self._inflight = []
            finally:  # a failed turn spools what it held (_run): settled all the same
                if self.ledger is not None:
                    self.ledger.settled(events)
        if not self._up and time.monotonic() >= self._retry_at and not closing:
            self._reconnect()
        # A replay in progress goes on every turn; a new one is looked for with the housekeeping.
        if self._up and not closing and not self._taken_over and (housekeeping or self._replay):
            self._replay_batch()
        self.spool.sync()
        if housekeeping:
            if self._up and not closing and self._idle_for() >= self.config.idle_probe_seconds:
                self._probe()
            self._count_dead_workers_losses()
            self._report()
            self._housekeeping_at = time.monotonic() + self.config.flush_interval

    def _idle_for(self) -> float:
        return time.monotonic() - self._answered_at

    def _probe(self) -> None:
        try:
            self.store.probe()
        except Exception as exc:
            self._store_failed("connect", exc)
            return
        self._answered_at = time.monotonic()

    def _count_dead_workers_losses(self) -> None:
        own = self.ledger.path if self.ledger is not None else None
        for path, lost in ledgers.collect(self.spool.directory, own=own):
            for table, rows in lost.items():
                if rows:
                    self.observer.dropped(table, rows, "worker_died")
            if any(lost.values()):
                log.error(
                    "a process that died without closing its prediction log (killed, out of "
                    "memory, crashed) had %s in memory, never written or spooled: counted as "
                    "dropped (worker_died); its ledger was %s",
                    " and ".join(f"{rows} {table} row(s)" for table, rows in lost.items() if rows),
                    path.name,
                )

    def _convert(self, events: list[Event]) -> list[Entry]:
        entries: list[Entry] = []
        for event in events:
            try:
                entries.append(to_entry(event))
            except Exception:
                table = "predictions" if isinstance(event, PredictionEvent) else "rejections"
                log.exception("could not turn request %s into a log row", event.request.request_id)
                self.observer.dropped(table, event_rows(event), "corrupt")
        return entries

    def _deliver(self, entries: list[Entry]) -> None:
        if time.monotonic() < self._deadline:
            if not self._up and time.monotonic() >= self._retry_at:
                self._reconnect()
            if self._up and self._write(entries, "write"):
                return
        with self._handover:
            if not self._taken_over:
                self._spool(entries)

    def _write(self, entries: list[Entry], operation: Operation) -> bool:
        """Commit ``entries``; False (store marked down) if the store failed to take them."""
        try:
            inserted = self.store.write(entries)
        except Exception as exc:
            if not is_refusal(exc):
                self._store_failed(operation, exc)
                return False
            return self._write_one_by_one(entries, operation, exc)
        self._answered_at = time.monotonic()
        with self._handover:
            # Taken over: close() spooled these entries and counted them so; a replay of that
            # spool finds them in the store and counts nothing.
            if not (self._taken_over and operation == "write"):
                self._count_inserted(operation, inserted)
            if entries is self._inflight:
                self._inflight = []
        return True

    def _count_inserted(self, operation: Operation, inserted: dict[str, int]) -> None:
        # A replay started again after a store failure sends entries it already committed: only
        # what the store inserted counts, or replayed would exceed what was spooled.
        count = self.observer.written if operation == "write" else self.observer.replayed
        for table, records in inserted.items():
            if records:
                count(table, records)

    def _write_one_by_one(self, entries: list[Entry], operation: Operation, exc: Exception) -> bool:
        log.warning("the store refused a batch (%s); retrying it entry by entry", exc)
        for index, entry in enumerate(entries):
            try:
                inserted = self.store.write([entry])
            except Exception as one_exc:
                if not is_refusal(one_exc):
                    self._store_failed(operation, one_exc)
                    if operation == "write":  # a replay keeps its entries in the segment
                        self._spool(entries[index:])
                    return operation == "write"
                self.observer.write_failed(operation)
                if not self.spool.quarantine(entry, one_exc):
                    continue  # set aside and counted by a replay of this segment cut short
                self.observer.dropped(entry.table, entry.records, "refused")
                log.error(
                    "the store refused %d %s row(s) of request %s: %s; kept in %s",
                    entry.records,
                    entry.table,
                    entry.rows[0]["request_id"],
                    one_exc,
                    self.spool.directory / "quarantine",
                )
                continue
            self._count_inserted(operation, inserted)
        return True

    def _spool(self, entries: list[Entry]) -> None:
        kept, refused = self.spool.append(entries)
        for table, rows in _by_table(kept).items():
            self.observer.spooled(table, rows)
        if refused:
            for table, rows in _by_table(refused).items():
                self.observer.dropped(table, rows, "spool_full")
            now = time.monotonic()
            if now - self._last_drop_log > 10:  # one line per 10 s, the counters have the rest
                self._last_drop_log = now
                error = self.spool.write_error
                why = (
                    f"cannot be written ({error})"
                    if error is not None
                    else f"is full ({self.spool.size} bytes, cap {self.spool.max_bytes})"
                )
                log.error(
                    "prediction log spool %s %s: dropping rows; see the dropped counter",
                    self.spool.directory,
                    why,
                )

    # Store state

    def _set_up(self, up: bool) -> None:
        self._up = up
        if up:
            self._outage_reasons.clear()
        self.observer.store_up(up)

    def _store_failed(self, operation: Operation, exc: BaseException) -> None:
        self.observer.write_failed(operation)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        # Once per outage and cause: a retry failing for a reason already logged says nothing
        # new (the store_up gauge and the failure counter keep count); a new cause is logged.
        if reason not in self._outage_reasons:
            level = logging.ERROR if isinstance(exc, SchemaMismatch) else logging.WARNING
            self._outage_reasons.add(reason)
        else:
            level = logging.DEBUG
        log.log(
            level,
            "prediction log store %s unavailable (%s); spooling to %s, retrying in %.1fs",
            self.store.display_url,
            reason,
            self.spool.directory,
            self._backoff,
        )
        self._set_up(False)
        if self._replay is not None:
            self._replay[0].release()
            self._replay = None
            self._replay_oldest = None
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.retry_max)

    def _reconnect(self) -> None:
        try:
            self.store.ensure_schema()
        except Exception as exc:
            self._store_failed("connect", exc)
            return
        self._backoff = self.config.retry_initial
        self._answered_at = time.monotonic()
        self._set_up(True)
        log.warning(
            "prediction log store %s answers; %d spool segment(s) to replay",
            self.store.display_url,
            len(self.spool.segments()),
        )

    def replay_spool(self) -> None:
        """Replay every segment nobody holds, now, on the calling thread (``predlog replay``)."""
        self._reconnect()
        while self._up and self._replay_batch():
            pass

    def _replay_batch(self) -> bool:
        """Replay one batch of a spooled segment (claiming one if none is in progress); False if
        there was nothing to replay."""
        if self._replay is None:
            if self.spool.has_active():
                self.spool.seal()  # entries spooled while the queue was full: replay them too
            claimed = self.spool.claim()
            if claimed is None:
                return False
            self._replay = (claimed, claimed.batches(self.config.batch_rows))
        claimed, batches = self._replay
        try:
            entries, corrupt = next(batches)
        except StopIteration:
            claimed.done()
            self._replay = None
            self._replay_oldest = None
            return True
        except OSError as exc:
            log.error("cannot read spool segment %s: %s", claimed.path, exc)
            claimed.release()
            self._replay = None
            return False
        if corrupt:
            self.observer.dropped("unknown", corrupt, "corrupt")
        if entries:
            self._replay_oldest = entries[0].received_at
            self._write(entries, "replay")
        return True

    def _watch(self) -> None:
        """Report the backlog while the writer thread is stuck in a turn.

        The writer reports between turns; in a store that hangs (a lock, a server that stops
        answering) its last report, an age of 0, would stand for as long as the hang lasts and
        hide exactly the lag the alert is for. This thread reports instead once a turn has taken
        longer than a reporting interval: what waits in the queue, in flight and in the spool
        (as of the writer's last report: the spool is the writer's to read).
        """
        interval = max(self.config.flush_interval, WATCH_SECONDS)
        while not self._closing.wait(interval):
            started = self._turn_started
            if started is None or time.monotonic() - started < interval:
                continue
            try:
                inflight = list(self._inflight)
                candidates = [
                    self._queue.oldest(),
                    min((e.received_at for e in inflight), default=None),
                    self._replay_oldest,
                    self._spool_oldest,
                ]
                oldest = min((t for t in candidates if t is not None), default=None)
                if oldest is not None and self._turn_started == started:
                    self.observer.queue_depth(self._queue.rows)
                    age = (datetime.now(UTC) - oldest).total_seconds()
                    self.observer.backlog_age(max(age, 0.0))
            except Exception:  # reporting must never take anything down
                log.exception("reporting the prediction log backlog failed")

    def _report(self) -> None:
        self.observer.queue_depth(self._queue.rows)
        self.observer.spool_bytes(self.spool.scan())
        self._spool_oldest = self.spool.oldest()
        candidates = [self._queue.oldest(), self._spool_oldest, self._replay_oldest]
        oldest = min((t for t in candidates if t is not None), default=None)
        age = 0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()
        self.observer.backlog_age(max(age, 0.0))
