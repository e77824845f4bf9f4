"""The prediction log's tables: one definition for SQLite and PostgreSQL (SQLAlchemy Core).

Every column carries its meaning as a ``comment``: PostgreSQL stores it (``\\d+ predictions``),
and the README's schema table is checked against it by the tests, so the documentation cannot
drift from the tables.

The schema is versioned. ``SCHEMA_VERSION`` is written to ``predlog_schema_version`` when the
tables are created; a store holding another version is refused (see ``store.SchemaMismatch``),
never written to. Change a table here and you must raise ``SCHEMA_VERSION`` and describe the
migration in the README.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

SCHEMA_VERSION = 1

metadata = MetaData()

# JSONB on PostgreSQL so that `features->>'purpose'` is indexable; TEXT holding JSON on SQLite,
# where json_extract() reads it.
Json = JSON().with_variant(JSONB(), "postgresql")
# Timestamps are UTC. PostgreSQL: timestamptz. SQLite: text 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC),
# which sorts and compares as time.
Timestamp = DateTime(timezone=True)


def _request_columns() -> list[Column]:
    """Columns shared by both tables: who asked, when, through what, answered by which model."""
    return [
        Column(
            "request_id",
            String(128),
            nullable=False,
            comment="the request id the client "
            "received (X-Request-ID header / gRPC id); client-supplied ids may repeat",
        ),
        Column("received_at", Timestamp, nullable=False, comment="when the request arrived, UTC"),
        Column(
            "model_tag",
            String(200),
            nullable=False,
            comment="the model that served it, `name:version` in the BentoML model store",
        ),
        Column("transport", String(8), nullable=False, comment="`http` or `grpc`"),
        Column(
            "endpoint", String(200), nullable=False, comment="the route or RPC, e.g. `/predict`"
        ),
        Column(
            "latency_seconds",
            Double,
            nullable=False,
            comment="time from arrival to the answer being ready (whole request)",
        ),
        Column(
            "trace_id",
            String(32),
            nullable=True,
            comment="OpenTelemetry trace id (32 hex digits) when the request was traced",
        ),
    ]


predictions = Table(
    "predictions",
    metadata,
    Column(
        "event_id",
        String(32),
        primary_key=True,
        comment="server-generated id of the request's log event, unique even when a client "
        "reuses a request id; with instance_index the primary key",
    ),
    Column(
        "instance_index",
        Integer,
        primary_key=True,
        comment="position of the instance in the request, from 0",
    ),
    *_request_columns(),
    Column("instance_count", Integer, nullable=False, comment="number of instances in the request"),
    Column(
        "features",
        Json,
        nullable=False,
        comment="the validated instance: a JSON object of feature name to value",
    ),
    Column("label", String(200), nullable=False, comment="the predicted label"),
    Column(
        "score",
        Double,
        nullable=False,
        comment="the model's score: the probability of the contract's positive label "
        "(the answer's `probability_<positive label>`, e.g. `probability_bad`)",
    ),
    comment="one row per accepted instance",
)

rejections = Table(
    "rejections",
    metadata,
    Column(
        "event_id",
        String(32),
        primary_key=True,
        comment="server-generated id of the request's log event (primary key)",
    ),
    *_request_columns(),
    Column(
        "status",
        Integer,
        nullable=False,
        comment="the HTTP status answered (gRPC: the equivalent), e.g. 400, 413, 503",
    ),
    Column(
        "error_count",
        Integer,
        nullable=False,
        comment="how many problems were found (the `errors` list holds the first 50)",
    ),
    Column(
        "errors",
        Json,
        nullable=False,
        comment="JSON list of {instance, field, reason, message}, as answered to the client",
    ),
    Column("body_size", Integer, nullable=False, comment="size of the request body in bytes"),
    Column(
        "body_excerpt",
        Text,
        nullable=False,
        comment="the first 256 bytes of the body (UTF-8, invalid bytes replaced); no more of "
        "a refused body is kept",
    ),
    comment="one row per refused or failed request",
)

schema_version = Table(
    "predlog_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, comment="schema version of the tables"),
    Column("created_at", Timestamp, nullable=False, comment="when the tables were created, UTC"),
    comment="the schema version the tables follow; written once, when they are created",
)

Index("ix_predictions_request_id", predictions.c.request_id)
Index("ix_predictions_received_at", predictions.c.received_at)
Index("ix_rejections_request_id", rejections.c.request_id)
Index("ix_rejections_received_at", rejections.c.received_at)

# The tables records are written to, by name (the spool and the observer use these names).
DATA_TABLES: dict[str, Table] = {t.name: t for t in (predictions, rejections)}
