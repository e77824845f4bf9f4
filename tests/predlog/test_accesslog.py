"""The access log line: what it holds, what it leaves out, and that a slow stdout never blocks."""

from __future__ import annotations

import gc
import io
import threading
import weakref
from datetime import UTC, datetime
from typing import Any

import orjson

from service.events import Prediction, PredictionEvent, RejectionEvent
from service.header_limit import HEAD_TOO_LARGE, Refusal
from service.predlog.accesslog import QUEUE_LINES, AccessLog, access_record
from service.validation import FieldError, Reason
from tests.predlog.helpers import prediction_event, rejection_event, request_info


def test_an_accepted_request_line() -> None:
    event = prediction_event(3, request_id="req-7")
    record = access_record(event)
    assert record == {
        "time": event.request.received_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "type": "access",
        "request_id": "req-7",
        "trace_id": None,
        "transport": "http",
        "endpoint": "/predict",
        "status": 200,
        "latency_ms": 4.0,
        "model": "credit_risk:test",
        "instances": 3,
        "error_count": 0,
        "reason": None,
        "field": None,
    }


def test_feature_values_only_when_enabled() -> None:
    event = prediction_event(2)
    assert "features" not in access_record(event)
    line = orjson.dumps(access_record(event)).decode()
    assert not [v for v in event.instances[0].values() if isinstance(v, str) and v in line]
    assert access_record(event, include_features=True)["features"] == event.instances


def test_a_refused_request_line_names_the_first_problem() -> None:
    errors = [
        FieldError(1, "purpose", Reason.UNKNOWN_CATEGORY, "'x' is not one of ...", "purpose"),
        FieldError(2, "age_in_years", Reason.MISSING, "required field is missing", "age"),
    ]
    record = access_record(RejectionEvent(request_info("r"), 400, errors, 10, "{"), True)
    assert (record["status"], record["instances"], record["error_count"]) == (400, None, 2)
    assert (record["reason"], record["field"]) == ("unknown_category", "purpose")
    assert "features" not in record


def test_lines_are_written_in_order_and_flushed_on_close() -> None:
    stream = io.StringIO()
    access_log = AccessLog(stream)
    published = [prediction_event(1) if i % 2 else rejection_event() for i in range(200)]
    for event in published:
        access_log.publish(event)
    access_log.close()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == [e.request.request_id for e in published]


def test_a_request_refused_before_the_service_has_a_line_of_the_same_keys_in_order() -> None:
    # A log collector parsing these lines finds every key, null where there is nothing.
    stream = io.StringIO()
    access_log = AccessLog(stream)
    access_log.publish(prediction_event(1, request_id="before"))
    at = datetime(2026, 12, 7, 9, 0, 1, 250_000, tzinfo=UTC)
    access_log.refused(Refusal("refused-1", HEAD_TOO_LARGE, 431, at, 0.0125))
    access_log.publish(prediction_event(1, request_id="after"))
    access_log.close()
    before, refused, after = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert (before["request_id"], after["request_id"]) == ("before", "after")
    assert refused.keys() == before.keys()
    assert refused == {
        "time": "2026-12-07T09:00:01.250Z",
        "type": "access",
        "request_id": "refused-1",
        "trace_id": None,
        "transport": "http",
        "endpoint": None,
        "status": 431,
        "latency_ms": 12.5,
        "model": None,
        "instances": None,
        "error_count": 1,
        "reason": "head_too_large",
        "field": "$request",
    }


class BlockedStream(io.StringIO):
    """stdout whose reader (the container runtime's log collector) has stopped reading."""

    def __init__(self) -> None:
        super().__init__()
        self.unblocked = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.unblocked.wait()
        return super().write(text)


def test_a_blocked_stdout_never_blocks_the_request_path_and_drops_are_counted() -> None:
    stream = BlockedStream()
    access_log = AccessLog(stream, flush_seconds=0.01)
    access_log.publish(prediction_event(1))
    assert stream.writing.wait(30)  # the writer took it and is stuck writing
    published = [prediction_event(1) for _ in range(QUEUE_LINES + 50)]
    for event in published:  # returns although nothing can be written
        access_log.publish(event)
    # QUEUE_LINES wait in the queue, the rest are counted.
    assert access_log.dropped == 50
    stream.unblocked.set()
    access_log.close()
    assert len(stream.getvalue().splitlines()) == 1 + len(published) - access_log.dropped


def test_a_queued_line_does_not_hold_the_request() -> None:
    # Lines are written once a second: a queued event would keep a second of requests' instances
    # in memory. Only with ACCESS_LOG_FEATURES does the line need them.
    class Instance(dict[str, Any]):  # a dict that can be weakly referenced
        pass

    stream = io.StringIO()
    for include_features, held in ((False, False), (True, True)):
        access_log = AccessLog(stream, include_features=include_features, flush_seconds=3600)
        instance = Instance(prediction_event(1).instances[0])
        ref = weakref.ref(instance)
        event = PredictionEvent(request_info("r"), [instance], [Prediction("good", 0.2)])
        access_log.publish(event)
        del instance, event
        gc.collect()
        assert (ref() is not None) is held
        access_log.close()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["instances"] for line in lines] == [1, 1]
    assert "features" not in lines[0]
    assert len(lines[1]["features"]) == 1
