"""The window is read from the prediction log, real SQLite and real PostgreSQL alike: the most
recent instances of the served model, typed by its contract, with its scores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from service.drift.window import read_window
from service.model import LoadedModel
from service.predlog.store import Store
from tests.drift.helpers import log_predictions, sample


def test_the_window_is_the_newest_instances_typed_by_the_contract(
    store: Store, model: LoadedModel
) -> None:
    now = datetime.now(UTC)
    old, new = sample(30, seed=1), sample(20, seed=2)
    log_predictions(store, model, old, received_at=now - timedelta(minutes=5))
    log_predictions(store, model, new, received_at=now, per_request=7)

    frame = read_window(store, model.contract, model.tag, size=20)

    contract = model.contract
    expected = contract.frame(new)
    assert list(frame.columns) == [*contract.feature_names, contract.score_name]
    assert frame.dtypes[list(contract.feature_names)].equals(expected.dtypes)
    pd.testing.assert_frame_equal(_sorted(frame[list(contract.feature_names)]), _sorted(expected))
    # The logged scores, which are the model's answers to these instances.
    assert sorted(frame[contract.score_name]) == sorted(map(float, model.score(expected)))


def test_the_window_is_bounded_by_age_and_by_model(store: Store, model: LoadedModel) -> None:
    now = datetime.now(UTC)
    log_predictions(store, model, sample(30, seed=1), received_at=now - timedelta(hours=2))
    log_predictions(store, model, sample(10, seed=2), received_at=now - timedelta(seconds=30))

    assert len(read_window(store, model.contract, model.tag, size=1000)) == 40
    recent = read_window(store, model.contract, model.tag, 1000, max_age_seconds=3600)
    assert len(recent) == 10
    assert len(read_window(store, model.contract, "credit_risk:another", size=1000)) == 0


def test_an_empty_log_is_an_empty_typed_window(store: Store, model: LoadedModel) -> None:
    frame = read_window(store, model.contract, model.tag, size=100)
    assert len(frame) == 0
    assert list(frame.columns) == [*model.contract.feature_names, model.contract.score_name]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_the_window_carries_when_its_newest_and_oldest_instances_arrived(
    store: Store, model: LoadedModel
) -> None:
    newest = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # traffic stopped long ago
    log_predictions(store, model, sample(10, seed=1), received_at=newest - timedelta(hours=1))
    log_predictions(store, model, sample(10, seed=2), received_at=newest, per_request=10)

    frame = read_window(store, model.contract, model.tag, size=15)

    assert frame.attrs["newest_received_at"] == newest
    assert frame.attrs["oldest_received_at"] == newest - timedelta(hours=1)
    empty = read_window(store, model.contract, "credit_risk:another", size=15)
    assert empty.attrs == {"newest_received_at": None, "oldest_received_at": None}
