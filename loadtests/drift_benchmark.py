"""What drift costs: the time of one run by window size, and /predict's p99 while a run goes on.

    .venv/bin/python -m models.train --if-missing && .venv/bin/python -m loadtests.drift_benchmark

1. **One run, by window size** (1k, 10k, 100k rows): a SQLite prediction log is filled with
   100,000 instances sampled from the registered model's reference data and scored by the model;
   each size is then run as the drift child process runs it (read the window, Evidently, write the
   snapshot and report), in this process, timing each part (wall and CPU time).
2. **/predict while a run goes on**: one ``bentoml serve`` (2 workers, drift on, a 10,000-row
   window over a log prefilled with 10,000 instances, one run every ``--interval`` seconds) under
   closed-loop single-instance load from ``wrk``. Each interval gets a *busy* window (starting
   just after the slot began: the run is in progress) and an *idle* one (after the run ended);
   ``drift_runs`` then says which windows really fell inside a run (kept as busy) or outside
   every run (kept as idle). Busy and idle windows alternate, so background load on the machine
   spreads over both.

Not a timed test: a benchmark, whose results go to ``--output`` (JSON and markdown) with the
machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import select

from loadtests.bench import (
    RunningServer,
    ServerSpec,
    loadavg,
    machine,
    measurement,
    run_wrk,
    write_bodies,
    wrk_version,
)
from loadtests.payloads import PayloadFactory
from service.drift import snapshots
from service.drift.runs import drift_runs
from service.drift.window import read_window
from service.events import Prediction, PredictionEvent, RequestInfo
from service.model import LoadedModel, load_model
from service.predlog.records import new_event_id, to_entry
from service.predlog.store import Store
from service.settings import default_model_tag

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "loadtests" / "results"
SIZES = (1_000, 10_000, 100_000)
REQUEST_ROWS = 100  # instances per logged request when filling the log


def progress(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def fill_log(store: Store, model: LoadedModel, rows: int, seed: int = 0) -> None:
    """``rows`` instances of the model's reference data, scored by it, logged over the last hour."""
    store.ensure_schema()
    payloads = PayloadFactory.from_model(model, seed=seed)
    start = datetime.now(UTC) - timedelta(hours=1)
    for first in range(0, rows, 10_000):
        instances = payloads.instances(min(10_000, rows - first))
        scores = model.score(model.contract.frame(instances))
        labels = model.labels(scores)
        entries = []
        for i in range(0, len(instances), REQUEST_ROWS):
            info = RequestInfo(
                new_event_id(),
                "http",
                start + timedelta(milliseconds=first + i),
                0.001,
                model.tag,
                None,
                "/predict",
            )
            answers = [Prediction(labels[j], float(scores[j])) for j in range(i, i + REQUEST_ROWS)]
            entries.append(
                to_entry(PredictionEvent(info, instances[i : i + REQUEST_ROWS], answers))
            )
        store.write(entries)


def time_runs(model: LoadedModel, work: Path, repeats: int) -> list[dict[str, Any]]:
    from service.drift.compute import compute_drift  # Evidently: seconds to import

    store = Store(f"sqlite:///{work}/runs.db")
    progress(f"filling a log with {max(SIZES)} instances")
    fill_log(store, model, max(SIZES))
    reference = model.reference()
    results = []
    for size in SIZES:
        parts: dict[str, list[float]] = {"read": [], "evidently": [], "files": [], "cpu": []}
        for _ in range(repeats if size < max(SIZES) else 1):
            cpu = time.process_time()
            t0 = time.perf_counter()
            window = read_window(store, model.contract, model.tag, size)
            t1 = time.perf_counter()
            result = compute_drift(reference, window, model.contract)
            t2 = time.perf_counter()
            name = snapshots.run_name(int(time.time()), model.tag)
            snapshots.write_snapshot(work / f"{name}.json", result.snapshot)
            snapshots.write_atomically(work / f"{name}.html", result.snapshot.save_html)
            t3 = time.perf_counter()
            for key, value in (("read", t1 - t0), ("evidently", t2 - t1), ("files", t3 - t2)):
                parts[key].append(value)
            parts["cpu"].append(time.process_time() - cpu)
        row = {"rows": size, "runs": len(parts["read"])}
        row |= {f"{k}_seconds": round(statistics.median(v), 2) for k, v in parts.items()}
        row["total_seconds"] = round(
            row["read_seconds"] + row["evidently_seconds"] + row["files_seconds"], 2
        )
        progress(f"one run at {size} rows: {row}")
        results.append(row)
    store.close()
    return results


def slot_start(interval: int, now: float) -> float:
    return (now // interval) * interval


def latency_under_drift(
    model: LoadedModel, work: Path, cycles: int, interval: int, window: float, connections: int
) -> dict[str, Any]:
    url = f"sqlite:///{work}/served.db"
    store = Store(url)
    progress("filling the served log with 10000 instances")
    fill_log(store, model, 10_000, seed=1)
    env = {
        "DRIFT_INTERVAL_SECONDS": str(interval),
        "DRIFT_WINDOW_SIZE": "10000",
        "DRIFT_SNAPSHOT_DIR": str(work / "drift"),
        "PREDICTION_LOG_URL": url,
        "PREDICTION_LOG_SPOOL_DIR": str(work / "spool"),
        "ACCESS_LOG": "false",
    }
    spec = ServerSpec("ours_drift", "this service, drift on", "ours", "instances", env)
    bodies = write_bodies(work, model, PayloadFactory.from_model(model, seed=2), {"instances"})
    server = RunningServer(spec, model, work, None, work / "served.log")
    windows: list[dict[str, Any]] = []
    try:
        server.wait_ready()
        progress("waiting for the first run (the drift process imports Evidently)")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            state = orjson.loads(_get(server.url + "/drift"))
            if state["status"] == "ok":
                break
            time.sleep(1)
        run_wrk(server.url + server.path, bodies["instances", 1], connections, 5)  # warm-up
        for cycle in range(cycles):
            for kind, offset in (("busy", 0.3), ("idle", interval / 2 + 1)):
                start_at = slot_start(interval, time.time()) + interval + offset
                if kind == "idle":
                    start_at -= interval  # the same slot, after its run
                time.sleep(max(start_at - time.time(), 0))
                began = time.time()
                wrk = run_wrk(server.url + server.path, bodies["instances", 1], connections, window)
                ended = time.time()
                windows.append({"kind": kind, "start": began, "end": ended, **measurement(wrk, 1)})
                progress(f"cycle {cycle + 1}/{cycles} {kind}: p99 {windows[-1]['p99_ms']} ms")
    finally:
        server.stop()
    with store.read() as conn:
        runs = [
            (
                r.claimed_at.replace(tzinfo=UTC).timestamp(),
                r.finished_at.replace(tzinfo=UTC).timestamp(),
            )
            for r in conn.execute(
                select(drift_runs.c.claimed_at, drift_runs.c.finished_at).where(
                    drift_runs.c.status == "ok"
                )
            )
        ]
    store.close()
    for w in windows:
        inside = any(a <= w["start"] and w["end"] <= b for a, b in runs)
        overlaps = any(a < w["end"] and w["start"] < b for a, b in runs)
        w["valid"] = inside if w["kind"] == "busy" else not overlaps
    busy = [w for w in windows if w["kind"] == "busy" and w["valid"]]
    idle = [w for w in windows if w["kind"] == "idle" and w["valid"]]
    durations = [b - a for a, b in runs]

    def summary(ws: list[dict[str, Any]]) -> dict[str, Any]:
        if not ws:
            return {"windows": 0}
        return {
            "windows": len(ws),
            "p99_ms_median": round(statistics.median(w["p99_ms"] for w in ws), 2),
            "p50_ms_median": round(statistics.median(w["p50_ms"] for w in ws), 2),
            "requests_per_second_median": round(
                statistics.median(w["requests_per_second"] for w in ws), 1
            ),
            "errors": sum(w["errors"] for w in ws),
        }

    result = {
        "connections": connections,
        "window_seconds": window,
        "interval_seconds": interval,
        "run_seconds_median": round(statistics.median(durations), 2) if durations else None,
        "busy": summary(busy),
        "idle": summary(idle),
        "windows": windows,
    }
    if busy and idle:
        result["p99_ratio"] = round(
            result["busy"]["p99_ms_median"] / result["idle"]["p99_ms_median"], 3
        )
    return result


def _get(url: str) -> bytes:
    return httpx.get(url, timeout=10).content


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Drift benchmark",
        "",
        f"{results['finished_at']}; {results['machine']['cpus']} CPUs "
        f"({results['machine']['cpu_model']}); load average before {results['loadavg_before']}, "
        f"after {results['loadavg_after']}. {results['note']}",
        "",
        "## One run, by window size",
        "",
        "| rows | read window (s) | Evidently (s) | files (s) | total (s) | CPU (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['rows']:,} | {r['read_seconds']} | {r['evidently_seconds']} | "
            f"{r['files_seconds']} | {r['total_seconds']} | {r['cpu_seconds']} |"
        )
    lat = results["latency"]
    lines += [
        "",
        f"## /predict while a 10,000-row run is in progress (wrk, {lat['connections']} "
        f"connections, 1 instance per request, {lat['window_seconds']} s windows)",
        "",
        "| drift | windows | p50 (ms) | p99 (ms) | requests/s |",
        "|---|---|---|---|---|",
    ]
    for kind in ("idle", "busy"):
        s = lat[kind]
        lines.append(
            f"| {kind} | {s['windows']} | {s.get('p50_ms_median')} | {s.get('p99_ms_median')} | "
            f"{s.get('requests_per_second_median')} |"
        )
    lines += [
        "",
        f"p99 busy / idle: {lat.get('p99_ratio')}; median run {lat['run_seconds_median']} s",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import bentoml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-tag", default=default_model_tag())
    parser.add_argument("--repeats", type=int, default=3, help="runs per size below 100k")
    parser.add_argument("--cycles", type=int, default=8, help="busy/idle window pairs")
    parser.add_argument("--interval", type=int, default=20, help="DRIFT_INTERVAL_SECONDS")
    parser.add_argument("--window", type=float, default=3.0, help="seconds of load per window")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--note", default="The machine is shared: other work may have been running."
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    model = load_model(bentoml.models.get(args.model_tag))
    work = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "wrk": wrk_version(),
        "model": model.tag,
        "loadavg_before": loadavg(),
        "note": args.note,
    }
    results["latency"] = latency_under_drift(
        model, work, args.cycles, args.interval, args.window, args.connections
    )
    results["runs"] = time_runs(model, work, args.repeats)
    results["loadavg_after"] = loadavg()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "drift.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "drift.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
