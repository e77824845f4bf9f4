"""The drift child process: ``python -m service.drift.runner``, started by ``process.DriftProcess``.

It reads one job per line on stdin (JSON: the window to read, the model's files, where to keep the
snapshot) and answers one line on stdout: ``{"summary": {...}}`` or ``{"error": "..."}``. It
lowers its own priority first (``lower_priority``), so that the serving workers keep the CPU, and
imports Evidently once (seconds of CPU), then says ``{"ready": true}``. The store connection, the
contract and the reference data are kept between jobs. It exits when stdin closes (its worker
stopped or died) or its worker kills it; it ignores SIGINT and SIGTERM, which reach it with its
worker's.
"""

from __future__ import annotations

import signal

from service.drift.priority import lower_priority

if __name__ == "__main__":
    # First of all: the imports below alone (pandas, SQLAlchemy) take seconds of CPU, and a child
    # is started again after every run that timed out (again and again while the CPU is
    # saturated), each time taking those seconds from the requests at the workers' priority.
    lower_priority()
    # Its worker decides when the child ends (closing stdin, or killing it mid-run), not a
    # signal meant for the worker: Ctrl-C in the terminal of `bentoml serve` reaches the whole
    # process group (the child died with a KeyboardInterrupt traceback in the service's log),
    # and BentoML stops a worker by sending SIGTERM to its children too (circus' stop_children),
    # so a run going on at a deploy died before its worker's shutdown could tell a cut-short run
    # from a failed one (it was recorded and counted as failed). Ignored before the imports
    # below, which take seconds.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

import functools
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pandas as pd

from service.contract import FeatureContract
from service.drift import snapshots
from service.drift.summary import DriftSummary
from service.drift.window import read_window
from service.predlog.store import Store


@functools.cache
def _store(url: str) -> Store:
    return Store(url)


@functools.cache
def _contract(path: str) -> FeatureContract:
    return FeatureContract.from_json(Path(path).read_text())


@functools.cache
def _reference(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


class SnapshotDirUnwritable(Exception):
    """DRIFT_SNAPSHOT_DIR cannot be written: a setting (or a volume) to correct, not a bug, so
    the run fails with this one line and no traceback."""


def _writable_snapshot_dir(path: str) -> Path:
    # Checked before the comparison: it takes seconds of CPU, which a run that cannot keep its
    # snapshot would spend every interval for nothing.
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError(f"not writable by uid {os.getuid()}")
    except OSError as exc:
        raise SnapshotDirUnwritable(
            f"DRIFT_SNAPSHOT_DIR {path} cannot be written ({exc}): point it at a writable "
            "directory (a volume); the runs fail until then"
        ) from None
    return directory


def run_job(job: dict[str, Any]) -> DriftSummary:
    """One drift run, as described by ``job`` (built by ``DriftMonitor.job`` in ``monitor.py``)."""
    from service.drift.compute import DRIFT_SHARE, compute_drift  # imported by main() already

    started = time.perf_counter()
    computed_at = datetime.now(UTC)
    contract = _contract(job["contract_path"])
    window = read_window(
        _store(job["store_url"]),
        contract,
        job["model_tag"],
        job["window_size"],
        job["max_age_seconds"],
    )
    common = {
        "computed_at": computed_at,
        "window_size": len(window),
        "window_newest_at": window.attrs["newest_received_at"],
        "window_oldest_at": window.attrs["oldest_received_at"],
        "min_samples": job["min_samples"],
        "model": job["model_tag"],
    }
    if len(window) < job["min_samples"]:
        return DriftSummary(
            "insufficient_data", duration_seconds=time.perf_counter() - started, **common
        )
    directory = _writable_snapshot_dir(job["snapshot_dir"])
    reference = _reference(job["reference_path"])
    name = snapshots.run_name(job["slot"], job["model_tag"])
    metadata, header = describe(job, window, len(reference), computed_at)
    result = compute_drift(reference, window, contract, computed_at, name, metadata, header)
    snapshots.write_snapshot(directory / f"{name}.json", result.snapshot)
    snapshots.write_atomically(directory / f"{name}.html", result.snapshot.save_html)
    snapshots.prune(directory, job["keep"], job["keep_reports"])
    return DriftSummary(
        "ok",
        duration_seconds=time.perf_counter() - started,
        dataset_drift=result.dataset_drift,
        drifted_share=result.drifted_share,
        drift_share_threshold=DRIFT_SHARE,
        features=result.features,
        prediction=result.prediction,
        report=f"{name}.html",
        reference_size=len(reference),
        **common,
    )


def describe(
    job: dict[str, Any], window: pd.DataFrame, reference_rows: int, computed_at: datetime
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """What a run compared, as its snapshot's metadata and as the head of its HTML report: the
    model, the window (size and when its data was received) and the reference."""
    newest, oldest = window.attrs["newest_received_at"], window.attrs["oldest_received_at"]
    max_age = job["max_age_seconds"]
    metadata = {
        "model": job["model_tag"],
        "computed_at": computed_at.isoformat(),
        "window_size": str(len(window)),
        "window_oldest_at": oldest.isoformat() if oldest else "",
        "window_newest_at": newest.isoformat() if newest else "",
        "window_max_age_seconds": str(max_age),
        "reference_size": str(reference_rows),
        "reference": "the model's registered reference data: its training rows' features, "
        "scored out of fold",
    }
    received = f"received {_second(oldest)} to {_second(newest)} UTC" if newest else ""
    bound = f", at most {max_age:g} s old" if max_age else ""
    header = [
        ("model", job["model_tag"]),
        (
            f"current: the newest logged instances of this model{bound}, {received}",
            f"{len(window)} instances",
        ),
        (f"reference: {metadata['reference']}", f"{reference_rows} rows"),
        ("computed at (UTC)", _second(computed_at)),
    ]
    return metadata, header


def _second(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}" if at else ""


def serve(jobs: IO[str], answers: IO[str]) -> None:
    for line in jobs:
        try:
            answer: dict[str, Any] = {"summary": run_job(json.loads(line)).to_dict()}
        except SnapshotDirUnwritable as exc:  # the worker logs the message
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)  # into the service's log, with the worker's
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> None:
    import service.drift.compute  # noqa: F401  (the slow import, before saying ready)

    # The answers get the real stdout; anything a library prints goes to stderr instead of
    # corrupting them.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
