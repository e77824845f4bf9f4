"""Locust options are checked when locust starts, not after the run they were meant to judge."""

from __future__ import annotations

import subprocess

from tests.support import ROOT, VENV_BIN


def test_an_impossible_slo_objective_is_refused_at_start() -> None:
    # Nothing listens on the host: the objective must be refused before the target is asked.
    result = subprocess.run(
        [
            str(VENV_BIN / "locust"),
            "-f",
            "loadtests/locustfile.py",
            "--host",
            "http://127.0.0.1:9",
            "--headless",
            "--run-time",
            "30s",
            "--slo-p99-ms",
            "0",
            "SteadyUser",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--slo-p99-ms" in result.stderr, result.stderr[-2000:]
