"""Fixtures of the drift tests: the registered example model, and the prediction log's stores
(the real SQLite and PostgreSQL fixtures of the prediction log tests)."""

from __future__ import annotations

import bentoml
import pytest

from service.model import LoadedModel, load_model
from tests.predlog.conftest import (  # noqa: F401  (fixtures, found by pytest here)
    missing_schema,
    postgres_admin,
    postgresql_url,
    sqlite_url,
    store,
    store_url,
)


@pytest.fixture(scope="session")
def model(model_tag: str) -> LoadedModel:
    return load_model(bentoml.models.get(model_tag))
