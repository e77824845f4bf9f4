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
    support.training_data.cache_clear()
    yield
    support.training_data.cache_clear()


def test_example_rows_are_the_training_data_of_models_train(
    monkeypatch: pytest.MonkeyPatch, fresh_rows: None
) -> None:
    # README "Serving your own model": a template user rewrites models/train.py's load_data;
    # the tests that are not about the example's data must then send rows of the new data.
    rows = support.example_rows(3)
    changed = [{**row, "source": "load_data"} for row in reversed(rows)]
    monkeypatch.setattr(models.train, "load_data", lambda: pd.DataFrame(changed))
    support.training_data.cache_clear()
    expected = [{name: row[name] for name in CONTRACT.feature_names} for row in changed]
    assert support.example_rows() == expected
    assert support.example_rows(1) == expected[:1]


def test_a_served_service_starts_again_only_for_a_port_it_chose() -> None:
    # A port seen free and taken by another process before `bentoml serve` bound it: started
    # again on other ports. Not for a port the test set (a test of a taken port expects the exit).
    chosen = support.ServedService()
    http_taken = "OSError: [Errno 98] Address already in use"
    grpc_taken = f"GRPC_PORT 0.0.0.0:{chosen.grpc_port} is in use; free it"
    assert chosen._lost_a_chosen_port(http_taken)
    assert chosen._lost_a_chosen_port(grpc_taken)
    assert not chosen._lost_a_chosen_port("invalid settings (environment variables):")
    given = support.ServedService(env={"GRPC_PORT": str(chosen.grpc_port)})
    assert not given._lost_a_chosen_port(grpc_taken)
    assert given._lost_a_chosen_port(http_taken)
    chosen.env["GRPC_PORT"] = str(chosen.port)  # set by the test after construction
    assert not chosen._lost_a_chosen_port(f"GRPC_PORT 0.0.0.0:{chosen.port} is in use")
    chosen.port = 3000
    assert not chosen._lost_a_chosen_port(http_taken)
