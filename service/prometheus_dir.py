"""One Prometheus multiprocess directory per ``bentoml serve``, not one per BentoML home.

BentoML's workers write their metrics to files in one directory, which ``/metrics`` merges
(prometheus_client's multiprocess mode). BentoML puts that directory at
``$BENTOML_HOME/prometheus_multiproc_dir`` and empties it when a server starts, so two servers
sharing a home (two replicas on one host with one model store, a blue-green restart) share it:
the second one's start wipes the first one's counters, and from then on each ``/metrics``
reports the sum of both.

:func:`use_own` points BentoML at a directory named after the serving process, in the temporary
directory. It runs when the service module is imported: in the ``bentoml serve`` process, before
BentoML prepares the directory and hands it to the workers in ``PROMETHEUS_MULTIPROC_DIR``, and
again in every worker, where that variable is already set and it does nothing. Directories of
servers that have exited are removed then too: BentoML's own was emptied by the next start.

:func:`forget_dead_workers` removes, inside that directory, the live-gauge files of workers that
were killed outright, which BentoML leaves behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "bentoml-prometheus-"
_NAME = re.compile(re.escape(_PREFIX) + r"(\d+)")


def directory_for(server_pid: int) -> Path:
    """The metrics directory of the ``bentoml serve`` process ``server_pid``."""
    return Path(tempfile.gettempdir()) / f"{_PREFIX}{server_pid}"


def use_own() -> Path | None:
    """In the serving process: make BentoML use this process's own directory (returned)."""
    if os.environ.get(ENV):
        return None  # a worker (or a process told where to write): the directory is chosen
    # BentoML has no setting for it; its dependency-injection container is what its own pytest
    # plugin sets.
    from bentoml._internal.configuration.containers import BentoMLContainer

    _remove_stale()
    directory = directory_for(os.getpid())
    BentoMLContainer.prometheus_multiproc_dir.set(str(directory))
    return directory


def forget_dead_workers() -> int:
    """Remove the live-gauge files of worker processes that are gone; the number of workers
    whose files this call removed.

    In multiprocess mode each worker writes its live gauges (``livesum``, ``livemax``...) to
    files named after its pid. A worker killed outright (SIGKILL, the OOM killer, a crash)
    cannot remove them, and BentoML starts another beside its files: its last values would stay
    in every live gauge for the service's life (``service_workers`` one too many, its memory and
    fds counted, a store outage or a backlog it saw never ending for the alerts). Every worker's
    process sampler calls this. A worker that exits cleanly leaves its files too (BentoML's
    ``mark_process_dead`` runs from a finaliser, if at all), but only when the whole service
    stops, after its siblings' samplers have stopped: a worker counted here died while the
    service was serving. Each has a ``livesum`` file (``service_workers``): whoever removes it
    counts the worker, once.
    """
    directory = os.environ.get(ENV)
    if not directory:
        return 0
    died = 0
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):  # another worker was first
                path.unlink()
                died += path.name.startswith("gauge_livesum_")
    return died


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # killed but not yet reaped by BentoML: a zombie
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: the signal was delivered
        return True


def _remove_stale() -> None:
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        match = _NAME.fullmatch(path.name)
        with contextlib.suppress(OSError):  # e.g. removed meanwhile by another starting server
            if match and path.stat().st_uid == os.getuid() and not _alive(int(match[1])):
                shutil.rmtree(path)
                log.debug("removed %s, the metrics directory of an exited server", path)
