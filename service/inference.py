"""The transport-independent core: validate, predict, and tell the side channels.

``POST /predict`` (service/http.py) and the Open Inference Protocol's gRPC and v2 REST (through
service/oip/protocol.py) are thin adapters around :class:`Predictor`: each hands
:meth:`Predictor.answer`, the one request lifecycle, how to read its body and turn it into
instances, and renders what comes back (predictions, a :class:`RequestRejected`, or a
:class:`RequestFailed`). Every answered request produces exactly one event for the sinks
(prediction log, metrics, access log), so all transports are logged and counted the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from service import tracing
from service.batching import BatcherClosed, BatcherFull, BatchObserver, MicroBatcher
from service.events import (
    EventSink,
    Prediction,
    PredictionEvent,
    RejectionEvent,
    RequestInfo,
    Sinks,
    Transport,
)
from service.model import LoadedModel
from service.validation import (
    Instance,
    Instances,
    InstanceValidator,
    Reason,
    RequestRejected,
)

log = logging.getLogger(__name__)
# Client-supplied request ids are echoed into logs and headers: keep them short and printable.
# The OpenAPI document states the same pattern (service/openapi.py).
REQUEST_ID_PATTERN = r"[A-Za-z0-9._:/+=-]{1,128}"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
BODY_EXCERPT_BYTES = 256
MODEL_FAILED = "the model failed to answer; the server log has the details"
SERVER_FAILED = "the server failed on this request; the server log has the details"
# What a transport parses from a request besides its instances, for its answer (e.g. the v2
# request's id and requested outputs).
Parsed = TypeVar("Parsed")
# What to record of a refused request's body: the bytes for the excerpt (the body, or a readable
# account of it) and the body's size (None: the length of those bytes).
SeenBody = Callable[[RequestRejected, bytes], tuple[bytes, int | None]]


# Request ids must be unique, not secret: a generator seeded once per process from the OS is
# enough, and costs a tenth of a system call per request.
_random = random.Random(os.urandom(16))


def new_request_id() -> str:
    """A UUIDv7 in hex: unique, and time-ordered so that log rows cluster by arrival."""
    value = (time.time_ns() // 1_000_000) << 80 | _random.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return f"{value:032x}"


def usable_request_id(value: str) -> bool:
    """Whether a client-supplied id may serve as the request id (else one is generated)."""
    # fullmatch: "$" would also match before a trailing newline, which then breaks the header.
    return _REQUEST_ID.fullmatch(value) is not None


def request_id_or_new(value: str | None) -> str:
    """The client's id when it is usable, else a new one."""
    return value if value is not None and usable_request_id(value) else new_request_id()


@dataclass
class RequestContext:
    """Started when a request arrives; turned into a :class:`RequestInfo` when it is answered."""

    request_id: str
    transport: Transport
    endpoint: str
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    trace_id: str | None = None
    # How the request is recorded if cancelled while it waits, for a transport that can tell
    # the causes of a cancel apart (gRPC: service/oip/outcome.py); asked only then. None: as the
    # server's timeout (on HTTP, BentoML's request timeout).
    classify_cancel: Callable[[], RequestRejected] | None = field(
        default=None, repr=False, compare=False
    )

    @classmethod
    def start(
        cls,
        transport: Transport,
        endpoint: str,
        request_id: str | None,
        classify_cancel: Callable[[], RequestRejected] | None = None,
    ) -> RequestContext:
        """``request_id`` is the client's (header/metadata); an unusable one is replaced.

        Call it inside the request's server span: the context keeps its trace id.
        """
        return cls(
            request_id=request_id_or_new(request_id),
            transport=transport,
            endpoint=endpoint,
            trace_id=tracing.current_trace_id(),
            classify_cancel=classify_cancel,
        )

    def cancellation(self) -> RequestRejected:
        """How this request, cancelled while it waited, is recorded."""
        return timed_out() if self.classify_cancel is None else self.classify_cancel()

    def finish(self, model_tag: str) -> RequestInfo:
        return RequestInfo(
            request_id=self.request_id,
            transport=self.transport,
            received_at=self.received_at,
            latency_seconds=time.perf_counter() - self.started,
            model_tag=model_tag,
            trace_id=self.trace_id,
            endpoint=self.endpoint,
        )


def timed_out() -> RequestRejected:
    """How a request the server stopped waiting for is recorded: a 504 timeout (BentoML's request
    timeout, or a gRPC client's deadline)."""
    return RequestRejected.request_level(
        Reason.TIMEOUT, "no answer within the request timeout", status=504
    )


def server_failure() -> RequestRejected:
    """How a request that failed on the server side (a defect, not the client's) is recorded."""
    return RequestRejected.request_level(Reason.INTERNAL_ERROR, "", 500)


class ModelObserver(Protocol):
    def observe_model_call(
        self, columns: Mapping[str, np.ndarray], scores: np.ndarray, labels: Sequence[str]
    ) -> None:
        """Called on the model thread after each model call, with the call's input (one array
        per feature: the DataFrame's columns), scores and labels; must be cheap and not raise."""


def body_excerpt(body: bytes) -> str:
    """At most BODY_EXCERPT_BYTES of a refused body, for the log: enough to recognise, no more."""
    return body[:BODY_EXCERPT_BYTES].decode("utf-8", errors="replace")


class RequestFailed(Exception):
    """The model, or the server before it, failed on a request: recorded (500) and logged with its
    traceback already; the message, without the details, is what the client is told."""

    def __init__(self, message: str = MODEL_FAILED) -> None:
        super().__init__(message)
        self.message = message


def _unavailable(exc: BatcherClosed | BatcherFull) -> RequestRejected:
    """The 503 of a request the model cannot take: shutting down, or its queue full."""
    return RequestRejected.request_level(Reason.UNAVAILABLE, str(exc), status=503)


class Predictor:
    """One per worker process: the loaded model, its validator, the batcher and the sinks."""

    def __init__(
        self,
        model: LoadedModel,
        max_instances: int,
        max_model_batch_rows: int,
        sinks: Sequence[EventSink] = (),
        on_batch: BatchObserver | None = None,
        model_observer: ModelObserver | None = None,
        max_queued_rows: int = 0,
    ) -> None:
        self.model = model
        self._model_observer = model_observer
        self.contract = model.contract
        self.validator = InstanceValidator(model.contract, max_instances)
        self.sinks = Sinks(sinks)
        self._batcher: MicroBatcher[Instance, Prediction] = MicroBatcher(
            self._predict_rows, max_model_batch_rows, on_batch, max_queued_rows
        )

    def warm_up(self) -> None:
        """One model call before the first request: the first call pays one-time costs (half a
        second measured here) that would otherwise land on a client."""
        self.model.score(self.contract.frame([self.contract.example_instance()]))

    def _predict_rows(self, parts: list[Sequence[Instance]]) -> list[Prediction]:
        # Runs on the batcher's model thread: one call for the merged requests' instances.
        arrays = self.contract.arrays_of_columns(self._columns(parts))
        scores = self.model.score(self.contract.frame_of_arrays(arrays))
        labels = self.model.labels(scores)
        if self._model_observer is not None:
            try:
                self._model_observer.observe_model_call(arrays, scores, labels)
            except Exception:  # a side channel never fails a prediction
                log.exception("model observer failed")
        return [
            Prediction(label, float(score)) for label, score in zip(labels, scores, strict=True)
        ]

    def _columns(self, parts: list[Sequence[Instance]]) -> Mapping[str, Sequence[Any]]:
        """The merged requests' instances as one sequence of values per feature, from the
        columns the validator kept when every request has them."""
        kept = [part.columns if isinstance(part, Instances) else None for part in parts]
        if all(columns is not None for columns in kept):
            columns = cast(list[dict[str, list[Any]]], kept)
            if len(columns) == 1:
                return columns[0]
            return {
                name: list(chain.from_iterable(c[name] for c in columns)) for name in columns[0]
            }
        return self.contract.columns_of_rows([row for part in parts for row in part])

    async def answer(
        self,
        ctx: RequestContext,
        validate: Callable[[bytes], tuple[list[Instance], Parsed]],
        seen: SeenBody,
        *,
        read: Callable[[], Awaitable[bytes]] | None = None,
        body: bytes = b"",
    ) -> tuple[list[Prediction], Parsed]:
        """One request's life, whatever its transport: room in the model queue, read the body,
        validate, predict; every outcome recorded once (:meth:`reject` or the prediction's event).

        ``read`` reads the body (HTTP), else ``body`` is the request's (gRPC has the message
        already); ``validate`` turns the body into instances (and what the transport's answer
        needs), raising :class:`RequestRejected`; ``seen`` tells what of the body a refusal
        records. Raises :class:`RequestRejected` for a refused request and
        :class:`RequestFailed` when the server or the model fails, both recorded already, for the
        transport to render under ``ctx.request_id`` (which ``validate`` may set: the v2 ``id``).
        A cancellation (a timeout, a gRPC client's cancel) is recorded as
        ``ctx.cancellation()`` and goes on.
        """
        try:
            if read is not None:
                # Before the body is read: under overload, reading and validating a body only to
                # refuse it took the event loop's time from the requests it could still serve.
                # gRPC's message is read by gRPC already, and refused by predict() if need be.
                self.check_room()
                # Outside `validate`: a slow upload is the client's time, not validation's.
                body = await read()
            with tracing.span("validate"):
                instances, parsed = validate(body)
        except RequestRejected as exc:
            self.reject(ctx, exc, *seen(exc, body))
            raise
        except asyncio.CancelledError:
            # BentoML's request timeout, while a slow client was still sending the body:
            # answered 504 by its middleware (service/timeout.py), recorded here like a timeout
            # in the model queue.
            self.reject(ctx, ctx.cancellation())
            raise
        except Exception as exc:
            # A defect of ours: answered and recorded now, not left to BentoML's timeout
            # middleware (REQUEST_TIMEOUT_SECONDS, then a bare text 500 without request id or
            # log row).
            log.exception(
                "%s request %s failed before the model call", ctx.endpoint, ctx.request_id
            )
            failure = server_failure()
            self.reject(ctx, failure, *seen(failure, body))
            raise RequestFailed(SERVER_FAILED) from exc
        try:
            return await self.predict(ctx, instances), parsed
        except RequestRejected:  # e.g. 503 while shutting down; recorded
            raise
        except Exception as exc:  # recorded and logged by predict() and the batcher
            raise RequestFailed() from exc

    async def predict(self, ctx: RequestContext, instances: list[Instance]) -> list[Prediction]:
        """Predictions for validated ``instances``, in order; publishes the event."""
        self._annotate(ctx, len(instances))
        try:
            with tracing.span("model.predict", **{"model.version": self.model.version}) as current:
                batched = await self._batcher.submit(instances)
                current.set_attribute("model.batch.rows", batched.rows)
                current.set_attribute("model.batch.requests", batched.requests)
            predictions = list(batched.results)
        except asyncio.CancelledError:
            # BentoML's request timeout (answered 504 by its middleware), a gRPC client's
            # deadline or its cancel: the request still gets its record before the cancellation
            # goes on.
            self.reject(ctx, ctx.cancellation())
            raise
        except (BatcherClosed, BatcherFull) as exc:
            failure = _unavailable(exc)
            self.reject(ctx, failure)
            raise failure from exc
        except Exception:
            # Logged with its traceback by the batcher; the caller answers 500 internal_error,
            # without the details.
            self.reject(ctx, server_failure())
            raise
        with tracing.span("log.enqueue"):
            self.sinks.publish(PredictionEvent(ctx.finish(self.model.tag), instances, predictions))
        return predictions

    def check_room(self) -> None:
        """Refuse (503, not recorded: the caller records it) a request that cannot join the model
        queue whatever its size: under overload, reading and validating a body only to refuse it
        took the event loop's time from the requests it could still serve."""
        try:
            self._batcher.check_room()
        except BatcherFull as exc:
            raise _unavailable(exc) from exc

    def reject(
        self,
        ctx: RequestContext,
        exc: RequestRejected,
        body: bytes = b"",
        body_size: int | None = None,
    ) -> None:
        """Record a refused request; the transport renders the error itself.

        ``body_size`` defaults to ``len(body)``; gRPC passes the message size with a readable
        description of the message as ``body``.
        """
        self._annotate(ctx, None)
        size = len(body) if body_size is None else body_size
        self.sinks.publish(
            RejectionEvent(
                ctx.finish(self.model.tag), exc.status, exc.errors, size, body_excerpt(body)
            )
        )

    def _annotate(self, ctx: RequestContext, instances: int | None) -> None:
        # On the request's server span, which is current wherever the transports call us.
        current = tracing.trace.get_current_span()
        current.set_attribute("request.id", ctx.request_id)
        current.set_attribute("model.version", self.model.version)
        if instances is not None:
            current.set_attribute("request.instances", instances)

    def render(self, ctx: RequestContext, predictions: list[Prediction]) -> dict[str, Any]:
        """The JSON answer of ``POST /predict``."""
        score_name = self.contract.score_name
        return {
            "model": self.model.tag,
            "request_id": ctx.request_id,
            "predictions": [{"label": p.label, score_name: p.probability} for p in predictions],
        }

    def describe(self) -> dict[str, Any]:
        """The JSON answer of ``GET /model``."""
        return {
            "model": self.model.tag,
            "name": self.contract.model_name,
            "version": self.model.version,
            "decision_threshold": self.model.threshold,
            "metadata": self.model.metadata,
            "contract": self.contract.to_dict(),
            "instance_schema": self.contract.json_schema(),
        }

    async def aclose(self) -> None:
        """Answer every request already submitted to the model, then stop taking new ones."""
        await self._batcher.aclose()
