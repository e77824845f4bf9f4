"""Drift in a real `bentoml serve` with 2 workers, its runs every 2 s, fed by real traffic.

One service for the module: no traffic (insufficient data, no verdict); traffic drawn from the
data set unchanged (no drift); the same amount with three features shifted (those flagged, the
prediction too); one run per slot between the two workers; a run that fails for real (the
snapshot directory replaced by a file) is counted as failed while predictions are answered; the
drift metric table of docs/metrics-and-traces.md against the scrape.

Each test passes alone and in any order: each sends the traffic whose window it checks, and the
two that need a window of nothing but their own (no traffic; the held-out rows, fewer than a
window) take ``untouched``: the module's service while no request reached it (in file order they
come first, so no other service is started), else one started for the test.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from models.contract import CONTRACT
from service.drift.process import START_TIMEOUT_SECONDS
from service.drift.runs import drift_runs
from service.model import LoadedModel
from service.predlog.schema import predictions
from service.predlog.store import Store
from tests.drift.helpers import SHIFTED, SHIFTS, sample, unseen
from tests.support import ROOT, ServedService, exported_names, total
from tests.support import scrape as scrape_all

WINDOW = 300
FALSE_POSITIVES_ALLOWED = 2  # p-value tests at 0.05 over 15 untouched features (test_compute.py)
# The first run starts the drift child process, which imports Evidently: slow on a busy machine.
FIRST_RUN_SECONDS = 240
# pytest's timeout (300 s, pyproject.toml) counts a test's setup (training the model, starting a
# service) and all its waits: longer here, so that a wait that expires fails with what drift
# showed (wait_for) instead of a dump of the threads, which reads as a hang.
pytestmark = pytest.mark.timeout(2 * FIRST_RUN_SECONDS + 120)


def served_drift() -> ServedService:
    """A service of its own: its own prediction log and snapshot directory."""
    state = Path(tempfile.mkdtemp(prefix="drift-served-"))
    env = {
        "DRIFT_ENABLED": "true",
        "DRIFT_INTERVAL_SECONDS": "2",
        "DRIFT_WINDOW_SIZE": str(WINDOW),
        "DRIFT_MIN_SAMPLES": "100",
        "DRIFT_SNAPSHOT_DIR": str(state / "drift"),
        "DRIFT_SNAPSHOT_KEEP": "1000",  # no run pruned: the rows are every run there was
        "PREDICTION_LOG_URL": f"sqlite:///{state}/predictions.db",
        "PREDICTION_LOG_SPOOL_DIR": str(state / "spool"),
        "PREDICTION_LOG_FLUSH_INTERVAL_SECONDS": "0.1",
        "ACCESS_LOG": "false",
    }
    return ServedService(env=env, workers=2)


@pytest.fixture(scope="module")
def drifting(model_tag: str) -> Iterator[ServedService]:
    with served_drift() as service:
        yield service


@pytest.fixture
def untouched(drifting: ServedService) -> Iterator[ServedService]:
    """A service no inference request has reached: nothing in its window, no report, no verdict
    ever shown. The module's while that holds (free: the tests taking this come first in the
    file); else one for this test alone (seconds to start, and its first run imports Evidently
    in its own child process)."""
    if total(scrape_all(drifting.url), "inference_requests_total") == 0:
        yield drifting
        return
    with served_drift() as service:
        yield service


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Samples]:
    """The drift samples, keyed without their ``model_version``, which is checked here: every
    series but the interval setting's is the served model version's."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    version = drift(url)["model"].split(":")[1]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.startswith("model_drift_"):
                continue
            labels = dict(s.labels)
            if s.name != "model_drift_interval_seconds":
                assert labels.pop("model_version", None) == version, s
            samples[(s.name, frozenset(labels.items()))] = s.value
    return text, samples


def drift(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/drift", timeout=10).json()


T = TypeVar("T")


def wait_for(
    service: ServedService,
    condition: Callable[[], T | None],
    what: str,
    timeout: float,
    interval: float = 0.5,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; after ``timeout``
    seconds, fail saying ``what`` was awaited and what ``GET /drift`` showed then.

    Every wait here is on the drift runs, which the drift process does at idle CPU priority: on a
    saturated machine it is starved (by design: docs/drift.md), and the tests wait their full
    deadlines one after another. The message tells that apart from a run that failed."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not in {timeout:g}s; {shows(service)}")
        time.sleep(interval)


def shows(service: ServedService) -> str:
    try:
        state = drift(service.url)
    except httpx.HTTPError as exc:
        return f"GET /drift failed: {exc!r}"
    shown = {k: state[k] for k in ("status", "run_id", "computed_at", "window_size", "error")}
    last = state["last_completed"] or {}
    said = f"GET /drift shows {shown}, the last completed run {last.get('computed_at')}"
    if state["status"] == "pending":
        said += (
            " (no run has ended: is the drift process, at idle CPU priority, starved by a busy "
            f"machine? It has {START_TIMEOUT_SECONDS:g}s to start, then the run fails)"
        )
    return said


def post(url: str, instances: list[dict[str, Any]], batch: int = 50) -> None:
    def send(start: int) -> None:
        # A connection per request: the kernel spreads them over both workers.
        with httpx.Client(base_url=url, timeout=30) as client:
            answer = client.post("/predict", json={"instances": instances[start : start + batch]})
            assert answer.status_code == 200, answer.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, range(0, len(instances), batch)))


def logged(service: ServedService) -> int:
    store = Store(service.env["PREDICTION_LOG_URL"])
    try:
        with store.read() as conn:
            return conn.execute(select(func.count()).select_from(predictions)).scalar_one()
    finally:
        store.close()


def run_after(
    service: ServedService, instances: int, timeout: float = FIRST_RUN_SECONDS
) -> dict[str, Any]:
    """The first completed run that started after ``instances`` rows were in the log; it may be
    the service's first (a test run alone or first), which starts the drift process."""
    wait_for(service, lambda: logged(service) >= instances, f"{instances} rows logged", 30)
    since = time.time()

    def fresh() -> dict[str, Any] | None:
        state = drift(service.url)
        if state["status"] in ("ok", "insufficient_data"):
            computed = _timestamp(state["computed_at"])
            return state if computed > since else None
        return None

    return wait_for(service, fresh, f"a run completed after {instances} rows logged", timeout)


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def verdict_gauges(samples: Samples) -> dict[str, float]:
    names = (
        "model_drift_dataset_drifted",
        "model_drift_drifted_features_ratio",
        "model_drift_prediction_drifted",
        "model_drift_prediction_score",
    )
    return {name: samples[(name, frozenset())] for name in names}


def test_without_traffic_there_is_no_verdict(untouched: ServedService) -> None:
    answer = httpx.get(f"{untouched.url}/drift/report")
    assert answer.status_code == 404
    assert "no drift report yet" in answer.json()["message"]

    state = run_after(untouched, 0)

    assert state["status"] == "insufficient_data"
    assert state["window_size"] == 0
    assert state["dataset_drift"] is None
    assert state["features"] == {}
    assert state["prediction"] is None
    assert (state["interval_seconds"], state["min_samples"]) == (2, 100)
    _, samples = scrape(untouched.url)
    assert samples[("model_drift_insufficient_data", frozenset())] == 1
    assert samples[("model_drift_window_instances", frozenset())] == 0
    assert samples[("model_drift_interval_seconds", frozenset())] == 2
    # No verdict: NaN, so that `== 1` alerts do not fire (a multiprocess scrape cannot drop them).
    assert all(math.isnan(v) for v in verdict_gauges(samples).values())
    drifted = [v for (n, _), v in samples.items() if n == "model_drift_feature_drifted"]
    assert len(drifted) == len(CONTRACT.features)
    assert all(math.isnan(v) for v in drifted)


def test_traffic_like_the_data_set_shows_no_drift(
    untouched: ServedService, model: LoadedModel
) -> None:
    # Rows the model was not fitted on, each once. Training rows would show as prediction drift
    # (a flexible model scores them more confidently than new ones: helpers.unseen), and rows
    # drawn again and again from a few hundred flag features the population does not differ in
    # (5 of 20 with the example's 250 held-out rows drawn 300 times, measured).
    rows = unseen(model)
    if len(rows) < 100:
        pytest.skip("models/train.py kept fewer than 100 rows of its data out of training")
    window = random.Random(11).sample(rows, min(len(rows), WINDOW))
    post(untouched.url, window)  # the whole window: nothing else reached this service

    state = run_after(untouched, len(window))

    assert state["status"] == "ok"
    assert state["window_size"] == len(window)
    flagged = [name for name, f in state["features"].items() if f["drifted"]]
    assert len(flagged) <= FALSE_POSITIVES_ALLOWED, flagged
    assert state["dataset_drift"] is False
    assert state["prediction"]["drifted"] is False
    shown, samples = shown_with_metrics(untouched, state)
    assert_metrics_show(shown, samples)
    assert samples[("model_drift_dataset_drifted", frozenset())] == 0
    report = httpx.get(f"{untouched.url}/drift/report")
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    assert all(name in report.text for name in CONTRACT.feature_names)  # this model's report
    assert state["model"] in report.text  # and it says so, with its window
    assert f"{state['window_size']} instances" in report.text


def test_shifted_features_are_flagged_in_drift_and_metrics(drifting: ServedService) -> None:
    before = logged(drifting)
    post(drifting.url, sample(WINDOW, seed=12, shifts=SHIFTS))

    state = run_after(drifting, before + WINDOW)  # the window: the shifted instances only

    flagged = {name for name, f in state["features"].items() if f["drifted"]}
    assert set(SHIFTED) <= flagged
    assert len(flagged - set(SHIFTED)) <= FALSE_POSITIVES_ALLOWED, flagged
    assert state["prediction"]["drifted"] is True
    assert state["drifted_share"] == pytest.approx(len(flagged) / len(CONTRACT.feature_names))
    shown, samples = shown_with_metrics(drifting, state)
    assert_metrics_show(shown, samples)
    for name in SHIFTED:
        assert samples[("model_drift_feature_drifted", frozenset({("feature", name)}))] == 1
    assert samples[("model_drift_prediction_drifted", frozenset())] == 1


def shown_with_metrics(
    service: ServedService, state: dict[str, Any]
) -> tuple[dict[str, Any], Samples]:
    """``GET /drift`` and a scrape that show the same run: ``state``'s or a later one, of the same
    window.

    A run ends every 2 s here, and each worker reads it back from the store on its own: a run
    ending between the two reads would make them differ, and the worker answering ``GET /drift``
    may not have read ``state``'s run yet. Both are read again until they agree on such a run.
    """
    url = service.url
    checked = _timestamp(state["computed_at"])

    def agree() -> tuple[dict[str, Any], Samples] | None:
        shown = drift(url)
        if shown["computed_at"] is None or _timestamp(shown["computed_at"]) < checked:
            return None
        _, samples = scrape(url)
        exported = samples.get(("model_drift_last_run_timestamp_seconds", frozenset()))
        if exported != pytest.approx(_timestamp(shown["computed_at"])):
            return None
        return shown, samples

    what = "GET /drift and the scrape showing the same run"
    shown, samples = wait_for(service, agree, what, 30, interval=0.2)
    assert shown["window_size"] == state["window_size"]  # no traffic since: the same window
    return shown, samples


def assert_metrics_show(state: dict[str, Any], samples: Samples) -> None:
    """One value per series (both workers agree) equal to the run ``GET /drift`` shows."""
    assert samples[("model_drift_insufficient_data", frozenset())] == 0
    assert samples[("model_drift_window_instances", frozenset())] == state["window_size"]
    assert samples[("model_drift_drifted_features_ratio", frozenset())] == pytest.approx(
        state["drifted_share"]
    )
    assert samples[("model_drift_last_run_timestamp_seconds", frozenset())] == pytest.approx(
        _timestamp(state["computed_at"])
    )
    for name, feature in state["features"].items():
        labels = frozenset({("feature", name)})
        assert samples[("model_drift_feature_score", labels)] == pytest.approx(feature["score"])
        assert samples[("model_drift_feature_threshold", labels)] == feature["threshold"]
        assert samples[("model_drift_feature_drifted", labels)] == int(feature["drifted"])
        method = frozenset({("feature", name), ("method", feature["method"])})
        assert samples[("model_drift_feature_method_info", method)] == 1
    prediction = state["prediction"]
    assert samples[("model_drift_prediction_score", frozenset())] == pytest.approx(
        prediction["score"]
    )
    assert samples[("model_drift_prediction_threshold", frozenset())] == prediction["threshold"]


def all_runs(service: ServedService) -> list[tuple[int, str, str]]:
    store = Store(service.env["PREDICTION_LOG_URL"])
    try:
        with store.read() as conn:
            query = select(drift_runs.c.slot, drift_runs.c.status, drift_runs.c.claimed_by)
            return [tuple(r) for r in conn.execute(query.order_by(drift_runs.c.slot))]
    finally:
        store.close()


def runs_counted(samples: Samples) -> float:
    return sum(v for (n, _), v in samples.items() if n == "model_drift_runs_total")


def test_one_run_per_interval_slot_between_the_workers(drifting: ServedService) -> None:
    # The counters (each run counted by the worker that did it) and the rows agree: no slot was
    # run twice. A run is counted while its row still says 'running', so read between runs: no
    # row running before or after the scrape, and no run claimed in between. At least three runs,
    # whichever tests of this module ran before (the first run starts Evidently's process).
    def agree() -> tuple[list[tuple[int, str, str]], float] | None:
        before = all_runs(drifting)
        counted = runs_counted(scrape(drifting.url)[1])
        quiet = all(status != "running" for _, status, _ in before)
        settled = quiet and len(before) >= 3 and all_runs(drifting) == before
        return (before, counted) if settled else None

    what = "three runs, and none running before and after a scrape"
    rows, counted = wait_for(drifting, agree, what, FIRST_RUN_SECONDS, interval=0.2)
    slots = [slot for slot, _, _ in rows]
    assert len(slots) == len(set(slots)) >= 3
    assert counted == len(rows)
    assert all(slot % 2 == 0 for slot in slots)  # slots are aligned on the 2 s interval


def a_completed_run(service: ServedService) -> dict[str, Any]:
    """A run that completed with a verdict (status ok): at once after the module's earlier tests
    (theirs), else after enough traffic for one, for a test run alone or first."""
    state = drift(service.url)
    if "ok" in (state["status"], (state["last_completed"] or {}).get("status")):
        return state
    before = logged(service)
    post(service.url, sample(WINDOW, seed=14))
    state = run_after(service, before + WINDOW)
    assert state["status"] == "ok", state
    return state


def test_a_failing_run_is_counted_and_predictions_go_on(drifting: ServedService) -> None:
    # A run to fail after: it created the snapshot directory, and one to fall back on.
    a_completed_run(drifting)
    directory = Path(drifting.env["DRIFT_SNAPSHOT_DIR"])
    failed_before = scrape(drifting.url)[1][
        ("model_drift_runs_total", frozenset({("status", "failed")}))
    ]
    shutil.rmtree(directory)
    directory.write_text("not a directory")  # the snapshot cannot be written: the run fails
    try:

        def failed() -> dict[str, Any] | None:
            post(drifting.url, sample(10, seed=13), batch=10)  # answered 200 meanwhile
            state = drift(drifting.url)
            # A run already past the directory's check (they follow each other every 2 s) fails
            # on writing its snapshot instead: the run after it is the one checked here.
            refused = state["status"] == "failed" and "DRIFT_SNAPSHOT_DIR" in state["error"]
            return state if refused else None

        state = wait_for(drifting, failed, "a run failed on DRIFT_SNAPSHOT_DIR", 120)
        # One line naming the setting to correct, not the child's traceback.
        assert "File exists" in state["error"]
        assert state["last_completed"]["status"] == "ok"
        samples = scrape(drifting.url)[1]
        failures = samples[("model_drift_runs_total", frozenset({("status", "failed")}))]
        assert failures > failed_before
    finally:
        directory.unlink()
    # Back to normal once the directory can be written again.
    back = "a run ok once the directory is back"
    wait_for(drifting, lambda: drift(drifting.url)["status"] == "ok", back, 120)


def test_promtool_finds_nothing_to_report(drifting: ServedService) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make system-deps` (Debian package prometheus)"
    text, _ = scrape(drifting.url)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_docs_document_exactly_the_drift_metrics_exported(drifting: ServedService) -> None:
    # The per-feature families appear with the first run on enough instances: not left to the
    # tests that ran before (this one alone, or first, compared before any run).
    before = logged(drifting)
    post(drifting.url, sample(WINDOW, seed=12))
    assert run_after(drifting, before + WINDOW)["status"] == "ok"
    exported = {name for name in exported_names(drifting.url) if name.startswith("model_drift_")}
    section = (ROOT / "docs" / "metrics-and-traces.md").read_text()
    documented = set(
        re.findall(r"^\| `(model_drift_[a-z_]+)` \| (?:counter|gauge) \|", section, re.M)
    )
    assert exported == documented
