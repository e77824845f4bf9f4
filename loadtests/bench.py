"""Side-by-side benchmark on one machine: this service with observability on and off, a bare
BentoML service and MLServer, all serving the same registered model, in alternating rounds.

    python -m loadtests.bench --mlserver var/mlserver-venv/bin/mlserver     # what `make bench` runs
    python -m loadtests.bench --rounds 1 --duration 5 --servers ours,bare   # a quick look

Each round starts every server in turn, checks that it answers what the model answers in
process, warms it up, runs every scenario with ``wrk`` (one thread, fixed connections: the
lightest load generator at hand, since on a small machine the generator competes with the
server), and stops it. Servers alternate within a round so that background load spreads over
all of them. The summary is the median over rounds. Also measured: the model's in-process
``predict_proba`` at 1, 100 and 1000 rows. Results go to ``--output`` as JSON and markdown;
``python -m loadtests.render_results`` puts the table into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from loadtests.payloads import PayloadFactory, v2_inputs
from service.model import MODEL_FILE, LoadedModel, load_model
from service.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = ROOT / "loadtests" / "wrk" / "post.lua"
OFF_ENV_FILE = ROOT / "loadtests" / "observability-off.env"
DEFAULT_OUTPUT = ROOT / "loadtests" / "results"
DEFAULT_WORK = ROOT / "var" / "bench"
DEFAULT_SERVERS = ("ours", "ours_off", "bare", "mlserver")
BASELINE = "bare"


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int  # instances per request
    connections: int
    # Paced at half of the baseline's single-instance saturation (see run_round), not closed-loop.
    half_saturation: bool = False


SCENARIOS = (
    Scenario("single_c16", 1, 16),
    Scenario("single_c64", 1, 64),
    Scenario("batch100_c16", 100, 16),
    Scenario("batch1000_c4", 1000, 4),
    Scenario("single_half_saturation", 1, 32, half_saturation=True),
)
SATURATION_SCENARIO = "single_c64"
BODY_POOL = {1: 512, 100: 20, 1000: 4}  # distinct bodies per size, cycled by wrk


@dataclass(frozen=True)
class ServerSpec:
    name: str
    description: str
    kind: str  # "ours" | "bare" | "mlserver"
    protocol: str  # "instances" ({"instances": [...]}) | "v2" (KServe v2 JSON)
    env: dict[str, str] = field(default_factory=dict)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and ``#`` comments ignored; values taken verbatim."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def server_specs() -> dict[str, ServerSpec]:
    off = read_env_file(OFF_ENV_FILE)
    specs = [
        ServerSpec("ours", "this service, everything on", "ours", "instances"),
        ServerSpec(
            "ours_off", f"this service, observability off ({OFF_ENV_FILE.name})", "ours",
            "instances", off,
        ),
        ServerSpec(
            "ours_v2", "this service, v2 REST infer route, everything on", "ours", "v2"
        ),
        ServerSpec(
            "bare", "bare BentoML, adaptive batching, max_batch_size 6400", "bare", "instances",
            {"BARE_MAX_BATCH_SIZE": "6400"},
        ),
        ServerSpec(
            "bare_b100", "bare BentoML, adaptive batching, default max_batch_size 100", "bare",
            "instances", {"BARE_MAX_BATCH_SIZE": "100"},
        ),
        ServerSpec(
            "bare_nobatch", "bare BentoML, no batching", "bare", "instances",
            {"BARE_BATCHABLE": "false"},
        ),
        ServerSpec(
            "mlserver", "MLServer 1.7 sklearn, 1 worker, adaptive batching (64, 10 ms)",
            "mlserver", "v2", {"MAX_BATCH_SIZE": "64", "MAX_BATCH_TIME": "0.01"},
        ),
        ServerSpec(
            "mlserver_nobatch", "MLServer 1.7 sklearn, 1 worker, no batching", "mlserver", "v2",
            {"MAX_BATCH_SIZE": "0", "MAX_BATCH_TIME": "0"},
        ),
    ]  # fmt: skip
    return {s.name: s for s in specs}


# --- running servers ----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """A server process in its own process group, stopped with SIGTERM to the group."""

    def __init__(
        self, spec: ServerSpec, model: LoadedModel, work: Path, mlserver: Path | None, log: Path
    ) -> None:
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        name = model.contract.model_name
        self.path = f"/v2/models/{name}/infer" if spec.protocol == "v2" else "/predict"
        env = {**os.environ, "MODEL_TAG": model.tag, "BENTOML_DO_NOT_TRACK": "true"}
        bentoml = [str(Path(sys.executable).parent / "bentoml"), "serve"]
        address = ["--port", str(self.port), "--host", "127.0.0.1"]
        self.state: Path | None = None
        if spec.kind == "ours":
            command = [*bentoml, "service.service:CreditRiskService", *address]
            env |= {"WORKERS": "2", "GRPC_PORT": str(free_port())}
            # A fresh prediction log per run: results must not depend on what earlier runs
            # left in the store (or on its schema version).
            self.state = work / "state" / log.stem
            shutil.rmtree(self.state, ignore_errors=True)
            self.state.mkdir(parents=True)
            env |= {
                "PREDICTION_LOG_URL": f"sqlite:///{self.state}/predictions.db",
                "PREDICTION_LOG_SPOOL_DIR": str(self.state / "spool"),
                "DRIFT_SNAPSHOT_DIR": str(self.state / "drift"),
            }
            self.ready = "/readyz"
        elif spec.kind == "bare":
            command = [*bentoml, "loadtests.bare_service:BareService", *address]
            env |= {"BARE_WORKERS": "2"}
            self.ready = "/readyz"
        else:
            if mlserver is None:
                raise RuntimeError("give --mlserver (the mlserver executable of its virtualenv)")
            repo = export_mlserver_model(model, work / f"mlserver-{spec.name}", self.port, spec)
            command = [str(mlserver), "start", str(repo)]
            self.ready = f"/v2/models/{name}/ready"
        env |= spec.env
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited early; see {self.log_path}")
            try:
                if httpx.get(self.url + self.ready, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.spec.name} not ready in {timeout}s; see {self.log_path}")

    def wait_settled(self, timeout: float = 180) -> None:
        """Wait for this service's one-off start-up work beside the requests: the first drift
        run, whose child process imports Evidently (seconds of CPU). The benchmark measures
        the steady state, in which a drift run every DRIFT_INTERVAL_SECONDS still takes place."""
        if self.spec.kind != "ours":
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = httpx.get(self.url + "/drift", timeout=5)
            if answer.status_code == 404 or answer.json().get("status") != "pending":
                return  # drift off, or its first run done
            time.sleep(0.5)
        raise TimeoutError(f"{self.spec.name}: no drift run in {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)


def stop_servers_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, a CI job's cancel, ``kill``) unwind like Ctrl-C, through the
    ``finally`` blocks that stop the servers. They run in sessions of their own, so that one
    signal stops a server's whole process tree; killed outright by the default SIGTERM, a run
    left every server it had started serving."""

    def unwind(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)


def export_mlserver_model(model: LoadedModel, repo: Path, port: int, spec: ServerSpec) -> Path:
    """An MLServer model repository serving the registered ``model.joblib`` unchanged.

    MLServer's sklearn runtime decodes the request with the codec named by ``content_type``:
    ``pd`` (its pandas codec) makes one DataFrame column per v2 input tensor, which is what the
    pipeline expects; ``predict_fn`` makes it answer ``predict_proba`` rather than ``predict``.
    """
    name = model.contract.model_name
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model.path / MODEL_FILE, model_dir / MODEL_FILE)
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        # Its workers' metric files: by default `.metrics` in the working directory, the
        # repository's checkout, where they would be left behind.
        "metrics_dir": str(repo / ".metrics"),
        "parallel_workers": 1,
    }
    model_settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": int(spec.env.get("MAX_BATCH_SIZE", "0")),
        "max_batch_time": float(spec.env.get("MAX_BATCH_TIME", "0")),
        "parameters": {
            "uri": f"./{MODEL_FILE}",
            "version": model.version,
            "content_type": "pd",
            "extra": {"predict_fn": "predict_proba"},
        },
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return repo


# --- payloads and answers -----------------------------------------------------------------------


def encode(protocol: str, model: LoadedModel, instances: list[dict[str, Any]]) -> bytes:
    if protocol == "v2":
        return orjson.dumps({"inputs": v2_inputs(model.contract, instances)})
    return orjson.dumps({"instances": instances})


def scores_of(protocol: str, answer: Any, n: int, score_name: str) -> list[float]:
    """The positive-class probabilities in a server's answer."""
    if protocol == "v2":
        for output in answer["outputs"]:
            data = output["data"]
            if output["datatype"].startswith("FP") and len(data) == 2 * n:
                return list(np.asarray(data).reshape(n, 2)[:, 1])
            if output["datatype"].startswith("FP") and len(data) == n:
                return list(data)
        raise ValueError(f"no probability output in {answer}")
    if isinstance(answer, list):  # the bare service
        return answer
    return [p[score_name] for p in answer["predictions"]]


def check_answers(server: RunningServer, model: LoadedModel, payloads: PayloadFactory) -> None:
    """The server must answer what the model answers in process: same model, same rows."""
    instances = payloads.instances(5)
    body = encode(server.spec.protocol, model, instances)
    response = httpx.post(
        server.url + server.path, content=body, timeout=30,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    response.raise_for_status()
    got = scores_of(server.spec.protocol, response.json(), 5, model.contract.score_name)
    expected = model.score(model.contract.frame(instances))
    if not np.allclose(got, expected, rtol=0, atol=1e-9):
        raise RuntimeError(f"{server.spec.name} answers {got}, the model {list(expected)}")


def write_bodies(
    work: Path, model: LoadedModel, payloads: PayloadFactory, protocols: set[str]
) -> dict[tuple[str, int], Path]:
    """One file of bodies per (protocol, rows): the same instances for every server."""
    files = {}
    for rows, count in BODY_POOL.items():
        batches = [payloads.instances(rows) for _ in range(count)]
        for protocol in protocols:
            path = work / f"bodies-{protocol}-{rows}.jsonl"
            path.write_bytes(b"\n".join(encode(protocol, model, b) for b in batches) + b"\n")
            files[protocol, rows] = path
    return files


# --- measuring ----------------------------------------------------------------------------------


def run_wrk(
    url: str, bodies: Path, connections: int, duration: float, delay_ms: int = 0
) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODIES": str(bodies), "WRK_DELAY_MS": str(delay_ms)}
    base, _, path = url.partition("://")[2].partition("/")
    env["WRK_PATH"] = "/" + path
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
        "-s", str(WRK_SCRIPT), f"http://{base}",
    ]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}{out.stderr}")
    return json.loads(line.removeprefix("WRK_JSON "))


def measurement(wrk: dict[str, Any], rows: int) -> dict[str, float]:
    seconds = wrk["duration_us"] / 1e6
    errors = sum(wrk["errors"].values())
    ok = wrk["requests"] - wrk["errors"]["status"]
    return {
        "requests": wrk["requests"],
        "errors": errors,
        "requests_per_second": round(ok / seconds, 1),
        "instances_per_second": round(ok * rows / seconds, 1),
        "p50_ms": round(wrk["latency_us"]["p50"] / 1000, 2),
        "p90_ms": round(wrk["latency_us"]["p90"] / 1000, 2),
        "p99_ms": round(wrk["latency_us"]["p99"] / 1000, 2),
        "max_ms": round(wrk["latency_us"]["max"] / 1000, 2),
    }


def measure(
    server: RunningServer,
    scenario: Scenario,
    bodies: Path,
    duration: float,
    half_rate: float | None,
) -> dict[str, Any]:
    """One scenario against a server; a paced one is first calibrated to ``half_rate``.

    wrk paces each connection with a fixed delay between a response and the next request, so
    the rate is ``connections / (delay + latency)``: short probes measure the latency at that
    load and correct the delay until the rate is within 5% of the target (the same for every
    server, whatever its latency).
    """
    url = server.url + server.path
    if not scenario.half_saturation or half_rate is None:
        return measurement(run_wrk(url, bodies, scenario.connections, duration), scenario.rows)
    cycle_ms = scenario.connections * 1000 / half_rate
    delay_ms = max(1, round(cycle_ms))
    tried: list[tuple[float, int]] = []  # (distance to the target rate, delay)
    for _ in range(4):
        probe = measurement(run_wrk(url, bodies, scenario.connections, 3, delay_ms), 1)
        rate = probe["requests_per_second"]
        tried.append((abs(rate - half_rate), delay_ms))
        if rate and abs(rate - half_rate) <= 0.05 * half_rate:
            break
        latency_ms = scenario.connections * 1000 / rate - delay_ms if rate else 0
        delay_ms = max(1, round(cycle_ms - max(0, latency_ms)))
    else:
        delay_ms = min(tried)[1]  # not converged (the load moved): the closest probe's delay
    result = measurement(run_wrk(url, bodies, scenario.connections, duration, delay_ms), 1)
    return {**result, "target_rate": round(half_rate, 1), "paced_delay_ms": delay_ms}


def median_in_process(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per row count: the median over rounds, and the fastest round (the model's best case)."""
    result = {}
    for key in rounds[0]:
        per_call = statistics.median(r[key]["ms_per_call"] for r in rounds)
        rows = int(key.removeprefix("rows_"))
        result[key] = {
            "ms_per_call": round(per_call, 3),
            "rows_per_second": round(rows / per_call * 1000, 1),
            "best_ms_per_call": min(r[key]["ms_per_call"] for r in rounds),
        }
    return result


def in_process(model: LoadedModel, payloads: PayloadFactory, seconds: float) -> dict[str, Any]:
    """The model's own ``predict_proba`` on a ready DataFrame: the ceiling for any server."""
    results = {}
    for rows in (1, 100, 1000):
        frame = model.contract.frame(payloads.instances(rows))
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            started = time.perf_counter()
            model.estimator.predict_proba(frame)
            times.append(time.perf_counter() - started)
        per_call = statistics.median(times)
        results[f"rows_{rows}"] = {
            "ms_per_call": round(per_call * 1000, 3),
            "rows_per_second": round(rows / per_call, 1),
            "calls": len(times),
        }
    return results


def progress(message: str) -> None:
    print(message, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, log: Callable[[str], None] = progress) -> dict[str, Any]:
    import bentoml

    specs = server_specs()
    unknown = set(args.servers) - set(specs)
    if unknown:
        raise SystemExit(f"unknown servers {sorted(unknown)}; known: {sorted(specs)}")
    # Now, not at MLServer's turn: that comes after minutes of the other servers' rounds.
    if any(specs[name].kind == "mlserver" for name in args.servers) and not (
        args.mlserver and args.mlserver.is_file()
    ):
        raise SystemExit(
            f"--mlserver {args.mlserver or '(not given)'}: the mlserver executable of its "
            "virtualenv is needed for the mlserver servers; `make bench` installs it"
        )
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk); `make bench` installs it")
    chosen = [specs[name] for name in args.servers]
    work = args.work
    (work / "logs").mkdir(parents=True, exist_ok=True)

    model = load_model(bentoml.models.get(args.model_tag))
    payloads = PayloadFactory.from_model(model, seed=args.seed)
    bodies = write_bodies(work, model, payloads, {s.protocol for s in chosen})
    started_at = datetime.now(UTC)
    load_before = loadavg()
    log(f"model {model.tag}; load average {load_before}")

    # The baseline runs first in each round: its saturation sets that round's half-saturation
    # rate, the same for every server.
    baseline = BASELINE if BASELINE in args.servers else chosen[0].name
    order = sorted(chosen, key=lambda s: s.name != baseline)
    runs: list[dict[str, Any]] = []
    in_process_rounds: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        # In process too, every round: on a shared machine one measurement is one moment's load.
        in_process_rounds.append(in_process(model, payloads, args.in_process_seconds))
        log(f"round {round_no}/{args.rounds}: in process {json.dumps(in_process_rounds[-1])}")
        half_rate: float | None = None
        for spec in order:
            log(f"round {round_no}/{args.rounds}: {spec.name}")
            server = RunningServer(
                spec, model, work, args.mlserver, work / "logs" / f"{spec.name}-{round_no}.log"
            )
            try:
                server.wait_ready()
                server.wait_settled()
                check_answers(server, model, payloads)
                run_wrk(server.url + server.path, bodies[spec.protocol, 1], 16, args.warmup)
                for scenario in SCENARIOS:
                    if scenario.half_saturation and half_rate is None:
                        continue
                    load = loadavg()
                    result = measure(server, scenario, bodies[spec.protocol, scenario.rows],
                                     args.duration, half_rate)  # fmt: skip
                    runs.append(
                        {
                            "round": round_no,
                            "server": spec.name,
                            "scenario": scenario.name,
                            "loadavg_1m": load[0],
                            **result,
                        }
                    )
                    log(f"  {scenario.name}: {result}")
                    if spec.name == baseline and scenario.name == SATURATION_SCENARIO:
                        half_rate = result["requests_per_second"] / 2
            finally:
                server.stop()

    results = {
        "date": started_at.isoformat(timespec="seconds"),
        "duration_minutes": round((datetime.now(UTC) - started_at).total_seconds() / 60, 1),
        "machine": machine(),
        "load": {
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "note": args.load_note,
        },
        "model": model.tag,
        "settings": {
            "rounds": args.rounds,
            "seconds_per_scenario": args.duration,
            "load_generator": wrk_version() + ", 1 thread",
            "scenarios": [asdict(s) for s in SCENARIOS],
            "servers": {s.name: s.description for s in chosen},
            "observability_off_env": read_env_file(OFF_ENV_FILE),
        },
        "in_process_predict_proba": median_in_process(in_process_rounds),
        "in_process_rounds": in_process_rounds,
        "runs": runs,
    }
    results["summary"] = summarize(runs)
    results["targets"] = evaluate_targets(results)
    return results


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Median of each figure over rounds, per server and scenario, with ratios to the baseline."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    keys = ("requests_per_second", "instances_per_second", "p50_ms", "p99_ms", "errors")
    for run in runs:
        summary.setdefault(run["server"], {}).setdefault(run["scenario"], {})
    for server, scenarios in summary.items():
        for scenario in scenarios:
            mine = [r for r in runs if r["server"] == server and r["scenario"] == scenario]
            scenarios[scenario] = {k: statistics.median(r[k] for r in mine) for k in keys}
            if all("target_rate" in r for r in mine):
                scenarios[scenario]["target_rate"] = statistics.median(
                    r["target_rate"] for r in mine
                )
            scenarios[scenario]["rounds"] = len(mine)
    for scenarios in summary.values():
        for scenario, figures in scenarios.items():
            base = summary.get(BASELINE, {}).get(scenario)
            if base and base["requests_per_second"]:
                ratio = figures["requests_per_second"] / base["requests_per_second"]
                figures["throughput_vs_bare"] = round(ratio, 2)
                figures["p99_vs_bare"] = round(figures["p99_ms"] / base["p99_ms"], 2)
    return summary


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 9's targets, checked against this run (None: a server needed was not run)."""
    s = results["summary"]

    def fig(server: str, scenario: str, key: str) -> float | None:
        return s.get(server, {}).get(scenario, {}).get(key)

    def best(prefix: str, scenario: str, key: str) -> float | None:
        values = [v[scenario][key] for k, v in s.items() if k.startswith(prefix) and scenario in v]
        return max(values) if values else None

    targets = []

    def target(name: str, value: float | None, bound: float | None, higher: bool) -> None:
        met = None
        if value is not None and bound is not None:
            met = value >= bound if higher else value <= bound
        targets.append({"target": name, "value": value, "bound": bound, "met": met})

    ours_c64 = fig("ours", "single_c64", "requests_per_second")
    target("single c=64 req/s >= best bare BentoML", ours_c64, best("bare", "single_c64",
           "requests_per_second"), True)  # fmt: skip
    mlserver_best = best("mlserver", "single_c64", "requests_per_second")
    target("single c=64 req/s >= 1.3x best MLServer", ours_c64,
           None if mlserver_best is None else 1.3 * mlserver_best, True)  # fmt: skip
    target("100-instance batches >= 40,000 instances/s", fig("ours", "batch100_c16",
           "instances_per_second"), 40_000, True)  # fmt: skip
    target("100-instance batches on the v2 infer route >= 40,000 instances/s", fig("ours_v2",
           "batch100_c16", "instances_per_second"), 40_000, True)  # fmt: skip
    bare_p99 = fig(BASELINE, "single_half_saturation", "p99_ms")
    target("p99 at half saturation <= 1.2x bare BentoML's", fig("ours",
           "single_half_saturation", "p99_ms"), None if bare_p99 is None else 1.2 * bare_p99,
           False)  # fmt: skip
    for scenario in ("single_c64", "batch100_c16", "batch1000_c4"):
        off = fig("ours_off", scenario, "requests_per_second")
        target(f"{scenario}: observability on >= 90% of off", fig("ours", scenario,
               "requests_per_second"), None if off is None else 0.9 * off, True)  # fmt: skip
    in_proc = results["in_process_predict_proba"]["rows_1000"]["rows_per_second"]
    target("1000-instance batches >= 50% of in-process predict_proba rows/s", fig("ours",
           "batch1000_c4", "instances_per_second"), 0.5 * in_proc, True)  # fmt: skip
    return targets


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).split("[")[0].strip() or "wrk"


def write_results(output: Path, stem: str, results: dict[str, Any], table: str) -> None:
    """``<stem>.json`` (everything) and ``<stem>.md`` (the table) in ``output``; print the table."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / f"{stem}.md").write_text(table)
    print(table)
    print(f"written: {output / f'{stem}.json'}, {output / f'{stem}.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per server")
    parser.add_argument("--in-process-seconds", type=float, default=2)
    parser.add_argument(
        "--servers",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        default=list(DEFAULT_SERVERS),
        help=f"comma-separated, from: {', '.join(server_specs())}",
    )
    parser.add_argument("--mlserver", type=Path, help="the mlserver executable (its own venv)")
    parser.add_argument("--model-tag", default=get_settings().model_tag)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="logs, bodies, repos")
    parser.add_argument(
        "--load-note",
        default=os.environ.get("BENCH_LOAD_NOTE", ""),
        help="what else ran on the machine (recorded with the results)",
    )
    args = parser.parse_args(argv)

    from loadtests.render_results import markdown

    stop_servers_on_sigterm()
    results = run(args)
    write_results(args.output, "bench", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
