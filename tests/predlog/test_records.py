"""Events become rows; rows survive the spool's line format, and damage to a line is detected."""

from __future__ import annotations

import pytest

from service.predlog.records import CorruptLine, decode_line, encode_line, to_entry
from service.validation import MAX_REPORTED_ERRORS, FieldError, Reason
from tests.predlog.helpers import prediction_event, rejection_event


def test_a_prediction_event_becomes_one_row_per_instance() -> None:
    event = prediction_event(3, request_id="req-1")
    entry = to_entry(event)
    assert entry.table == "predictions"
    assert [row["instance_index"] for row in entry.rows] == [0, 1, 2]
    assert {row["event_id"] for row in entry.rows} == {entry.rows[0]["event_id"]}
    for row, instance, answer in zip(entry.rows, event.instances, event.predictions, strict=True):
        assert row["request_id"] == "req-1"
        assert row["features"] == instance
        assert (row["label"], row["score"]) == (answer.label, answer.probability)
        assert row["instance_count"] == 3
        assert row["received_at"] == event.request.received_at


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
        assert decode_line(line) == entry


@pytest.mark.parametrize("damage", ["torn", "flipped", "garbage"])
def test_damaged_spool_lines_are_detected(damage: str) -> None:
    line = encode_line(to_entry(prediction_event(2)))
    if damage == "torn":
        line = line[: len(line) // 2]
    elif damage == "flipped":
        line = line.replace(b'"good"', b'"gooe"', 1).replace(b'"bad"', b'"bae"', 1)
    else:
        line = b"\x00\x00\x00 not a line\n"
    with pytest.raises(CorruptLine):
        decode_line(line)
