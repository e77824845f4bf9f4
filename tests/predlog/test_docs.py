"""docs/prediction-log.md matches the code: the table schemas, the schema version, the access log
line, and its example SQL runs on both stores."""

from __future__ import annotations

import re

import orjson
import pytest
from sqlalchemy import text

from models.contract import CONTRACT
from service.predlog.accesslog import access_record
from service.predlog.records import to_entry
from service.predlog.schema import DATA_TABLES, SCHEMA_VERSION, predictions
from service.predlog.store import Store
from tests.predlog.helpers import prediction_event, rejection_event
from tests.support import ROOT

SECTION = (ROOT / "docs" / "prediction-log.md").read_text()


DOCUMENTED = {t.name: t for t in (*DATA_TABLES.values(), predictions)}


@pytest.mark.parametrize("table", sorted(DOCUMENTED))
def test_the_docs_document_every_column_as_the_schema_does(table: str) -> None:
    blocks = SECTION[SECTION.index(f"\n### `{table}`") + 1 :].split("\n\n")
    block = next(b for b in blocks if b.startswith("| column |"))
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| (.+) \|$", block, flags=re.MULTILINE)
    assert rows == [(c.name, c.comment) for c in DOCUMENTED[table].columns]


def test_the_docs_state_the_schema_version() -> None:
    assert f"now **version {SCHEMA_VERSION}**" in SECTION


def test_the_access_log_example_has_the_lines_keys_in_order() -> None:
    examples = re.findall(r'^\{"time".*\}$', SECTION, flags=re.MULTILINE)
    assert len(examples) == 2
    for example in examples:
        assert list(orjson.loads(example)) == list(access_record(rejection_event()))


def sql_examples(dialect: str) -> list[str]:
    (block,) = re.findall(rf"```sql\n-- {dialect}\n(.*?)```", SECTION, flags=re.DOTALL)
    return [statement.strip() for statement in block.split(";") if statement.strip()]


def for_this_model(statement: str, dialect: str) -> str:
    """The docs' query of one feature (the example's ``purpose``) for a feature of this model's
    contract, its name quoted in SQLite's JSON path as the docs say a name that is not a plain
    identifier must be (``'$."monthly.charges"'``)."""
    name = next(iter(CONTRACT.of_kind("categorical")), CONTRACT.features[0]).name
    if dialect == "SQLite":
        assert "'$.purpose'" in statement
        return statement.replace("'$.purpose'", f"'$.\"{name}\"'")
    assert "->>'purpose'" in statement
    return statement.replace("->>'purpose'", f"->>'{name}'")


def test_the_example_queries_run(store: Store) -> None:
    store.write(
        [to_entry(prediction_event(3, "01a2084f0a057cfbbcf4c22d2187e86e"))]
        + [to_entry(prediction_event(2)) for _ in range(4)]
        + [to_entry(rejection_event("01a2084f0a057cfbbcf4c22d2187e86e"))]
    )
    dialect = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[store.dialect]
    statements = sql_examples(dialect)
    assert len(statements) == 5
    statements[3] = for_this_model(statements[3], dialect)
    with store.engine.connect() as conn:
        results = [conn.execute(text(s)).all() for s in statements]
    by_request, rejected, per_hour, by_purpose, by_reason = results
    assert [row[0] for row in by_request] == [0, 1, 2]
    assert [row[0] for row in rejected] == [400]
    assert sum(row[2] for row in per_hour) == 11
    assert {row[1] for row in per_hour} == set(CONTRACT.labels)
    assert len(by_purpose) >= 2
    assert by_reason == [("out_of_range", "age_in_years", 1)]
