"""The child process drift runs in, seen from the worker: start it, hand it a job, wait, kill.

Evidently's computation is CPU-bound Python: in a thread of the serving worker it would hold the
worker's GIL for seconds and stall requests. It runs instead in a child process
(``service.drift.runner``) at idle priority, which the worker's monitor thread merely waits for.
The child is kept between runs, because importing Evidently costs seconds of CPU; it is killed
when a run exceeds its timeout (and started afresh for the next one) and when the worker stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# The directory holding the `service` package, so that the child imports the same code whatever
# the working directory (a bento runs from its own).
_CODE_ROOT = str(Path(__file__).resolve().parents[2])
# Importing Evidently takes seconds of CPU, more when the idle-priority child waits for busy
# workers.
START_TIMEOUT_SECONDS = 300.0


class RunFailed(RuntimeError):
    """The run did not produce a summary: it raised, timed out, or the child died."""


class DriftProcess:
    """One child process, started on first use; ``run`` is called by one thread at a time,
    ``stop`` by any (the worker's shutdown), at any point of a run."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._answers: queue.Queue[str | None] = queue.Queue()
        # Held while a child is started or taken to be killed: a child started after stop()
        # took the last one would be killed by nobody.
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def warm(self) -> bool:
        """Is a child running, Evidently imported, ready for a job?"""
        return self._proc is not None and self._proc.poll() is None

    def run(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The summary (as a dict) of ``job``; raises :class:`RunFailed` if it takes longer than
        ``timeout`` (not counting the child's start, which has ``START_TIMEOUT_SECONDS``)."""
        if not self.warm:
            self._start()
            self._answer(  # {"ready": true}
                time.monotonic() + START_TIMEOUT_SECONDS,
                f"the drift process did not start within {START_TIMEOUT_SECONDS:.0f}s",
            )
        deadline = time.monotonic() + timeout
        # From here on this run's child is ``proc``, whatever stop() does to self._proc.
        proc = self._proc
        if proc is None:
            raise RunFailed("the drift process was stopped")
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        except OSError as exc:
            self._kill()
            raise RunFailed(f"the drift process is gone: {exc}") from exc
        answer = self._answer(
            deadline, f"the run took longer than DRIFT_RUN_TIMEOUT_SECONDS={timeout:g}"
        )
        if "error" in answer:
            raise RunFailed(answer["error"])
        return answer["summary"]

    def stop(self) -> None:
        """Kill the child, for good: a run in progress fails, and none starts another."""
        with self._lock:
            self._stopped = True
        self._kill()

    def _kill(self) -> None:
        """Kill the child (a run's timeout or failure); the next run starts another."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()

    def _start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [_CODE_ROOT, os.environ.get("PYTHONPATH")])),
        }
        with self._lock:
            if self._stopped:
                raise RunFailed("the drift process was stopped")
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.drift.runner"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,  # the child's tracebacks join the worker's log
                text=True,
                env=env,
            )
            self._proc = proc
            self._answers = queue.Queue()
        # A reader thread, so that waiting for an answer can time out whatever the child does.
        threading.Thread(
            target=_read_lines, args=(proc, self._answers), name="drift-reader", daemon=True
        ).start()
        log.info("started the drift process (pid %d)", proc.pid)

    def _answer(self, deadline: float, timed_out: str) -> dict[str, Any]:
        try:
            line = self._answers.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            self._kill()
            raise RunFailed(f"{timed_out}; the process was killed") from None
        if line is None:
            proc = self._proc
            code = proc.wait() if proc else None
            self._kill()
            raise RunFailed(f"the drift process exited (code {code})")
        return json.loads(line)


def _read_lines(proc: subprocess.Popen[str], answers: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        answers.put(line)
    answers.put(None)  # end of output: the child exited
