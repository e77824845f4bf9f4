"""Events become rows; rows survive the spool's line format, and damage to a line is detected."""

from __future__ import annotations

import zlib

import orjson
import pytest

from models.contract import CONTRACT
from service.predlog.records import CorruptLine, decode_line, encode_line, instance_rows, to_entry
from service.predlog.schema import predictions
from service.validation import MAX_REPORTED_ERRORS, FieldError, Reason
from tests.predlog.helpers import prediction_event, rejection_event


def test_a_prediction_event_becomes_one_row_holding_every_instance() -> None:
    event = prediction_event(3, request_id="req-1")
    entry = to_entry(event)
    assert (entry.table, entry.records) == ("predictions", 3)  # counted as its instances
    (row,) = entry.rows
    assert row["request_id"] == "req-1"
    assert row["received_at"] == event.request.received_at
    assert row["instance_count"] == 3
    names = row["feature_names"]
    assert sorted(names) == sorted(event.instances[0])
    assert [dict(zip(names, values, strict=True)) for values in row["instances"]] == event.instances
    assert row["labels"] == [p.label for p in event.predictions]
    assert row["scores"] == [p.probability for p in event.predictions]


def test_a_request_row_reads_as_one_row_per_instance() -> None:
    event = prediction_event(3, request_id="req-1")
    rows = instance_rows(to_entry(event).rows[0])
    assert [row["instance_index"] for row in rows] == [0, 1, 2]
    assert len({row["event_id"] for row in rows}) == 1
    assert [c.name for c in predictions.columns] == list(rows[0])
    for row, instance, answer in zip(rows, event.instances, event.predictions, strict=True):
        assert row["request_id"] == "req-1"
        assert row["features"] == instance
        assert (row["label"], row["score"]) == (answer.label, answer.probability)
        assert row["instance_count"] == 3


def test_a_spool_line_of_the_previous_format_is_read_as_request_rows() -> None:
    # Format 1 (schema version 1) spooled one row per instance; a spool left by the previous
    # release must still replay.
    event = prediction_event(3, request_id="old")
    request = to_entry(event).rows[0]
    old_rows = [{**r, "received_at": r["received_at"].isoformat()} for r in instance_rows(request)]
    body = orjson.dumps({"v": 1, "table": "predictions", "rows": old_rows[::-1]})
    entry = decode_line(b"%08x %s\n" % (zlib.crc32(body), body))
    assert entry.records == 3
    (row,) = entry.rows
    assert instance_rows(row) == instance_rows(request)


def test_each_event_gets_its_own_event_id_even_with_a_reused_request_id() -> None:
    ids = {to_entry(prediction_event(1, request_id="same")).rows[0]["event_id"] for _ in range(5)}
    assert len(ids) == 5


def test_a_rejection_keeps_the_first_errors_and_their_total() -> None:
    event = rejection_event()
    errors = [
        FieldError(i, "purpose", Reason.UNKNOWN_CATEGORY, "'x' is not one of ...", "purpose")
        for i in range(MAX_REPORTED_ERRORS + 20)
    ]
    entry = to_entry(type(event)(event.request, 400, errors, 9000, "{"))
    (row,) = entry.rows
    assert row["error_count"] == MAX_REPORTED_ERRORS + 20
    assert len(row["errors"]) == MAX_REPORTED_ERRORS
    assert row["errors"][0] == {
        "instance": 0,
        "field": "purpose",
        "reason": "unknown_category",
        "message": "'x' is not one of ...",
    }
    assert (row["status"], row["body_size"], row["body_excerpt"]) == (400, 9000, "{")


def test_nul_characters_from_clients_are_replaced() -> None:
    # PostgreSQL refuses NUL in text and jsonb: one such request must not poison a batch.
    event = rejection_event()
    error = FieldError(0, "a\x00b", Reason.UNKNOWN_FIELD, "unknown field", "$unknown")
    (row,) = to_entry(type(event)(event.request, 400, [error], 3, "\x00{}")).rows
    assert row["body_excerpt"] == "\ufffd{}"
    assert row["errors"][0]["field"] == "a\ufffdb"


def test_spool_lines_round_trip() -> None:
    for entry in (to_entry(prediction_event(4)), to_entry(rejection_event())):
        line = encode_line(entry)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        decoded = decode_line(line)
        # JSON has arrays, not tuples: compare what the store is given.
        as_json = orjson.OPT_NAIVE_UTC
        assert orjson.dumps(decoded.rows, option=as_json) == orjson.dumps(
            entry.rows, option=as_json
        )
        assert (decoded.table, decoded.received_at, decoded.records) == (
            entry.table,
            entry.received_at,
            entry.records,
        )


@pytest.mark.parametrize("damage", ["torn", "flipped", "garbage"])
def test_damaged_spool_lines_are_detected(damage: str) -> None:
    line = encode_line(to_entry(prediction_event(2)))
    if damage == "torn":
        line = line[: len(line) // 2]
    elif damage == "flipped":
        # one bit of the first answer's label (the contract's positive one: prediction_event)
        label = orjson.dumps(CONTRACT.positive_label)
        assert label in line
        line = line.replace(label, label[:-2] + bytes([label[-2] ^ 1]) + b'"', 1)
    else:
        line = b"\x00\x00\x00 not a line\n"
    with pytest.raises(CorruptLine):
        decode_line(line)


@pytest.mark.parametrize(
    "body",
    [
        {"v": 2, "table": "rejections", "rows": [{"received_at": "not a time"}]},
        {"v": 2, "table": "rejections"},
        {"v": 2, "table": "predictions", "rows": [{"received_at": "2025-01-31T12:00:00Z"}]},
        {"v": 2, "table": "predictions", "rows": "not rows"},
        ["not", "an", "object"],
    ],
    ids=["bad time", "no rows", "missing columns", "rows not a list", "not an object"],
)
def test_a_line_with_a_good_checksum_but_no_entry_in_it_is_corrupt(body: object) -> None:
    data = orjson.dumps(body)
    with pytest.raises(CorruptLine):
        decode_line(b"%08x %s\n" % (zlib.crc32(data), data))
