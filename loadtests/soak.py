"""Two of the benchmark's targets that need long or complete runs, with everything on:

1. Zero prediction-log loss at saturation: single-instance requests at c=64 for a while, then
   SIGTERM; every instance the service counted as answered (``model_predictions_total``) must be
   a row of the prediction log, and ``prediction_log_rows_dropped_total`` must stay 0.
2. Memory flat over a soak at half of saturation: the workers' resident memory, sampled every
   10 s, compared between the first and the last minute (target: within 5 %). The soak follows
   a warm-up at the same load (``--warmup-minutes``, sampled and reported too): a fresh worker's
   memory grows for its first minutes (allocator arenas, caches reaching their working size)
   and then stays put; a leak keeps growing through the soak.

    python -m loadtests.soak                       # 3-minute warm-up, 10-minute soak
    python -m loadtests.soak --soak-minutes 2 --warmup-minutes 1   # a quick look

Results go to ``loadtests/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from loadtests.bench import (
    DEFAULT_OUTPUT,
    DEFAULT_WORK,
    RunningServer,
    Scenario,
    check_answers,
    loadavg,
    machine,
    measure,
    run_wrk,
    server_specs,
    stop_servers_on_sigterm,
    write_bodies,
)
from loadtests.payloads import PayloadFactory
from service.metrics import REQUEST_FLUSH_SECONDS
from service.model import load_model
from service.predlog.store import Store
from service.settings import default_model_tag

SAMPLE_SECONDS = 10.0


def metric_total(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def settled_total(url: str, name: str, timeout: float = 30.0) -> float:
    """The metric's total once it stops changing: each worker applies its counts every
    REQUEST_FLUSH_SECONDS, so right after a load the last second's may not be in yet."""
    deadline = time.monotonic() + timeout
    last = metric_total(url, name)
    while time.monotonic() < deadline:
        time.sleep(REQUEST_FLUSH_SECONDS + 0.5)
        now = metric_total(url, name)
        if now == last:
            break
        last = now
    return last


def workers_rss(server: RunningServer) -> int:
    """Resident memory of the serving processes (BentoML's arbiter and its workers)."""
    root = psutil.Process(server.proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def loss_at_saturation(
    server: RunningServer, bodies: Path, seconds: float, log_url: str
) -> dict[str, Any]:
    result = run_wrk(server.url + server.path, bodies, 64, seconds)
    answered = settled_total(server.url, "model_predictions_total")
    # The writer counts these itself, as it goes: no flush to wait for.
    dropped = metric_total(server.url, "prediction_log_rows_dropped_total")
    spooled = metric_total(server.url, "prediction_log_rows_spooled_total")
    server.stop()  # SIGTERM: answer what was accepted, flush the log
    store = Store(log_url)
    try:
        rows = store.summary()["predictions"]["rows"]
    finally:
        store.close()
    return {
        "seconds": seconds,
        "requests": result["requests"],
        "instances_answered": answered,
        "rows_in_log": rows,
        "rows_spooled": spooled,
        "rows_dropped": dropped,
        "lossless": rows == answered and dropped == 0,
    }


def soak(
    server: RunningServer, bodies: Path, minutes: float, warmup_minutes: float, half_rate: float
) -> dict[str, Any]:
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            samples.append((time.monotonic() - started, workers_rss(server)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    scenario = Scenario("soak", 1, 32, half_saturation=True)
    if warmup_minutes > 0:
        measure(server, scenario, bodies, warmup_minutes * 60, half_rate)
    soak_started = time.monotonic() - started
    result = measure(server, scenario, bodies, minutes * 60, half_rate)
    done.set()
    sampler.join()
    per_minute = int(60 / SAMPLE_SECONDS)
    soaked = [rss for t, rss in samples if t > soak_started]
    first = statistics.mean(soaked[:per_minute])
    last = statistics.mean(soaked[-per_minute:])
    return {
        "minutes": minutes,
        "warmup_minutes": warmup_minutes,
        **result,
        "rss_first_minute_mb": round(first / 2**20, 1),
        "rss_last_minute_mb": round(last / 2**20, 1),
        "rss_growth": round(last / first - 1, 4),
        "flat_within_5_percent": abs(last / first - 1) <= 0.05,
        # (seconds since the warm-up began, MB); the soak begins at soak_started_seconds
        "soak_started_seconds": round(soak_started),
        "rss_samples_mb": [(round(t), round(rss / 2**20, 1)) for t, rss in samples],
    }


def main(argv: list[str] | None = None) -> int:
    import bentoml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-tag", default=default_model_tag())
    parser.add_argument("--soak-minutes", type=float, default=10)
    parser.add_argument(
        "--warmup-minutes", type=float, default=3, help="at the soak's load, before it"
    )
    parser.add_argument("--saturation-seconds", type=float, default=60)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT / "soak.json")
    args = parser.parse_args(argv)
    if args.soak_minutes < 2:
        # Memory is compared between the soak's first and last minute, sampled every 10 s: a
        # shorter soak compared a minute with itself, or had no sample and failed only after the
        # saturation run.
        parser.error(f"--soak-minutes must be at least 2 (got {args.soak_minutes:g})")
    stop_servers_on_sigterm()

    work = DEFAULT_WORK / "soak"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    model = load_model(bentoml.models.get(args.model_tag))
    payloads = PayloadFactory.from_model(model, seed=7)
    bodies = write_bodies(work, model, payloads, {"instances"})[("instances", 1)]
    spec = server_specs()["ours"]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg_before": loadavg(),
        "model": model.tag,
    }

    with tempfile.TemporaryDirectory() as state:
        log_url = f"sqlite:///{state}/predictions.db"
        spec.env.update(PREDICTION_LOG_URL=log_url, PREDICTION_LOG_SPOOL_DIR=f"{state}/spool")
        server = RunningServer(spec, model, work, None, work / "logs" / "soak.log")
        try:
            server.wait_ready()
            check_answers(server, model, payloads)
            saturation = run_wrk(server.url + server.path, bodies, 64, 20)
            rate = (saturation["requests"] - saturation["errors"]["status"]) / (
                saturation["duration_us"] / 1e6
            )
            print(
                f"saturation {rate:.0f} req/s; at half of it, {args.warmup_minutes} min of "
                f"warm-up, then {args.soak_minutes} min of soak"
            )
            results["saturation_requests_per_second"] = round(rate, 1)
            results["soak"] = soak(server, bodies, args.soak_minutes, args.warmup_minutes, rate / 2)
            print(json.dumps({k: v for k, v in results["soak"].items() if k != "rss_samples_mb"}))
        finally:
            server.stop()
        # A fresh log for the loss check, so that its rows are exactly this run's.
        log_url = f"sqlite:///{state}/saturation.db"
        spec.env.update(PREDICTION_LOG_URL=log_url)
        server = RunningServer(spec, model, work, None, work / "logs" / "saturation.log")
        try:
            server.wait_ready()
            results["loss_at_saturation"] = loss_at_saturation(
                server, bodies, args.saturation_seconds, log_url
            )
            print(json.dumps(results["loss_at_saturation"]))
        finally:
            server.stop()
    results["loadavg_after"] = loadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    ok = results["soak"]["flat_within_5_percent"] and results["loss_at_saturation"]["lossless"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
