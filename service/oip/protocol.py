"""The Open Inference Protocol's semantics, shared by the gRPC servicer and the v2 REST routes.

Both transports parse their wire format into an :class:`InferRequest` and render what
:meth:`InferenceProtocol.infer` returns; everything else (which model is served, its metadata,
readiness, validation, prediction, recording refused requests) happens here once. Every infer
call produces exactly one event through the :class:`Predictor`, like ``POST /predict``.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bentoml

from service import tracing
from service.inference import (
    MODEL_FAILED,
    SERVER_FAILED,
    Predictor,
    RequestContext,
    server_failure,
    usable_request_id,
)
from service.oip.tensors import Tensor, TensorCodec
from service.validation import Reason, RequestRejected

log = logging.getLogger(__name__)

_DISTRIBUTION = "credit-risk-service"


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed infer request, whatever the transport."""

    model_name: str
    model_version: str  # "" = whatever the server serves
    id: str  # the protocol's request id, echoed in the answer; "" when not given
    inputs: Sequence[Tensor]
    outputs: Sequence[str] = ()  # empty = all
    binary_outputs: frozenset[str] = field(default_factory=frozenset)  # REST binary extension


def server_version() -> str:
    """The bento's version when served from a bento, else the installed project's version."""
    bento_version = bentoml.server_context.bento_version
    if bento_version and bento_version != "not available":
        return bento_version
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class InferenceProtocol:
    """One per worker, over the worker's :class:`Predictor`."""

    def __init__(self, predictor: Predictor, server_name: str, server_version: str) -> None:
        self.predictor = predictor
        self.codec = TensorCodec(predictor.validator)
        self.model_name = predictor.contract.model_name
        self.model_version = predictor.model.version
        self.server_name = server_name
        self.server_version = server_version
        # Cleared when the worker starts shutting down, so that readiness probes see it first.
        self.ready = True

    def server_metadata(self, extensions: Sequence[str]) -> dict[str, Any]:
        return {
            "name": self.server_name,
            "version": self.server_version,
            "extensions": list(extensions),
        }

    def model_metadata(self) -> dict[str, Any]:
        estimator = type(self.predictor.model.estimator)
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            # The estimator's library, e.g. "sklearn" (KServe and MLServer use the same word).
            "platform": estimator.__module__.split(".", 1)[0],
            "inputs": [t.to_dict() for t in self.codec.inputs],
            "outputs": [t.to_dict() for t in self.codec.outputs],
        }

    def check_model(self, name: str, version: str = "") -> None:
        """Raise a 404 :class:`RequestRejected` unless ``name`` (and ``version``) are served."""
        if name != self.model_name:
            raise RequestRejected.request_level(
                Reason.UNKNOWN_MODEL,
                f"unknown model {name[:64]!r}; this server serves {self.model_name!r}",
                status=404,
            )
        if version and version != self.model_version:
            raise RequestRejected.request_level(
                Reason.UNKNOWN_MODEL,
                f"version {version[:64]!r} of model {name!r} is not served; "
                f"the served version is {self.model_version!r}",
                status=404,
            )

    def model_ready(self, name: str, version: str = "") -> bool:
        self.check_model(name, version)
        return self.ready

    async def infer(
        self,
        ctx: RequestContext,
        parse: Callable[[], InferRequest],
        describe: Callable[[], bytes],
        body_size: int | None = None,
    ) -> InferResult:
        """Parse, validate and predict.

        Raises :class:`InferRejected` for a refused request and :class:`InferFailed` when the
        model, or the server before it, fails; both are recorded already and carry the context
        to answer with. ``describe()`` is called only for a request refused or failed before the
        model call: the body, or a readable account of it, kept cut short in its log.
        The protocol's ``id``, when usable as a request id, replaces the one from the header:
        tritonclient's ``request_id`` argument sets it.
        """
        try:
            with tracing.span("validate"):
                request = parse()
                if request.id and usable_request_id(request.id):
                    # In place: BentoML's timeout answer (service/timeout.py) holds this context.
                    ctx.request_id = request.id
                self.check_model(request.model_name, request.model_version)
                outputs = self.codec.requested_outputs(request.outputs)
                instances = self.codec.decode(request.inputs)
        except RequestRejected as exc:
            if isinstance(exc, MalformedInferRequest) and usable_request_id(exc.request_id):
                ctx.request_id = exc.request_id
            self.predictor.reject(ctx, exc, describe(), body_size)
            raise InferRejected(exc, ctx) from exc
        except Exception as exc:
            # A defect of ours: answered and recorded now, not left to BentoML's timeout
            # middleware (REQUEST_TIMEOUT_SECONDS, then a bare text 500 without request id or
            # log row).
            log.exception("infer request %s failed before the model call", ctx.request_id)
            self.predictor.reject(ctx, server_failure(), describe(), body_size)
            raise InferFailed(ctx, SERVER_FAILED) from exc
        try:
            predictions = await self.predictor.predict(ctx, instances)
        except RequestRejected as exc:  # e.g. 503 while shutting down; recorded
            raise InferRejected(exc, ctx) from exc
        except Exception as exc:  # recorded and logged by the predictor and the batcher
            raise InferFailed(ctx) from exc
        return InferResult(ctx, request, self.codec.encode(predictions, outputs))


@dataclass(frozen=True, slots=True)
class InferResult:
    ctx: RequestContext  # with the request id finally used
    request: InferRequest
    outputs: list[Tensor]

    @property
    def response_id(self) -> str:
        """The ``id`` of the answer: the request's own, else the request id."""
        return self.request.id or self.ctx.request_id


class MalformedInferRequest(RequestRejected):
    """A refusal raised while parsing a request whose protocol ``id`` was read already."""

    def __init__(self, rejection: RequestRejected, request_id: str) -> None:
        super().__init__(rejection.errors, rejection.status)
        self.request_id = request_id


class InferRejected(Exception):
    """A refused infer request, already recorded; ``ctx`` has the request id to answer with."""

    def __init__(self, rejection: RequestRejected, ctx: RequestContext) -> None:
        super().__init__(rejection.summary)
        self.rejection = rejection
        self.ctx = ctx


class InferFailed(Exception):
    """The model, or the server before it, failed (recorded; logged with its traceback)."""

    def __init__(self, ctx: RequestContext, message: str = MODEL_FAILED) -> None:
        super().__init__(message)
        self.ctx = ctx
