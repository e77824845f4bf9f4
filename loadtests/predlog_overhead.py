"""Request latency with the prediction log on versus off (issue: "within a few percent").

Two measurements:

1. end to end: two real `bentoml serve` processes of this project, one with
   PREDICTION_LOG_ENABLED=true (SQLite store, the default kind) and one with it false, both with
   the access log off so that only the prediction log differs. Closed-loop clients send
   /predict requests to one server, then the other, alternating in short windows so that
   background load on the machine hits both alike; latency is measured by the client.
   The server processes' CPU time per request is recorded too: on a busy machine it is a
   steadier measure of the log's cost than wall-clock latency.
2. in process: the cost of the request path's part of the log, ``PredictionLog.publish()``,
   per event, with a real writer committing to SQLite behind it.

    .venv/bin/python -m models.train --if-missing      # a registered model
    .venv/bin/python loadtests/predlog_overhead.py     # ~3 minutes; --help for the knobs

Prints a table and writes it as JSON to loadtests/reports/. Figures depend on the machine and on
what else runs on it: say both when you quote them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import ServedService, example_rows  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_window(url: str, body: bytes, concurrency: int, seconds: float) -> list[float]:
    """Closed loop: ``concurrency`` clients, each sending the next request on an answer."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = http.post(
                    "/predict", content=body, headers={"content-type": "application/json"}
                )
                mine.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def server_cpu_seconds(server: ServedService) -> float:
    """User + system CPU time of the server's process tree (arbiter and workers) so far."""
    assert server._proc is not None
    root = psutil.Process(server._proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def summarize(latencies: list[float], seconds: float, cpu: float) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "server_cpu_ms_per_request": round(1000 * cpu / len(latencies), 3),
        "throughput_rps": round(len(latencies) / seconds, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


def end_to_end(args: argparse.Namespace, state: Path) -> dict[str, dict[str, Any]]:
    body = json.dumps({"instances": example_rows(args.instances)}).encode()
    common = {"ACCESS_LOG": "false", "PREDICTION_LOG_SPOOL_DIR": str(state / "spool")}
    configs = {
        "log_on": {
            **common,
            "PREDICTION_LOG_ENABLED": "true",
            "PREDICTION_LOG_URL": f"sqlite:///{state}/predictions.db",
        },
        "log_off": {**common, "PREDICTION_LOG_ENABLED": "false"},
    }
    servers = {
        name: ServedService(env=env, workers=args.workers).start() for name, env in configs.items()
    }
    latencies: dict[str, list[float]] = {name: [] for name in configs}
    cpu = dict.fromkeys(configs, 0.0)
    window_means: dict[str, list[float]] = {name: [] for name in configs}
    try:
        for server in servers.values():  # warm up: first model calls, connection pools
            run_window(server.url, body, args.concurrency, 3)
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name in order:
                before = server_cpu_seconds(servers[name])
                window = run_window(servers[name].url, body, args.concurrency, args.window)
                latencies[name] += window
                window_means[name].append(round(statistics.fmean(window) * 1000, 1))
                cpu[name] += server_cpu_seconds(servers[name]) - before
    finally:
        for server in servers.values():
            server.stop()
    seconds = args.rounds * args.window
    return {
        name: {**summarize(values, seconds, cpu[name]), "window_mean_ms": window_means[name]}
        for name, values in latencies.items()
    }


def in_process(state: Path, events: int, burst: int, pause: float) -> dict[str, float]:
    """publish() cost per event, and the writer's CPU per row, for a stream of ``burst`` events
    every ``pause`` seconds into a real writer committing to SQLite."""
    from service.events import Prediction, PredictionEvent, RequestInfo
    from service.predlog.spool import Spool
    from service.predlog.store import Store
    from service.predlog.writer import Writer, WriterConfig

    rows = example_rows(1)
    store = Store(f"sqlite:///{state}/publish-{burst}.db")
    config = WriterConfig(flush_interval=pause)
    writer = Writer(store, Spool(state / f"publish-spool-{burst}", 10**9), config)
    writer.start()
    made = [
        PredictionEvent(
            RequestInfo(f"r{i}", "http", datetime.now(UTC), 0.001, "m:1", None, "/predict"),
            rows,
            [Prediction("good", 0.1)],
        )
        for i in range(events)
    ]
    costs: list[float] = []
    cpu_before = time.process_time()
    for event in made:
        started = time.perf_counter_ns()
        writer.publish(event)
        costs.append(time.perf_counter_ns() - started)
        if len(costs) % burst == 0:
            time.sleep(pause)
    writer.close()
    cpu = time.process_time() - cpu_before - sum(costs) / 1e9
    store.close()
    return {
        "events": events,
        "events_per_burst": burst,
        "publish_mean_us": round(statistics.fmean(costs) / 1000, 2),
        "publish_p50_us": round(percentile(costs, 0.50) / 1000, 2),
        "publish_p99_us": round(percentile(costs, 0.99) / 1000, 2),
        # convert, encode, insert, commit: off the request path, but on the same CPUs
        "writer_cpu_us_per_row": round(cpu / events * 1e6, 1),
        "spooled_rows": writer.stats.total("spooled"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="windows per configuration")
    parser.add_argument("--window", type=float, default=10, help="seconds per window")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--instances", type=int, default=1, help="instances per request")
    parser.add_argument("--workers", type=int, default=2, help="BentoML workers per server")
    parser.add_argument("--in-process-only", action="store_true", help="skip the served part")
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    with tempfile.TemporaryDirectory(prefix="predlog-bench-") as tmp:
        state = Path(tmp)
        report = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_before": os.getloadavg(),
            },
            "settings": vars(args),
            "in_process": {
                "large_batches": in_process(state, 20_000, burst=500, pause=0.05),
                "small_batches": in_process(state, 2_000, burst=5, pause=0.01),
            },
        }
        if not args.in_process_only:
            report["end_to_end"] = end_to_end(args, state)
        report["machine"]["load_average_after"] = os.getloadavg()
    if "end_to_end" in report:
        on, off = report["end_to_end"]["log_on"], report["end_to_end"]["log_off"]
        report["overhead_percent"] = {
            key: round(100 * (on[key] - off[key]) / off[key], 1)
            for key in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "server_cpu_ms_per_request")
        }
    out = ROOT / "loadtests" / "reports" / f"predlog_overhead-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
