"""The benchmark tools stop the servers they started when they are stopped themselves.

bench, overhead and soak start each server in a session of its own (one signal stops the
server's whole tree); a run stopped by SIGTERM (``timeout``, a CI job's cancel) used to leave
them serving. Served: a real ``python -m loadtests.overhead`` run and its ``bentoml serve``.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import ROOT, wait_until


def _port(log: Path) -> int | None:
    found = re.search(r"listening on http://[^:]+:(\d+)", log.read_text()) if log.exists() else None
    return int(found.group(1)) if found else None


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_sigterm_stops_the_servers_the_run_started(tmp_path: Path, model_tag: str) -> None:
    work = tmp_path / "work"
    command = [
        sys.executable, "-m", "loadtests.overhead", "--model-tag", model_tag, "--variants", "off",
        "--scenarios", "single_c16", "--reps", "1", "--duration", "120",
        "--work", str(work), "--output", str(tmp_path / "results"),
    ]  # fmt: skip
    output = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        log = work / "logs" / "overhead-off.log"

        def started() -> int | None:
            assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            return _port(log)

        port = wait_until(started, timeout=120, interval=0.5)
        wait_until(lambda: _ready(port), timeout=180, interval=0.5)

        run.send_signal(signal.SIGTERM)

        assert run.wait(90) == 128 + signal.SIGTERM
        assert wait_until(lambda: _refused(port), timeout=60, interval=0.5)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        output.close()
