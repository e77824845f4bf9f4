"""The prediction log's tables: one definition for SQLite and PostgreSQL (SQLAlchemy Core).

Accepted requests are stored one row per request (``prediction_requests``: the feature names once,
the instances as arrays of values, the labels and scores as JSON arrays); the ``predictions`` view
gives SQL users one row per instance, with the features as an object. Against schema version 1 (a
row per instance, features as an object) that cuts the writer's CPU and the bytes per instance
several times over (docs/prediction-log.md, "Overhead", has the measurements). Every column
carries its meaning as a ``comment``: PostgreSQL stores it (``\\d+ prediction_requests``), and
the schema tables of docs/prediction-log.md are checked against it by the tests, so the
documentation cannot drift from the tables.

The schema is versioned. ``SCHEMA_VERSION`` is written to ``predlog_schema_version`` when the
tables are created; a store holding another version is refused (see ``store.SchemaMismatch``),
never written to. Change a table here and you must raise ``SCHEMA_VERSION`` and describe the
migration in docs/prediction-log.md.
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

SCHEMA_VERSION = 2

metadata = MetaData()

# Rejections' errors: JSONB on PostgreSQL (indexable); TEXT holding JSON on SQLite, where
# json_extract() reads it. A request's instances, labels and scores are plain JSON on both: a
# log is written far more than it is read, and PostgreSQL's json is only checked on insert while
# jsonb is parsed into a tree (several times the server CPU for a 1000-instance array).
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


prediction_requests = Table(
    "prediction_requests",
    metadata,
    Column(
        "event_id",
        String(32),
        primary_key=True,
        comment="server-generated id of the request's log event (primary key), unique even when "
        "a client reuses a request id",
    ),
    *_request_columns(),
    Column("instance_count", Integer, nullable=False, comment="number of instances in the request"),
    Column(
        "feature_names",
        JSON,
        nullable=False,
        comment="the features of every instance: a JSON array of names, in the order of each "
        "instance's values",
    ),
    Column(
        "instances",
        JSON,
        nullable=False,
        comment="the validated instances, in request order: a JSON array of arrays of values, "
        "each in the order of `feature_names` (the `predictions` view rebuilds the objects)",
    ),
    Column(
        "labels",
        JSON,
        nullable=False,
        comment="the predicted labels: a JSON array, index-aligned with `instances`",
    ),
    Column(
        "scores",
        JSON,
        nullable=False,
        comment="the model's scores (probability of the contract's positive label): a JSON "
        "array of numbers, index-aligned with `instances`",
    ),
    comment="one row per accepted request; the `predictions` view has one row per instance",
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

Index("ix_prediction_requests_request_id", prediction_requests.c.request_id)
Index("ix_prediction_requests_received_at", prediction_requests.c.received_at)
Index("ix_rejections_request_id", rejections.c.request_id)
Index("ix_rejections_received_at", rejections.c.received_at)

# The view of one row per instance. Declared as a table of its own MetaData so that queries and
# the column table of docs/prediction-log.md can use it; created by VIEW_DDL, never by create_all().
views = MetaData()
predictions = Table(
    "predictions",
    views,
    Column(
        "event_id",
        String(32),
        comment="the request's log event (`prediction_requests.event_id`); with instance_index "
        "it identifies the row",
    ),
    Column("instance_index", Integer, comment="position of the instance in the request, from 0"),
    *_request_columns(),
    Column("instance_count", Integer, comment="number of instances in the request"),
    Column(
        "features",
        JSON,
        comment="the validated instance: a JSON object of feature name to value",
    ),
    Column("label", String(200), comment="the predicted label"),
    Column(
        "score",
        Double,
        comment="the model's score: the probability of the contract's positive label "
        "(the answer's `probability_<positive label>`, e.g. `probability_bad`)",
    ),
    comment="one row per accepted instance (a view over prediction_requests)",
)

_SHARED = ", ".join(
    f"r.{name}"
    for name in (
        "request_id", "received_at", "model_tag", "transport", "endpoint", "latency_seconds",
        "trace_id", "instance_count",
    )
)  # fmt: skip
# SQLite: json_each walks the instances; labels and scores are picked by index (SQLite caches
# the parsed arrays within a statement) and each instance's object is rebuilt from the names.
# PostgreSQL: ROWS FROM zips the three arrays in one pass.
VIEW_DDL = {
    "sqlite": f"""CREATE VIEW IF NOT EXISTS predictions AS
SELECT r.event_id, CAST(i.key AS INTEGER) AS instance_index, {_SHARED},
       (SELECT json_group_object(n.value, json_extract(i.value, '$[' || n.key || ']'))
          FROM json_each(r.feature_names) AS n) AS features,
       json_extract(r.labels, '$[' || i.key || ']') AS label,
       json_extract(r.scores, '$[' || i.key || ']') AS score
  FROM prediction_requests AS r, json_each(r.instances) AS i""",
    "postgresql": f"""CREATE OR REPLACE VIEW predictions AS
SELECT r.event_id, (i.ordinality - 1)::integer AS instance_index, {_SHARED},
       (SELECT json_object_agg(n.name, i.features -> (n.ordinality::integer - 1))
          FROM json_array_elements_text(r.feature_names) WITH ORDINALITY AS n(name, ordinality)
       ) AS features,
       i.label, i.score::double precision AS score
  FROM prediction_requests AS r
 CROSS JOIN LATERAL ROWS FROM (
       json_array_elements(r.instances), json_array_elements_text(r.labels),
       json_array_elements_text(r.scores)
     ) WITH ORDINALITY AS i(features, label, score, ordinality)""",
}

# Where each kind of record is written. The keys are the names the spool, the observer (metric
# label `table`) and the command line use: `predictions` counts instances, `rejections` requests.
DATA_TABLES: dict[str, Table] = {"predictions": prediction_requests, "rejections": rejections}
