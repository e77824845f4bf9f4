"""Traffic for the drift tests: rows of the German Credit data, unchanged or drifted, scored by
the registered model, as logged predictions or as request bodies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from loadtests.payloads import Drift, PayloadFactory, parse_shifts
from service.drift.summary import ColumnDrift, DriftSummary
from service.events import Prediction, PredictionEvent, RequestInfo
from service.model import LoadedModel
from service.predlog.records import new_event_id, to_entry
from service.predlog.store import Store
from tests.support import example_rows

# Three features moved far enough for any test to see at a few hundred instances.
SHIFTS = "duration_in_month*2; credit_amount+3000; purpose=car (new)"
SHIFTED = ("duration_in_month", "credit_amount", "purpose")


def sample(n: int, seed: int = 0, shifts: str = "") -> list[dict[str, Any]]:
    """``n`` rows drawn (with replacement) from the whole data set; ``shifts`` applied to all."""
    factory = PayloadFactory(_contract(), example_rows(), seed=seed)
    if not shifts:
        return factory.instances(n)
    return Drift(_contract(), parse_shifts(shifts, _contract())).instances(factory, n)


def _contract():  # the example model's contract (models/contract.py)
    from models.contract import CONTRACT

    return CONTRACT


def log_predictions(
    store: Store,
    model: LoadedModel,
    instances: Sequence[dict[str, Any]],
    received_at: datetime | None = None,
    per_request: int = 50,
) -> None:
    """Write ``instances`` to the prediction log as the model would have answered them."""
    scores = model.score(model.contract.frame(list(instances)))
    labels = model.labels(scores)
    at = received_at or datetime.now(UTC)
    entries = []
    for start in range(0, len(instances), per_request):
        part = slice(start, start + per_request)
        info = RequestInfo(
            request_id=new_event_id(),
            transport="http",
            received_at=at + timedelta(microseconds=start),
            latency_seconds=0.001,
            model_tag=model.tag,
            trace_id=None,
            endpoint="/predict",
        )
        answers = [
            Prediction(label, float(s)) for label, s in zip(labels[part], scores[part], strict=True)
        ]
        entries.append(to_entry(PredictionEvent(info, list(instances[part]), answers)))
    store.write(entries)


def ok_summary(
    report: str = "drift-x.html", window_size: int = 500, model: str = "credit_risk:v1"
) -> DriftSummary:
    """The summary of a completed run with no drift (as the child process returns it)."""
    return DriftSummary(
        "ok",
        computed_at=datetime.now(UTC),
        window_size=window_size,
        min_samples=100,
        model=model,
        duration_seconds=1.5,
        dataset_drift=False,
        drifted_share=0.0,
        features={"age_in_years": ColumnDrift("K-S p_value", 0.4, 0.05, False)},
        prediction=ColumnDrift("K-S p_value", 0.3, 0.05, False),
        report=report,
    )
