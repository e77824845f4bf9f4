"""The locust scenarios run headless against the served process, so the harness cannot rot:
every user class answers correctly, reports are written and the SLO check decides the exit code."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests.slo import SLO_MISSED_EXIT_CODE
from models.contract import CONTRACT
from service.contract import CategoricalFeature
from tests.support import ROOT, VENV_BIN, ServedService, example_rows, free_port, wait_until
from tests.tls_proxy import TlsProxy, write_private_ca

# Latency is the machine's business here (CI shares its cores); correctness is not: no error.
LOOSE_SLO = ("--slo-p99-ms", "10000", "--slo-error-rate", "0")


def two_drifts() -> tuple[str, str]:
    """Two different --drift specs of the served model's contract (whatever model a fork
    serves): its first categorical feature moved to its first and to its last category, else
    its first feature scaled twice differently."""
    feature = next(iter(CONTRACT.of_kind("categorical")), CONTRACT.features[0])
    if isinstance(feature, CategoricalFeature):
        return f"{feature.name}={feature.categories[0]}", f"{feature.name}={feature.categories[-1]}"
    return f"{feature.name}*1.5", f"{feature.name}*2"


def locust_command(
    served: ServedService, reports: Path, *args: str, locustfile: str = "locustfile.py"
) -> list[str]:
    """A short headless run against ``served``; a later option in ``args`` overrides its own."""
    # The first prediction of a fresh process pays for lazy imports: not the load test's business.
    httpx.post(f"{served.url}/predict", json={"instances": example_rows(1)}, timeout=60)
    return [
        str(VENV_BIN / "locust"),
        "-f",
        f"loadtests/{locustfile}",
        "--host",
        served.url,
        "--headless",
        "--users",
        "8",
        "--spawn-rate",
        "8",
        "--run-time",
        "5s",
        "--stop-timeout",
        "10",
        "--user-rps",
        "0",
        "--batch-size",
        "20",
        "--csv",
        str(reports / "run"),
        "--html",
        str(reports / "run.html"),
        "--json-file",
        str(reports / "run"),  # locust appends .json
        *args,
    ]


def run_locust(
    served: ServedService, reports: Path, *args: str, locustfile: str = "locustfile.py"
) -> subprocess.CompletedProcess[str]:
    command = locust_command(served, reports, *args, locustfile=locustfile)
    return subprocess.run(
        command, cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=120
    )


def diagnostics(reports: Path, result: subprocess.CompletedProcess[str]) -> str:
    """What to read when a run fails: locust's failure table and the end of its log."""
    failures = reports / "run_failures.csv"
    table = failures.read_text() if failures.exists() else "(no failures file)"
    return f"exit {result.returncode}\n{table}\n{result.stderr[-3000:]}"


def stats_by_name(reports: Path) -> dict[str, dict[str, Any]]:
    """Final per-name stats (the JSON file is written after in-flight requests finished;
    the CSV can miss requests that complete during the graceful stop)."""
    entries = json.loads((reports / "run.json").read_text())
    stats = {e["name"]: e for e in entries}
    stats["Aggregated"] = {
        "num_requests": sum(e["num_requests"] for e in entries),
        "num_failures": sum(e["num_failures"] for e in entries),
    }
    return stats


def test_mixed_scenario_meets_a_loose_slo(served: ServedService, tmp_path: Path) -> None:
    # Error budget 0: every valid request answered, every invalid one refused exactly as expected.
    result = run_locust(served, tmp_path, *LOOSE_SLO)
    why = diagnostics(tmp_path, result)
    assert result.returncode == 0, why
    assert "SLO met" in result.stderr, why
    assert "payloads from the reference data" in result.stderr, why
    stats = stats_by_name(tmp_path)
    for name in ("/predict [1]", "/predict [20]", "/predict [1] drifted", "Aggregated"):
        assert stats[name]["num_requests"] > 0, (name, why)
        assert stats[name]["num_failures"] == 0, (name, why)
    assert any(name.startswith("/predict invalid:") for name in stats)
    verdict = json.loads((tmp_path / "run_slo.json").read_text())
    assert verdict["passed"] is True
    assert 0 < verdict["requests"] <= stats["Aggregated"]["num_requests"]
    assert (tmp_path / "run_stats.csv").read_text().startswith("Type,Name,Request Count")
    assert "<html" in (tmp_path / "run.html").read_text()[:1000].lower()


def log_time(stderr: str, message: str) -> datetime:
    """When locust logged the line holding ``message`` (its ``[YYYY-mm-dd HH:MM:SS,mmm]``)."""
    line = next(line for line in stderr.splitlines() if message in line)
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def test_the_run_lasts_its_run_time(served: ServedService, tmp_path: Path) -> None:
    # The target's discovery blocks gevent's loop before the run-time timer is armed: those
    # seconds must not be taken off the run (they were, 2 to 3 s of a 5 s run).
    result = run_locust(served, tmp_path, *LOOSE_SLO, "SteadyUser")
    why = diagnostics(tmp_path, result)
    assert result.returncode == 0, why
    armed = log_time(result.stderr, "Run time limit set to 5 seconds")
    reached = log_time(result.stderr, "--run-time limit reached")
    assert (reached - armed).total_seconds() >= 4.9, why


def test_requests_without_an_answer_are_reported_with_the_clients_error(
    model_tag: str, tmp_path: Path
) -> None:
    # The service stops mid-run: its requests fail without any HTTP answer, and the failures must
    # say why (they read "HTTP 0: ", nothing more).
    service = ServedService(workers=1).start()
    try:
        # The service is stopped about 2 s into the run (its first answers written to the stats,
        # then SIGTERM); the rest of the run is the refused requests this is about.
        paced = ("--user-rps", "5", "--run-time", "8s")
        command = locust_command(service, tmp_path, *LOOSE_SLO, *paced, "SteadyUser", "InvalidUser")
        locust = subprocess.Popen(
            command, cwd=ROOT, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        stats = tmp_path / "run_stats.csv"
        # The run has had answers before the service goes away.
        wait_until(
            lambda: stats.exists() and "/predict [1]," in stats.read_text(),
            timeout=60,
            interval=0.2,
        )
    finally:
        service.stop()
    output, _ = locust.communicate(timeout=120)
    why = f"exit {locust.returncode}\n{output.decode(errors='replace')[-3000:]}"
    with (tmp_path / "run_failures.csv").open() as rows:
        failures = [(row["Name"], row["Error"]) for row in csv.DictReader(rows)]
    assert locust.returncode == SLO_MISSED_EXIT_CODE, why
    refused = "no answer: ConnectionRefusedError(111, 'Connection refused')"
    assert ("/predict [1]", f'CatchResponseError("{refused}")') in failures, failures
    assert any(
        name.startswith("/predict invalid:") and error.endswith(f'; got {refused}")')
        for name, error in failures
    ), failures
    assert not [error for _, error in failures if "HTTP 0" in error], failures


def test_an_impossible_slo_fails_the_run(served: ServedService, tmp_path: Path) -> None:
    result = run_locust(served, tmp_path, "--slo-p99-ms", "0.001", "SteadyUser")
    assert result.returncode == SLO_MISSED_EXIT_CODE, diagnostics(tmp_path, result)
    assert "SLO MISSED (p99 latency" in result.stderr
    verdict = json.loads((tmp_path / "run_slo.json").read_text())
    assert verdict["passed"] is False
    assert verdict["requests"] > 0
    assert verdict["failures"] == 0


def test_refused_requests_miss_the_error_budget(served: ServedService, tmp_path: Path) -> None:
    # Batches over MAX_BATCH_SIZE (1000) are refused with 413: the SLO must catch the errors
    # even though the latency objective is met.
    result = run_locust(
        served, tmp_path, "--slo-p99-ms", "10000", "--batch-size", "1001", "BatchUser", "SteadyUser"
    )
    assert result.returncode == SLO_MISSED_EXIT_CODE, diagnostics(tmp_path, result)
    assert "SLO MISSED (error rate" in result.stderr
    stats = stats_by_name(tmp_path)
    assert stats["/predict [1001]"]["num_failures"] == stats["/predict [1001]"]["num_requests"]
    assert stats["/predict [1]"]["num_failures"] == 0


def test_invalid_users_too_large_batch_exceeds_the_limit_the_service_states(
    served: ServedService,
) -> None:
    # The served document says 1000; a MAX_BATCH_SIZE of 3 in the load generator's environment
    # is only the fallback for a service that states none.
    script = f"""
import locust  # noqa: F401  (first: it monkey-patches what loadtests.common imports)
from argparse import Namespace
from loadtests.common import ASK_THE_SERVICE, _batch_limit

print(_batch_limit({served.url!r}, Namespace(max_batch_size=ASK_THE_SERVICE)))
print(_batch_limit("http://127.0.0.1:9", Namespace(max_batch_size=ASK_THE_SERVICE)))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MAX_BATCH_SIZE": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1000", "3"], result.stderr[-2000:]


def test_with_several_processes_only_the_master_judges(
    served: ServedService, tmp_path: Path
) -> None:
    # A worker's own totals are what it has not yet reported: nothing, at the end.
    result = run_locust(served, tmp_path, *LOOSE_SLO, "--processes", "2", "SteadyUser")
    why = diagnostics(tmp_path, result)
    assert result.returncode == 0, why
    verdicts = [line for line in result.stderr.splitlines() if "/loadtests: SLO" in line]
    assert len(verdicts) == 1, why
    assert "SLO met" in verdicts[0], why
    assert json.loads((tmp_path / "run_slo.json").read_text())["passed"] is True


def test_v2_rest_scenario(served: ServedService, tmp_path: Path) -> None:
    result = run_locust(
        served,
        tmp_path,
        *LOOSE_SLO,
        "V2RestUser",
        locustfile="locustfile_v2.py",
    )
    why = diagnostics(tmp_path, result)
    assert result.returncode == 0, why
    infer = stats_by_name(tmp_path)["/v2/models/[model]/infer [20]"]
    assert infer["num_requests"] > 0, why
    assert infer["num_failures"] == 0, why


def test_grpc_scenario(served: ServedService, tmp_path: Path) -> None:
    result = run_locust(
        served,
        tmp_path,
        *LOOSE_SLO,
        "--grpc-target",
        f"127.0.0.1:{served.grpc_port}",
        "GrpcUser",
        locustfile="locustfile_v2.py",
    )
    why = diagnostics(tmp_path, result)
    assert result.returncode == 0, why
    infer = stats_by_name(tmp_path)["ModelInfer [20]"]
    assert infer["num_requests"] > 0, why
    assert infer["num_failures"] == 0, why


# In a child process: importing locust monkey-patches the standard library with gevent.
CONNECTIONS_SCRIPT = """
import sys
import psutil
from loadtests.locustfile_v2 import GrpcClient

port = int(sys.argv[1])
clients = [GrpcClient(f"127.0.0.1:{port}") for _ in range(3)]
for client in clients:
    assert client.is_server_live()
connections = [
    c for c in psutil.Process().net_connections("tcp")
    if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
]
print(len(connections))
for client in clients:
    client.close()
"""


def test_each_grpc_user_has_a_connection_of_its_own(served: ServedService) -> None:
    """gRPC shares one connection among a process's channels to the same target: the users of a
    run would all load one worker of the server, the kernel spreading connections, not calls."""
    result = subprocess.run(
        [sys.executable, "-c", CONNECTIONS_SCRIPT, str(served.grpc_port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "3", result.stdout


def test_a_grpc_server_that_does_not_answer_is_counted_as_failures(
    served: ServedService, tmp_path: Path
) -> None:
    # Nothing listens on port 9. Every GrpcUser raised at its start (its model metadata read
    # there) and sent nothing: the failures table said nothing of why. Its metadata read is now a
    # request that fails with the reason, and the run misses its error budget.
    result = run_locust(
        served,
        tmp_path,
        *LOOSE_SLO,
        "--grpc-target",
        "127.0.0.1:9",
        "V2RestUser",
        "GrpcUser",
        locustfile="locustfile_v2.py",
    )
    why = diagnostics(tmp_path, result)
    assert result.returncode == SLO_MISSED_EXIT_CODE, why
    stats = stats_by_name(tmp_path)
    assert stats["ModelMetadata"]["num_failures"] == stats["ModelMetadata"]["num_requests"] > 0
    assert stats["/v2/models/[model]/infer [20]"]["num_failures"] == 0, why
    failures = (tmp_path / "run_failures.csv").read_text()
    assert "UNAVAILABLE" in failures, why
    assert "Connection refused" in failures, why
    assert "exception(s)" not in result.stderr, why


# A user that raises whatever it is given, beside the real scenarios.
RAISING_LOCUSTFILE = """
from locust import User, task


class RaisingUser(User):
    def on_start(self) -> None:
        raise RuntimeError("a user that raised")

    @task
    def nothing(self) -> None:
        pass
"""


def test_a_user_that_raised_fails_the_run_even_with_the_slo_met(
    served: ServedService, tmp_path: Path
) -> None:
    # The RaisingUsers send nothing, while the SteadyUsers meet the SLO: the run must not pass.
    raising = tmp_path / "raising.py"
    raising.write_text(RAISING_LOCUSTFILE)
    result = run_locust(
        served,
        tmp_path,
        *LOOSE_SLO,
        "SteadyUser",
        "RaisingUser",
        locustfile=f"locustfile.py,{raising}",
    )
    why = diagnostics(tmp_path, result)
    assert result.returncode == 1, why
    assert "SLO met" in result.stderr, why
    assert "exception(s), logged above: exit code 1" in result.stderr, why


def grpc_tls_run(
    served: ServedService, reports: Path, proxy: TlsProxy, *tls: str, run_time: str = "3s"
) -> tuple[subprocess.CompletedProcess[str], str, dict[str, dict[str, Any]]]:
    """A GrpcUser run through ``proxy`` with the TLS options ``tls``: locust, why, stats."""
    result = run_locust(
        served,
        reports,
        *LOOSE_SLO,
        "--users",
        "2",
        "--spawn-rate",
        "2",
        "--run-time",
        run_time,
        "--grpc-target",
        f"127.0.0.1:{proxy.port}",
        *tls,
        "GrpcUser",
        locustfile="locustfile_v2.py",
    )
    return result, diagnostics(reports, result), stats_by_name(reports)


def test_grpc_user_calls_through_a_tls_terminating_proxy(
    served: ServedService, tmp_path: Path
) -> None:
    # The way production is reached: TLS to an ingress, which forwards plaintext gRPC to the
    # service. The proxy's certificate names models.test, of a private CA, not 127.0.0.1.
    ca, certificate, key = write_private_ca(tmp_path, "models.test")
    with TlsProxy(served.grpc_port, certificate, key) as proxy:
        trusted = tmp_path / "trusted"
        result, why, stats = grpc_tls_run(
            served,
            trusted,
            proxy,
            "--grpc-tls",
            "--grpc-root-certificates",
            str(ca),
            "--grpc-server-name",
            "models.test",
        )
        assert result.returncode == 0, why
        assert stats["ModelInfer [20]"]["num_requests"] > 0, why
        assert stats["Aggregated"]["num_failures"] == 0, why
        assert set(proxy.server_names) == {"models.test"}, proxy.server_names

        # gRPC's public roots do not trust the private CA: each call fails, counted and named.
        # A refused handshake fails at once, and the user tries again at once: a second of run
        # counts many.
        untrusted = tmp_path / "untrusted"
        result, why, stats = grpc_tls_run(
            served,
            untrusted,
            proxy,
            "--grpc-tls",
            "--grpc-server-name",
            "models.test",
            run_time="1s",
        )
        assert result.returncode == SLO_MISSED_EXIT_CODE, why
        assert stats["ModelMetadata"]["num_failures"] == stats["ModelMetadata"]["num_requests"]
        assert stats["ModelMetadata"]["num_requests"] > 0, why
        assert "ModelInfer [20]" not in stats, why
        failures = (untrusted / "run_failures.csv").read_text()
        assert "UNAVAILABLE" in failures, why
        assert "CERTIFICATE_VERIFY_FAILED" in failures, why
        assert "exception(s)" not in result.stderr, why

        # Trusted, but the certificate does not name 127.0.0.1, the target: refused as well.
        unnamed = tmp_path / "unnamed"
        result, why, stats = grpc_tls_run(
            served, unnamed, proxy, "--grpc-tls", "--grpc-root-certificates", str(ca), run_time="1s"
        )
        assert result.returncode == SLO_MISSED_EXIT_CODE, why
        assert stats["Aggregated"]["num_requests"] == stats["Aggregated"]["num_failures"] > 0
        assert "Hostname Verification Check failed" in (unnamed / "run_failures.csv").read_text()


def test_a_refused_grpc_call_is_reported_with_its_status_and_reason(
    served: ServedService, tmp_path: Path
) -> None:
    # Locust names a failure by the exception's repr; tritonclient's alone says nothing.
    result = run_locust(
        served,
        tmp_path,
        *LOOSE_SLO,
        "--grpc-target",
        f"127.0.0.1:{served.grpc_port}",
        "--batch-size",
        "1001",  # one more than the service's MAX_BATCH_SIZE
        "GrpcUser",
        locustfile="locustfile_v2.py",
    )
    why = diagnostics(tmp_path, result)
    assert result.returncode == SLO_MISSED_EXIT_CODE, why
    failures = (tmp_path / "run_failures.csv").read_text()
    assert "INVALID_ARGUMENT" in failures, why
    assert "the batch has 1001 instances" in failures, why


def test_the_web_ui_runs_against_the_host_and_options_of_its_form(
    served: ServedService, tmp_path: Path
) -> None:
    # Started without --host, as docs/benchmarks.md's web UI invites: the form gives the host (every
    # user raised "give the service's URL with --host") and the options, which can change
    # between runs (the drift of the first run was kept).
    web_port = free_port()
    web = f"http://127.0.0.1:{web_port}"
    httpx.post(f"{served.url}/predict", json={"instances": example_rows(1)}, timeout=60)
    command = [str(VENV_BIN / "locust"), "-f", "loadtests/locustfile.py", "--web-host"]
    command += ["127.0.0.1", "--web-port", str(web_port)]
    log = (tmp_path / "locust.log").open("wb")
    locust = subprocess.Popen(command, cwd=ROOT, env=os.environ, stdout=log, stderr=log)

    def run(drift: str) -> dict[str, Any]:
        form = {"user_count": "14", "spawn_rate": "14", "host": served.url, "drift": drift}
        assert httpx.post(f"{web}/swarm", data=form, timeout=10).json()["success"]
        deadline = time.monotonic() + 60
        while True:
            stats = httpx.get(f"{web}/stats/requests", timeout=10).json()
            names = {s["name"]: s for s in stats["stats"]}
            if names.get("/predict [1] drifted", {}).get("num_requests", 0) >= 3:
                break
            assert time.monotonic() < deadline, (stats, (tmp_path / "locust.log").read_text())
            time.sleep(0.5)
        httpx.post(f"{web}/stop", timeout=30)
        return stats

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(web, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "locust.log").read_text()
                time.sleep(0.2)
        for drift in two_drifts():
            stats = run(drift)
            why = (stats, (tmp_path / "locust.log").read_text()[-3000:])
            assert stats["total_fail_per_sec"] == 0, why
            assert all(s["num_failures"] == 0 for s in stats["stats"]), why
            assert httpx.get(f"{web}/exceptions", timeout=10).json()["exceptions"] == [], why
    finally:
        locust.terminate()
        locust.wait(30)
        log.close()
    output = (tmp_path / "locust.log").read_text()
    # Each run's drift, as the form gave it (the log writes shifts as --drift does).
    for drift in two_drifts():
        assert f"drift: {drift}" in output, output[-3000:]


def test_a_host_with_a_trailing_slash_is_loaded(served: ServedService, tmp_path: Path) -> None:
    # Locust's FastHttp client joins host and path as they are: every request was to '//predict'
    # and raised ("invalid request URI"), so nothing was sent.
    result = run_locust(
        served,
        tmp_path,
        *LOOSE_SLO,
        "--host",
        served.url + "/",
        "SteadyUser",
        "V2RestUser",
        locustfile="locustfile.py,loadtests/locustfile_v2.py",
    )
    why = diagnostics(tmp_path, result)
    assert result.returncode == 0, why
    stats = stats_by_name(tmp_path)
    assert stats["/predict [1]"]["num_requests"] > 0, why
    assert stats["/v2/models/[model]/infer [20]"]["num_requests"] > 0, why


def test_a_service_that_does_not_answer_is_named_in_one_clear_error(tmp_path: Path) -> None:
    # The first thing a run does is read the contract (GET /model): with the service down or a
    # wrong --host, that printed some 80 lines of chained urllib3 and requests tracebacks.
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    command = [str(VENV_BIN / "locust"), "-f", "loadtests/locustfile.py", "--host", host]
    command += ["--headless", "-u", "1", "-r", "1", "-t", "5s", "SteadyUser"]
    result = subprocess.run(
        command, cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert f"the service at {host} does not answer (GET {host}/model: " in result.stderr
    assert "Connection refused" in result.stderr, result.stderr
    assert "is it running? Give its URL with --host" in result.stderr, result.stderr
    assert "During handling of the above exception" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) < 20, result.stderr
