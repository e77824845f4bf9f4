"""What the request path tells its side channels: one event per answered request.

Data flows one way: transport -> validate -> predict -> respond. Each answered request (accepted or
rejected) becomes exactly one event, handed to every registered sink. Sinks (prediction log,
metrics, access log) must return at once and never raise: anything slow happens on their own
threads, off the request path. :class:`Sinks` enforces the "never raise" part.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from service.validation import FieldError

Transport = Literal["http", "grpc"]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    probability: float


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Identity and timing of one request, the same for every transport."""

    request_id: str
    transport: Transport
    received_at: datetime  # UTC
    latency_seconds: float  # from arrival to the answer being ready
    model_tag: str
    trace_id: str | None
    endpoint: str  # e.g. "/predict", "/v2/models/credit_risk/infer", "ModelInfer"


@dataclass(frozen=True, slots=True)
class PredictionEvent:
    """An accepted request: validated instances and the model's answers, index-aligned."""

    request: RequestInfo
    instances: list[dict[str, Any]]
    predictions: list[Prediction]


@dataclass(frozen=True, slots=True)
class RejectionEvent:
    """A request not answered with predictions: its status, its errors (the client's mistakes, or
    the server's condition: see ``RequestRejected``) and a bounded body excerpt."""

    request: RequestInfo
    status: int
    errors: list[FieldError]
    body_size: int
    body_excerpt: str


Event = PredictionEvent | RejectionEvent


class EventSink(Protocol):
    def publish(self, event: Event) -> None:
        """Take the event without blocking; called on the request path."""


class Sinks:
    """Fans an event out to every sink; a failing sink is logged, never propagated."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self._sinks: list[EventSink] = list(sinks)

    def publish(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink.publish(event)
            except Exception:
                log.exception("event sink %s failed", type(sink).__name__)
