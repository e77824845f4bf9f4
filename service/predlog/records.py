"""Turn request events into table rows, and rows into spool lines and back.

An :class:`Entry` is the unit the log moves around: the row one event produces (a
:class:`PredictionEvent` gives one ``prediction_requests`` row holding all its instances, a
:class:`RejectionEvent` one ``rejections`` row). An entry is written to the store in one
transaction with others, or spooled as one line, or dropped, as a whole; counters count the
records it stands for: instances for predictions, requests for rejections.

Conversion runs on the writer thread, not the request path. It gives each event a fresh
``event_id`` that travels with the entry through the spool, so a replayed entry inserts the same
primary keys and a second copy is ignored by the store (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import functools
import os
import random
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import orjson

from service.events import Event, PredictionEvent
from service.predlog.schema import DATA_TABLES
from service.validation import MAX_REPORTED_ERRORS, Instances

Row = dict[str, Any]
SPOOL_FORMAT = 2  # 1: one predictions row per instance (schema version 1); still read


@dataclass(frozen=True, slots=True)
class Entry:
    table: str  # a key of DATA_TABLES: "predictions" | "rejections"
    rows: list[Row]
    received_at: datetime  # UTC; the age of the oldest unwritten entry is measured from it
    # Instances (predictions) or requests (rejections) the rows hold: what the log's counters
    # count. Not len(rows): a prediction entry is one row, however many instances it holds.
    records: int


def new_event_id() -> str:
    """A UUIDv7 in hex: unique, and time-ordered so that primary-key inserts land at the end of
    the index. (Not service.inference.new_request_id: importing that module pulls in BentoML,
    which would make the CLI slow to start.)"""
    value = (time.time_ns() // 1_000_000) << 80 | _random.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return f"{value:032x}"


# Event ids must be unique, not secret: a generator seeded once per process from the OS, rather
# than a system call per event.
_random = random.Random(os.urandom(16))


def event_rows(event: Event) -> int:
    """How many rows ``event`` becomes, without converting it (cheap; for the request path)."""
    return len(event.instances) if isinstance(event, PredictionEvent) else 1


def _clean(text: str) -> str:
    # PostgreSQL text and jsonb refuse NUL; client-supplied bytes (body excerpt, unknown field
    # names echoed in errors) may contain it. One row must never make a whole batch fail.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def to_entry(event: Event) -> Entry:
    req = event.request
    common: Row = {
        "event_id": new_event_id(),
        "request_id": req.request_id,
        "received_at": req.received_at,
        "model_tag": req.model_tag,
        "transport": req.transport,
        "endpoint": req.endpoint,
        "latency_seconds": req.latency_seconds,
        "trace_id": req.trace_id,
    }
    if isinstance(event, PredictionEvent):
        count = len(event.instances)
        if len(event.predictions) != count:
            raise ValueError(f"{len(event.predictions)} predictions for {count} instances")
        columns = event.instances.columns if isinstance(event.instances, Instances) else None
        if columns is not None:
            # The validator's columns: values zipped in C, no lookup in the instances' dicts
            # (those lookups were the writer's largest cost with 100-instance requests).
            names = tuple(columns)
            values = list(zip(*columns.values(), strict=True))
        else:
            # Values by name: every instance has the same features, in whatever order it came.
            names = tuple(event.instances[0]) if count else ()
            values = list(map(_values_getter(names), event.instances))
        row = {
            **common,
            "instance_count": count,
            "feature_names": _names_list(names),
            "instances": values,  # tuples: JSON arrays, read back from the spool as lists
            "labels": [p.label for p in event.predictions],
            "scores": [p.probability for p in event.predictions],
        }
        return Entry("predictions", [row], req.received_at, count)
    errors = [
        {k: _clean(v) if isinstance(v, str) else v for k, v in e.to_dict().items()}
        for e in event.errors[:MAX_REPORTED_ERRORS]
    ]
    row = {
        **common,
        "status": event.status,
        "error_count": len(event.errors),
        "errors": errors,
        "body_size": event.body_size,
        "body_excerpt": _clean(event.body_excerpt),
    }
    return Entry("rejections", [row], req.received_at, 1)


# Spool lines: b"<crc32 as 8 hex digits> <json>\n". The checksum tells a line torn by a crash (or
# damaged on disk) from a good one, so replay skips it and counts it instead of failing on it.


def encode_line(entry: Entry) -> bytes:
    body = orjson.dumps(
        {"v": SPOOL_FORMAT, "table": entry.table, "rows": entry.rows},
        option=orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY,
    )
    return b"%08x %s\n" % (zlib.crc32(body), body)


class CorruptLine(ValueError):
    """A spool line that is torn or damaged; its rows cannot be recovered."""


def decode_line(line: bytes) -> Entry:
    line = line.rstrip(b"\n")
    checksum, _, body = line.partition(b" ")
    try:
        if int(checksum, 16) != zlib.crc32(body):
            raise CorruptLine("checksum mismatch")
        data = orjson.loads(body)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise CorruptLine(str(exc)) from exc
    try:
        return _entry(data)
    except CorruptLine:
        raise
    except Exception as exc:
        # A good checksum over content that is not an entry (written by a buggy or other
        # version): raised as anything else, it would end the replay of the whole segment.
        raise CorruptLine(f"{type(exc).__name__}: {exc}") from exc


def _entry(data: Any) -> Entry:
    version, table = data.get("v"), data.get("table")
    if version not in (1, SPOOL_FORMAT) or table not in DATA_TABLES:
        raise CorruptLine(f"unknown spool format {version!r} or table {table!r}")
    rows: list[Row] = data["rows"]
    for row in rows:
        row["received_at"] = datetime.fromisoformat(row["received_at"])
    if version == 1 and table == "predictions":
        rows = requests_from_instance_rows(rows)
    elif table == "predictions":
        for row in rows:  # JSON gives lists; instances are tuples of values, as to_entry makes
            row["instances"] = list(map(tuple, row["instances"]))
    columns = _COLUMNS[table]
    for row in rows:
        # The store would fail on a missing column as if it were down, and retry it forever.
        if missing := columns.difference(row):
            raise CorruptLine(f"a {table} row without {', '.join(sorted(missing))}")
    received_at = rows[0]["received_at"] if rows else datetime.now(UTC)
    records = sum(r["instance_count"] for r in rows) if table == "predictions" else len(rows)
    return Entry(table, rows, received_at, records)


_COLUMNS = {name: frozenset(table.columns.keys()) for name, table in DATA_TABLES.items()}


@functools.lru_cache(maxsize=64)
def _names_list(names: tuple[str, ...]) -> list[str]:
    """One list object per tuple of names, shared by the rows that have them: the store's
    bulk insert converts a value once per run of identical objects (store._BulkInsert), so the
    names are encoded as JSON once per batch instead of once per row. Never mutated."""
    return list(names)


@functools.lru_cache(maxsize=64)
def _values_getter(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """Maps an instance to the tuple of its values in the order of ``names`` (in C)."""
    if len(names) == 1:  # itemgetter of one name returns the value, not a tuple
        (name,) = names
        return lambda instance: (instance[name],)
    return itemgetter(*names)


def instance_rows(request: Row) -> list[Row]:
    """A ``prediction_requests`` row as rows of the ``predictions`` view: one per instance."""
    shared = {k: request[k] for k in _REQUEST_KEYS[1:]}
    shared["instance_count"] = request["instance_count"]
    names = request["feature_names"]
    return [
        {
            "event_id": request["event_id"],
            "instance_index": index,
            **shared,
            "features": dict(zip(names, values, strict=True)),
            "label": label,
            "score": score,
        }
        for index, (values, label, score) in enumerate(
            zip(request["instances"], request["labels"], request["scores"], strict=True)
        )
    ]


def requests_from_instance_rows(rows: list[Row]) -> list[Row]:
    """Rows of one per instance (schema version 1 and its spool format 1) as request rows."""
    by_event: dict[str, list[Row]] = {}
    for row in rows:
        by_event.setdefault(row["event_id"], []).append(row)
    requests = []
    for instances in by_event.values():
        instances.sort(key=lambda r: r["instance_index"])
        first = instances[0]
        request = {k: first[k] for k in _REQUEST_KEYS}
        request["instance_count"] = len(instances)
        names = tuple(first["features"])
        request["feature_names"] = list(names)
        request["instances"] = [_values_getter(names)(r["features"]) for r in instances]
        request["labels"] = [r["label"] for r in instances]
        request["scores"] = [r["score"] for r in instances]
        requests.append(request)
    return requests


_REQUEST_KEYS = (
    "event_id", "request_id", "received_at", "model_tag", "transport", "endpoint",
    "latency_seconds", "trace_id",
)  # fmt: skip
