"""Keep-alive HTTP connections spread evenly over the worker processes.

BentoML's workers accept connections from one shared listening socket. A worker's event loop
accepts every connection pending when it wakes, and a keep-alive connection stays with the worker
that accepted it for its whole life. A client that opens a few long-lived connections at once (a
load generator, an HTTP client's pool, an ingress proxy's upstream pool) therefore often lands on
a single worker: measured here with 4 and 16 connections to 2 workers, most runs put every
connection on one worker, which then used one core while the other idled, at half the machine's
throughput and twice its latency.

Each worker publishes, a few times a second, how many connections sent it a request in the last
``window`` seconds on a small board shared by the workers of one server (a memory-mapped file
named after the parent process, in the server's Prometheus directory). When a worker serves at
least two connections more than the least busy live sibling, and has for at least ``hold``
seconds, it answers one request with ``Connection: close``: the client opens a new connection,
which goes to whichever worker accepts it first, usually an idle one. A worker closes at most one
connection per ``interval``, so that the board settles between moves; a balanced server closes
none.

A sibling's count can be wrong for one of its ticks: reads and writes of a slot are not atomic
across processes (a torn read), and a worker whose event loop was held up for longer than
``window`` can publish before it has seen its pending requests, counting its connections as
idle. Acting only on a difference that lasts ``hold`` (longer than a tick) keeps such a blip
from moving a connection.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_SLOT = struct.Struct("<dqq")  # heartbeat (unix time), pid, connections
MAX_WORKERS = 256
_CLOSE = (b"connection", b"close")


class Board:
    """One slot per worker index in a memory-mapped file shared by the sibling workers."""

    def __init__(self, path: Path, index: int) -> None:
        if not 0 <= index < MAX_WORKERS:
            raise ValueError(f"worker index {index} outside 0..{MAX_WORKERS - 1}")
        self.path = path
        self.index = index
        size = _SLOT.size * MAX_WORKERS
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zero-filled: a slot never written reads as dead
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.pid = os.getpid()

    @classmethod
    def for_siblings(cls, index: int) -> Board:
        """The board of the workers started by this process's parent (the server)."""
        return cls(cls.path_for(os.getppid()), index)

    @staticmethod
    def path_for(server_pid: int) -> Path:
        # The server's own Prometheus directory (service.prometheus_dir), removed once it has
        # exited, so boards of stopped servers do not pile up; the temporary directory outside
        # BentoML.
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
        return Path(directory) / f"workers-{server_pid}.board"

    def slots(self) -> list[tuple[float, int, int]]:
        """(heartbeat, pid, connections) of every slot; pid 0 for one never used."""
        return list(_SLOT.iter_unpack(self._map))

    @staticmethod
    def read(path: Path) -> list[tuple[float, int, int]]:
        """The used slots of the board at ``path``, for a process that is not a worker."""
        return [slot for slot in _SLOT.iter_unpack(path.read_bytes()) if slot[1]]

    def publish(self, connections: int, now: float | None = None) -> None:
        offset = self.index * _SLOT.size
        self._map[offset : offset + _SLOT.size] = _SLOT.pack(
            time.time() if now is None else now, self.pid, connections
        )

    def siblings(self, max_age: float, now: float | None = None) -> list[int]:
        """Connection counts of the other workers that published within ``max_age`` seconds."""
        now = time.time() if now is None else now
        counts = []
        for index, (beat, pid, connections) in enumerate(self.slots()):
            if index != self.index and pid and now - beat <= max_age:
                counts.append(connections)
        return counts

    def close(self) -> None:
        self.publish(0, now=0.0)  # a stopped worker is not a sibling any more
        self._map.close()


class ConnectionBalancer:
    """ASGI middleware: closes a connection now and then while this worker has more than its
    share. ``start()`` (on the worker's event loop) joins the board; until then it passes
    requests through untouched."""

    def __init__(
        self, app: ASGIApp, interval: float = 0.25, window: float = 1.0, hold: float = 0.25
    ) -> None:
        self.app = app
        self.interval = interval
        self.window = window
        self.hold = hold
        self.closed = 0  # connections this worker asked to close (tests read it)
        self._board: Board | None = None
        self._seen: dict[tuple[str, int], float] = {}
        self._ahead_since: float | None = None  # holding 2+ more than a live sibling since
        self._excess = False  # ... for at least `hold` seconds
        self._next_close = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if self._board is None or client is None:
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        key = (client[0], client[1])
        if self._excess and now >= self._next_close and key in self._seen:
            # A connection seen before: its client has just been answered and reconnects cheaply.
            self._seen.pop(key)
            self._excess = False
            self._next_close = now + self.interval
            self.closed += 1
            await self.app(scope, receive, _closing(send))
            return
        self._seen[key] = now
        await self.app(scope, receive, send)

    def start(self, board: Board) -> None:
        self._board = board
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="balancer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._board is not None:
            self._board.close()
            self._board = None

    def refresh(self, now: float | None = None) -> None:
        """Forget connections idle for ``window`` seconds, publish, compare with the siblings."""
        assert self._board is not None
        now = time.monotonic() if now is None else now
        stale = [key for key, seen in self._seen.items() if now - seen > self.window]
        for key in stale:
            del self._seen[key]
        mine = len(self._seen)
        self._board.publish(mine)
        others = self._board.siblings(max_age=10 * self.interval)
        if not others or mine - min(others) < 2:
            self._ahead_since = None
        elif self._ahead_since is None:
            self._ahead_since = now
        self._excess = self._ahead_since is not None and now - self._ahead_since >= self.hold

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval / 2)
            try:
                self.refresh()
            except Exception:  # balancing is an optimisation: never let it break serving
                log.exception("connection balancer failed; connections stay where they are")
                return


def _closing(send: Send) -> Send:
    async def send_with_close(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
        await send(message)

    return send_with_close
