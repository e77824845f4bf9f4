"""The drift child process, stopped by the worker's shutdown at any point of a run: the run
fails as a :class:`RunFailed` (which the monitor takes for a run cut short, and gives its slot
back), never with another exception that would leave the slot claimed, and no child outlives
the stop."""

from __future__ import annotations

from typing import Any

import psutil
import pytest

from service.drift import process
from service.drift.process import DriftProcess, RunFailed


def drift_children() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if "service.drift.runner" in " ".join(child.cmdline())
    ]


def test_a_stopped_process_starts_no_child() -> None:
    process = DriftProcess()
    process.stop()
    with pytest.raises(RunFailed, match="stopped"):
        process.run({"slot": 0}, timeout=60)
    assert not process.warm
    assert drift_children() == []


def test_a_stop_as_the_child_becomes_ready_fails_the_run_and_kills_the_child() -> None:
    """The worker's shutdown lands between the child's "ready" and the job's hand-over."""

    class StoppedOnceReady(DriftProcess):
        def _answer(self, deadline: float, timed_out: str) -> dict[str, Any]:
            answer = super()._answer(deadline, timed_out)
            self.stop()
            return answer

    process = StoppedOnceReady()
    with pytest.raises(RunFailed, match="stopped"):
        process.run({"slot": 0}, timeout=60)
    assert not process.warm
    assert drift_children() == []


def test_a_child_starved_at_its_start_fails_the_run_and_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At idle CPU priority a saturated machine starves the child's start: the run fails (counted,
    # and GET /drift says why) instead of the monitor waiting on it, and the child is not left
    # behind. A start shorter than Python's own stands in for the starving.
    monkeypatch.setattr(process, "START_TIMEOUT_SECONDS", 0.01)
    drift = DriftProcess()
    with pytest.raises(RunFailed, match=r"did not start within 0s; the process was killed"):
        drift.run({"slot": 0}, timeout=60)
    assert not drift.warm
    assert drift_children() == []
