"""Process metrics (CPU, memory, file descriptors, live workers) from a sampler thread."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from service import prometheus_dir

log = logging.getLogger(__name__)

PROCESS_SAMPLE_SECONDS = 5.0


class ProcessMetrics:
    """CPU, memory and file descriptors of this worker, sampled every few seconds.

    prometheus_client's process collector is not available in multiprocess mode, so each worker
    pushes its own: CPU as a counter of increments (sums over workers, dead ones included, as CPU
    spent), the rest as gauges over the live workers: memory and descriptors summed, the
    descriptor limit the lowest. ``service_workers`` counts the live workers.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._cpu = Counter(
            "process_cpu_seconds", "CPU time of the worker processes.", registry=registry
        )
        self._rss = Gauge(
            "process_resident_memory_bytes",
            "Resident memory of the worker processes, summed.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._fds = Gauge(
            "process_open_fds",
            "Open file descriptors of the worker processes, summed.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._max_fds = Gauge(
            "process_max_fds",
            "File descriptor limit of a worker process.",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._workers = Gauge(
            "service_workers",
            "Live worker processes serving this instance.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._died = Counter(
            "service_worker_deaths",
            "Worker processes that died while the service was serving (killed outright, by the "
            "OOM killer or SIGKILL, or crashed) and were replaced: their requests in flight "
            "were never answered.",
            registry=registry,
        )
        self._workers.set(1)
        self._max_fds.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self._cpu_seen = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-metrics", daemon=True)

    def sample(self) -> None:
        died = prometheus_dir.forget_dead_workers()
        if died and not self._stop.is_set():  # a sibling's clean exit at shutdown is no death
            self._died.inc(died)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        self._cpu.inc(max(cpu - self._cpu_seen, 0.0))
        self._cpu_seen = cpu
        self._rss.set(_rss_bytes())
        with contextlib.suppress(OSError):  # /proc is Linux only
            self._fds.set(len(os.listdir("/proc/self/fd")))

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(PROCESS_SAMPLE_SECONDS):
            try:
                self.sample()
            except Exception:
                log.exception("sampling process metrics failed")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
