"""The Open Inference Protocol's semantics, shared by the gRPC servicer and the v2 REST routes.

Both transports parse their wire format into an :class:`InferRequest` and render what
:meth:`InferenceProtocol.infer` returns; everything else (which model is served, its metadata,
readiness, validation) happens here once, and the request's lifecycle (prediction, recording
refused and failed requests: one event per infer call) is :meth:`Predictor.answer`'s, as for
``POST /predict``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import bentoml

from service.events import Prediction
from service.inference import Predictor, RequestContext, SeenBody, usable_request_id
from service.oip.tensors import Tensor, TensorCodec
from service.validation import Instance, Reason, RequestRejected

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

    def infer(
        self,
        ctx: RequestContext,
        parse: Callable[[bytes], InferRequest],
        seen: SeenBody,
        *,
        read: Callable[[], Awaitable[bytes]] | None = None,
        body: bytes = b"",
    ) -> Coroutine[Any, Any, tuple[list[Prediction], InferCall]]:
        """:meth:`Predictor.answer`, ``parse`` turning the body into an :class:`InferRequest` and
        the protocol validating it: the model served, the outputs requested, the input tensors.

        The protocol's ``id``, when usable as a request id, replaces the one from the header (in
        ``ctx``, which the transport answers with): tritonclient's ``request_id`` argument sets
        it. Not a coroutine itself: the one of ``answer`` is the request's, without another.
        """

        def validate(body: bytes) -> tuple[list[Instance], InferCall]:
            try:
                request = parse(body)
            except MalformedInferRequest as exc:
                if usable_request_id(exc.request_id):
                    ctx.request_id = exc.request_id
                raise
            if request.id and usable_request_id(request.id):
                # In place: BentoML's timeout answer (service/timeout.py) holds this context.
                ctx.request_id = request.id
            self.check_model(request.model_name, request.model_version)
            outputs = self.codec.requested_outputs(request.outputs)
            return self.codec.decode(request.inputs), InferCall(request, outputs)

        return self.predictor.answer(ctx, validate, seen, read=read, body=body)

    def result(
        self, ctx: RequestContext, call: InferCall, predictions: list[Prediction]
    ) -> InferResult:
        """The answer's output tensors, for the transport to render."""
        return InferResult(ctx, call.request, self.codec.encode(predictions, call.outputs))


@dataclass(frozen=True, slots=True)
class InferCall:
    """A validated infer request: what its answer needs besides the predictions."""

    request: InferRequest
    outputs: tuple[str, ...]  # the outputs to answer, in order


@dataclass(frozen=True, slots=True)
class InferResult:
    ctx: RequestContext
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
