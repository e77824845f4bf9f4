"""Traffic for the drift tests: rows of the model's training data, unchanged or drifted, scored by
the registered model, as logged predictions or as request bodies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from loadtests.payloads import Drift, PayloadFactory, parse_shifts
from models.contract import CONTRACT
from service.contract import CategoricalFeature
from service.drift.summary import ColumnDrift, DriftSummary
from service.events import Prediction, PredictionEvent, RequestInfo
from service.model import LoadedModel
from service.predlog.records import new_event_id, to_entry
from service.predlog.store import Store
from tests.support import example_rows, training_data


def _shifts() -> dict[str, str]:
    """Three features of the contract moved far enough for any test to see at a few hundred
    instances, as ``--drift`` writes them: the first two numeric features of many values (the
    K-S test's) each moved by half the data's range, and the first categorical feature of more
    than two categories (chi-square's) set to its rarest category. Features of fewer values
    stand in when there are none such."""
    data = training_data()

    def varied(names: list[str], many: int) -> list[str]:
        return sorted(names, key=lambda name: data[name].nunique() <= many)

    numeric = varied([f.name for f in CONTRACT.numeric_features()], 5)
    categorical = varied([f.name for f in CONTRACT.of_kind("categorical")], 2)
    chosen = [*numeric[:2], *categorical[:1]]
    chosen += [name for name in CONTRACT.feature_names if name not in chosen][: 3 - len(chosen)]
    return {name: shift_of(name) for name in chosen}


def shift_of(name: str) -> str:
    """A shift of feature ``name`` that any drift test sees, as ``--drift`` writes it: a number
    moved by half the data's range, a category set to its rarest. (A bare name, the load tests'
    default, moves each category to the next one of the contract's list: no drift at all for
    categories as frequent as each other.)"""
    data = training_data()
    feat = CONTRACT.feature(name)
    if isinstance(feat, CategoricalFeature):
        counts = data[name].value_counts()
        return f"{name}={min(feat.categories, key=lambda c: counts.get(c, 0))}"
    return f"{name}+{(data[name].max() - data[name].min()) / 2:g}"


SHIFTS = "; ".join(_shifts().values())
SHIFTED = tuple(_shifts())


def sample(n: int, seed: int = 0, shifts: str = "") -> list[dict[str, Any]]:
    """``n`` rows drawn (with replacement) from the whole data set; ``shifts`` applied to all."""
    factory = PayloadFactory(CONTRACT, example_rows(), seed=seed)
    if not shifts:
        return factory.instances(n)
    return Drift(CONTRACT, parse_shifts(shifts, CONTRACT)).instances(factory, n)


def unseen(model: LoadedModel) -> list[dict[str, Any]]:
    """The rows of the training data the model was not fitted on (those its reference lacks:
    the example's held-out quarter), as instances: what traffic from the data's population looks
    like to the model. A flexible model scores the rows it was fitted on more confidently than
    any new one (a random forest: prediction drift, K-S p = 0.02, with three quarters of a window
    drawn from its training rows)."""
    names = list(model.contract.feature_names)
    # Rows told apart by their values and, among equal ones, by their rank: with categorical
    # features only, every held-out row has equals in the reference (the data holds few distinct
    # rows), and a test of values alone found none unseen.
    data, seen = (
        frame.assign(_copy=frame.groupby(names, dropna=False).cumcount())
        for frame in (training_data()[names], model.reference()[names])
    )
    rows = data.merge(seen, how="left", on=[*names, "_copy"], indicator=True)
    return rows[rows["_merge"] == "left_only"][names].to_dict(orient="records")


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
        features={CONTRACT.feature_names[0]: ColumnDrift("K-S p_value", 0.4, 0.05, False)},
        prediction=ColumnDrift("K-S p_value", 0.3, 0.05, False),
        report=report,
    )
