"""Fixtures of the prediction log tests: a fresh store per test, on SQLite and on the real
PostgreSQL (each test gets its own schema, dropped afterwards, so parallel runs never collide)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from service.predlog.spool import Spool
from service.predlog.store import Store
from tests.predlog.helpers import POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} (set TEST_POSTGRES_URL): {exc}")
    yield engine
    engine.dispose()


@pytest.fixture
def postgresql_url(postgres_admin: Engine) -> Iterator[str]:
    """URL of an empty PostgreSQL schema of this test's own."""
    schema = f"predlog_test_{os.getpid()}_{os.urandom(4).hex()}"
    with postgres_admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    with postgres_admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def missing_schema(postgres_admin: Engine) -> Iterator[tuple[str, str]]:
    """(URL, schema): a URL whose search path names a schema that does not exist (yet: the test
    may create it; it is dropped afterwards)."""
    schema = f"predlog_missing_{os.getpid()}_{os.urandom(4).hex()}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}", schema
    with postgres_admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/log/predictions.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    store.ensure_schema()
    yield store
    store.close()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", max_bytes=64 * 1024 * 1024)
