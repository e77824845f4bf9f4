"""Helpers shared by the tests: free ports, example payloads and a real `bentoml serve` process."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from models.contract import CONTRACT
from service.contract import (
    CategoricalFeature,
    Feature,
    FeatureContract,
    FeatureKind,
    IntegerFeature,
    NumericFeature,
)
from service.events import Event

ROOT = Path(__file__).resolve().parent.parent
F = TypeVar("F", bound=Feature)
VENV_BIN = Path(sys.executable).parent

# What identifies the example credit-risk model: its name, target, labels and features. A fork
# that swapped the model has another contract, and the few tests about the example's own data
# (golden values of its training, the README's example requests) are skipped, saying why.
_EXAMPLE_FINGERPRINT = (
    "credit_risk",
    "creditability",
    ("good", "bad"),
    (
        "status_of_existing_checking_account",
        "duration_in_month",
        "credit_history",
        "purpose",
        "credit_amount",
        "savings_account_and_bonds",
        "present_employment_since",
        "installment_rate_in_percentage_of_disposable_income",
        "other_debtors_or_guarantors",
        "present_residence_since",
        "property",
        "age_in_years",
        "other_installment_plans",
        "housing",
        "number_of_existing_credits_at_this_bank",
        "job",
        "number_of_people_being_liable_to_provide_maintenance_for",
        "telephone",
    ),
)
IS_EXAMPLE_MODEL = (
    CONTRACT.model_name,
    CONTRACT.target,
    CONTRACT.labels,
    CONTRACT.feature_names,
) == _EXAMPLE_FINGERPRINT
example_model_only = pytest.mark.skipif(
    not IS_EXAMPLE_MODEL,
    reason="about the example credit-risk model's own data; models/contract.py is another model's",
)


def first_feature(kind: FeatureKind) -> Feature:
    """The contract's first feature of ``kind``; the test is skipped if it has none (a contract
    of numbers only, say), saying so."""
    return _first_or_skip(CONTRACT.of_kind(kind), f"{kind} feature")


def first_numeric_feature() -> NumericFeature:
    """The contract's first integer or number feature, for a test that needs a numeric one of
    either kind; the test is skipped if it has none (a contract of categoricals only)."""
    return _first_or_skip(CONTRACT.numeric_features(), "integer or number feature")


def _first_or_skip(features: Sequence[F], what: str) -> F:
    if not features:
        pytest.skip(f"the contract has no {what}")
    return features[0]


def contract_of(*features: Feature, **fields: Any) -> FeatureContract:
    """A contract of ``features`` for a test of the machinery; its name and labels do not matter
    unless given in ``fields``."""
    return FeatureContract(
        **{"model_name": "m", "target": "y", "positive_label": "yes", "negative_label": "no"}
        | fields,
        features=features,
    )


def numeric_or_first_feature() -> Feature:
    """The contract's first integer or number feature, else its first feature (a contract of
    categories only): one to refuse a value of (``refused_value``) in any contract."""
    return (CONTRACT.numeric_features() or CONTRACT.features)[0]


def refused_value(feature: Feature) -> tuple[str | int | float, str]:
    """A value of ``feature``'s type that its domain refuses, and the refusal's reason: one below
    a numeric feature's minimum, a string a categorical does not list."""
    if isinstance(feature, CategoricalFeature):
        return "castle", "unknown_category"
    return feature.minimum - 1, "out_of_range"


def excluded_columns(limit: int | None = None) -> list[Any]:
    """The contract's excluded columns (the first ``limit``), as a test's parameters; for a
    contract that excludes none, one parameter that skips the test saying so."""
    return params_or_skip(list(CONTRACT.excluded[:limit]), "the contract excludes no column")


def params_or_skip(params: Sequence[Any], reason: str, width: int = 1) -> list[Any]:
    """``params`` of a parametrized test of ``width`` arguments; if the contract gives none (it
    lacks a kind of feature), one parameter that skips the test saying ``reason``: pytest's own
    skip of an empty set names the arguments, not what the contract lacks."""
    skipped = pytest.param(*[None] * width, marks=pytest.mark.skip(reason=reason))
    return list(params) or [skipped]


# A scrape of GET /metrics: value per (sample name, labels).
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_families(url: str) -> list[Metric]:
    """GET /metrics of the service at ``url``, parsed with prometheus_client's parser."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return list(text_string_to_metric_families(response.text))


def scrape(url: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in metric_families(url)
        for s in family.samples
    }


def exported_names(url: str) -> set[str]:
    """The metric families exported, named as docs/metrics-and-traces.md names them (a counter
    with its ``_total``, which the parser takes off)."""
    return {
        family.name + ("_total" if family.type == "counter" else "")
        for family in metric_families(url)
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; AssertionError
    once ``timeout`` has passed (a bound on a hang: give it room on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            assert result, f"condition not met in {timeout}s"
            return result
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _started(process: subprocess.Popen[bytes], ready_url: str) -> str | None:
    if process.poll() is not None:
        return "exited"
    try:
        answer = httpx.get(ready_url, timeout=2)
    except httpx.TransportError:
        return None
    return "ready" if answer.status_code == 200 else None


def start_on_a_free_port(
    command: Callable[[int], list[str]],
    log: Path,
    ready_path: str = "/-/ready",
    timeout: float = 60.0,
    attempts: int = 3,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``command(port)``, a server listening on 127.0.0.1:``port``, on a port seen free;
    return it and its port once GET ``ready_path`` answers 200. Started again on another port
    when it exited because the port was taken between the choice and its bind (another process
    on the machine); any other early exit, or no answer in ``timeout``, fails with its log."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT)

        state = functools.partial(_started, process, f"http://127.0.0.1:{port}{ready_path}")
        try:
            reached = wait_until(state, timeout=timeout, interval=0.2)
        except AssertionError:
            process.terminate()
            process.wait(30)
            raise AssertionError(f"not ready in {timeout}s:\n{log.read_text()}") from None
        if reached == "ready":
            return process, port
        output = log.read_text(errors="replace")
        if attempt == attempts or "address already in use" not in output:
            raise AssertionError(f"exited with {process.returncode}:\n{output}")
    raise AssertionError("unreachable")


def send_post_head(
    port: int,
    path: str,
    content_length: int,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> socket.socket:
    """A connection to the local service on which the head of a JSON ``POST path`` is sent,
    its body left to the caller (to send slowly, in part, or not at all)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines += [f"Content-Length: {content_length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def send_endless_head(host: str, port: int, limit: int = 64 << 20) -> tuple[int, bytes]:
    """Send a request whose one header grows until the server answers (or ``limit`` bytes are
    sent): the bytes sent, and the answer's first bytes (empty if the server's close reset the
    connection first, as it does when bytes of ours are left unread)."""
    sent = 0
    answer = b""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /model HTTP/1.1\r\nHost: test\r\nX-Padding: ")
        try:
            while sent < limit and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"a" * 16384)
                sent += 16384
            if sent >= limit:
                sock.sendall(b"\r\n\r\n")
            answer = sock.recv(65536)
        except ConnectionError:
            pass  # closed with bytes of ours unread: a reset, which may lose the answer
    return sent, answer


def example_rows(n: int | None = None) -> list[dict[str, Any]]:
    """Rows of the model's training data as request instances (the contract's features).

    From ``models.train.load_data()``, so that the tests that are not about the example's data
    run unchanged for a swapped model (README "Serving your own model").
    """
    frame = training_data()[list(CONTRACT.feature_names)]
    rows = frame.to_dict(orient="records")
    return rows if n is None else rows[:n]


def above_training(n: int) -> dict[str, int | float]:
    """Values of up to ``n`` numeric features, one above the largest the training data holds,
    inside the domain: accepted, and counted as outside the training range."""
    data = training_data()
    values: dict[str, int | float] = {}
    for feat in CONTRACT.numeric_features():
        value = data[feat.name].max() + 1
        if value <= feat.maximum and len(values) < n:
            values[feat.name] = int(value) if isinstance(feat, IntegerFeature) else float(value)
    return values


@functools.cache
def training_data() -> pd.DataFrame:
    """``models.train.load_data()``: the model's training data, target included (cached: do not
    modify it, copy it)."""
    from models.train import load_data

    return load_data()


def build_bento(context: Path = ROOT) -> str:
    """`bentoml build` of the project (in ``context``) into the current BENTOML_HOME; the tag."""
    result = subprocess.run(
        [str(VENV_BIN / "bentoml"), "build", "--output", "tag"],
        cwd=context,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def oci_label_options(bento: str, *args: str, context: Path = ROOT) -> list[str]:
    """The ``label=KEY=VALUE`` options `make image` passes to `bentoml containerize` (each after
    ``--opt``) for ``bento``: container/oci_labels.py, run as the Makefile runs it."""
    result = subprocess.run(
        [str(VENV_BIN / "python"), "container/oci_labels.py", bento, *args],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.splitlines()


class ServedService:
    """A real ``bentoml serve`` of this project, started in a subprocess on free ports.

    Stopped with SIGTERM (as an orchestrator would); ``stop()`` returns the exit code and keeps the
    output in ``self.output`` for assertions about logs.

    Each one gets a BENTOML_HOME of its own that shares the session's model store (a test can
    pass ``BENTOML_HOME`` in ``env`` to share another's).
    """

    def __init__(
        self, env: Mapping[str, str] | None = None, workers: int = 2, target: str = "."
    ) -> None:
        home = Path(tempfile.mkdtemp(prefix="bentoml-serve-home-"))
        (home / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models")
        self.env = {
            **os.environ,
            "BENTOML_HOME": str(home),
            "WORKERS": str(workers),
            **(env or {}),
        }
        self.target = target  # the project (its directory), or a bento's tag, as the image
        self._grpc_port_given = "GRPC_PORT" in (env or {})
        self._choose_ports()
        self.output = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def _choose_ports(self) -> None:
        self.port = free_port()
        self._chosen_port = self.port
        self.url = f"http://127.0.0.1:{self.port}"
        if self._grpc_port_given:
            self.grpc_port = int(self.env["GRPC_PORT"])
        else:
            self.grpc_port = free_port()
            self.env["GRPC_PORT"] = str(self.grpc_port)
        self._log_path = Path(self.env.get("TMPDIR", "/tmp")) / f"bentoml-serve-{self.port}.log"

    def _lost_a_chosen_port(self, log: str) -> bool:
        """Whether the process could not bind a port chosen here (not one the test set): seen
        free, then taken by another process on the machine before `bentoml serve` bound it."""
        http_lost = self.port == self._chosen_port and "[Errno 98] Address already in use" in log
        grpc_lost = (
            not self._grpc_port_given
            and self.env["GRPC_PORT"] == str(self.grpc_port)
            and f"GRPC_PORT 0.0.0.0:{self.grpc_port} is in use" in log
        )
        return http_lost or grpc_lost

    def start(self, timeout: float = 120.0, attempts: int = 3) -> ServedService:
        """Start and wait until ready; on other ports if one chosen here was taken meanwhile."""
        for _ in range(attempts - 1):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if not self._lost_a_chosen_port(str(exc)):
                    raise
            self._choose_ports()
        return self._start(timeout)

    def _start(self, timeout: float) -> ServedService:
        log = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            [
                *(str(VENV_BIN / "bentoml"), "serve", self.target),
                *("--port", str(self.port), "--host", "127.0.0.1"),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited early:\n{self.read_log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"bentoml serve not ready in {timeout}s:\n{self.output}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for a graceful exit; returns the exit code."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # BentoML starts its workers in process groups of their own: killing the
                # server's group would leave them holding the ports and spool locks of the
                # tests that follow.
                tree = psutil.Process(self._proc.pid).children(recursive=True)
                os.killpg(self._proc.pid, signal.SIGKILL)
                for child in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
                self._proc.wait()
        self.output = self.read_log()
        return self._proc.returncode

    @property
    def pid(self) -> int:
        """The ``bentoml serve`` process; its workers are its children."""
        assert self._proc is not None
        return self._proc.pid

    def worker_pids(self) -> set[int]:
        """The live worker processes (not the drift child or other helpers)."""
        pids = set()
        for proc in psutil.Process(self.pid).children():
            with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
                if "_bentoml_impl.worker.service" in " ".join(proc.cmdline()):
                    pids.add(proc.pid)
        return pids

    def read_log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def __enter__(self) -> ServedService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def served_with_log(prefix: str, env: Mapping[str, str]) -> Iterator[tuple[ServedService, Path]]:
    """A served service (``env`` added) whose prediction log is a fresh SQLite file; with its
    path, to query what was recorded."""
    store = Path(tempfile.mkdtemp(prefix=prefix)) / "predictions.db"
    log_env = {
        "PREDICTION_LOG_URL": f"sqlite:///{store}",
        "PREDICTION_LOG_SPOOL_DIR": str(store.parent / "spool"),
    }
    with ServedService(env={**log_env, **env}) as served:
        yield served, store


class EventRecorder:
    """A sink of the Predictor that keeps what it publishes in memory, in place of the
    prediction log's writer: for in-process tests of what a request records (the served tests
    read the real log)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


class HeldEstimator:
    """Fault injection: a model call that blocks until released (a stuck model)."""

    classes_ = (0, 1)

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict_proba(self, frame: Any) -> np.ndarray:
        self.release.wait(10)
        return np.tile([0.5, 0.5], (len(frame), 1))
