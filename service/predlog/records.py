"""Turn request events into table rows, and rows into spool lines and back.

An :class:`Entry` is the unit the log moves around: the rows one event produces, all for one table
(a :class:`PredictionEvent` gives one ``predictions`` row per instance, a :class:`RejectionEvent`
one ``rejections`` row). An entry is written to the store in one transaction with others, or
spooled as one line, or dropped, as a whole; counters count its rows.

Conversion runs on the writer thread, not the request path. It gives each event a fresh
``event_id`` that travels with the entry through the spool, so a replayed entry inserts the same
primary keys and a second copy is ignored by the store (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.events import Event, PredictionEvent
from service.predlog.schema import DATA_TABLES
from service.validation import MAX_REPORTED_ERRORS

Row = dict[str, Any]
SPOOL_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Entry:
    table: str  # "predictions" | "rejections"
    rows: list[Row]
    received_at: datetime  # UTC; the age of the oldest unwritten entry is measured from it

    def __len__(self) -> int:
        return len(self.rows)


def new_event_id() -> str:
    """A UUIDv7 in hex: unique, and time-ordered so that primary-key inserts land at the end of
    the index. (Not service.inference.new_request_id: importing that module pulls in BentoML,
    which would make the CLI slow to start.)"""
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | raw[6] & 0x0F  # version 7
    raw[8] = 0x80 | raw[8] & 0x3F  # RFC 9562 variant
    return raw.hex()


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
        rows = [
            {
                **common,
                "instance_index": index,
                "instance_count": count,
                "features": instance,
                "label": prediction.label,
                "score": prediction.probability,
            }
            for index, (instance, prediction) in enumerate(
                zip(event.instances, event.predictions, strict=True)
            )
        ]
        return Entry("predictions", rows, req.received_at)
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
    return Entry("rejections", [row], req.received_at)


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
    if data.get("v") != SPOOL_FORMAT or data.get("table") not in DATA_TABLES:
        raise CorruptLine(f"unknown spool format {data.get('v')!r} or table {data.get('table')!r}")
    rows: list[Row] = data["rows"]
    for row in rows:
        row["received_at"] = datetime.fromisoformat(row["received_at"])
    return Entry(data["table"], rows, rows[0]["received_at"] if rows else datetime.now(UTC))
