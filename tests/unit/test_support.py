"""The tests' example requests come from the model's own training data (a swapped model's too)."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

import models.train
from models.contract import CONTRACT
from tests import support


@pytest.fixture
def fresh_rows() -> Iterator[None]:
    support._training_data.cache_clear()
    yield
    support._training_data.cache_clear()


def test_example_rows_are_the_training_data_of_models_train(
    monkeypatch: pytest.MonkeyPatch, fresh_rows: None
) -> None:
    # README "Serving your own model": a template user rewrites models/train.py's load_data;
    # the tests that are not about the example's data must then send rows of the new data.
    rows = support.example_rows(3)
    changed = [{**row, "source": "load_data"} for row in reversed(rows)]
    monkeypatch.setattr(models.train, "load_data", lambda: pd.DataFrame(changed))
    support._training_data.cache_clear()
    expected = [{name: row[name] for name in CONTRACT.feature_names} for row in changed]
    assert support.example_rows() == expected
    assert support.example_rows(1) == expected[:1]
