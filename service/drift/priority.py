"""The drift child's CPU priority: below the serving workers', set by ``runner`` before its imports
(kept apart from ``runner`` so that nothing heavy is imported before it)."""

from __future__ import annotations

import contextlib
import os

NICENESS = 10


def lower_priority() -> None:
    """Run only on CPU the serving workers leave idle.

    Linux's SCHED_IDLE: the scheduler gives this process a core only when nothing else wants it,
    so a run never delays a request; under sustained saturation a run is starved until it times
    out (counted as failed), which is the right way round. Plain nice 10 elsewhere (and as well:
    a nice value survives where the policy is refused, e.g. by a container's seccomp profile).
    """
    os.nice(NICENESS)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
