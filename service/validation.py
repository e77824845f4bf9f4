"""Request validation against the feature contract, with field-level errors.

Every transport (HTTP JSON, v2 REST, gRPC) turns its payload into a list of instance dicts and
runs them through :class:`InstanceValidator`; request-level problems (malformed JSON, wrong shape,
batch size) raise :class:`RequestRejected` too, so there is one error vocabulary for all of them.

``Reason`` values and the field names of the contract are the only values that reach metric labels:
unknown field names sent by clients are reported in the error body but labelled ``UNKNOWN_FIELD``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any

from service.contract import (
    CategoricalFeature,
    Feature,
    FeatureContract,
    IntegerFeature,
    NumberFeature,
)

Instance = dict[str, Any]


class Instances(list[Instance]):
    """Validated instances, as a list; ``columns`` holds each feature's values in instance order
    when the validator gathered them anyway (the column-by-column check of a batch), so that the
    model's DataFrame is built from them rather than gathered again from the dicts (about 60% of
    that step, a tenth of a 1000-instance model call's thread time, measured)."""

    __slots__ = ("columns",)

    def __init__(self, instances: list[Instance], columns: dict[str, list[Any]] | None = None):
        super().__init__(instances)
        self.columns = columns


# Field label for request-level errors and for fields the contract does not know.
REQUEST_FIELD = "$request"
UNKNOWN_FIELD = "$unknown"
# How many errors an answer lists; the total is always reported.
MAX_REPORTED_ERRORS = 50
MAX_NAME_ECHO = 64
_MAX_VALUE_ECHO = 80
# Fields that are not features, per instance, still reported one by one; an instance with more
# gets one error for all of them. Listed one by one, the 400,000 short names that fit in a
# 4 MB body took 1 to 3 s to refuse, holding the worker's event loop all along; with this cap a
# request's errors stay within what 1000 instances of wrong values give (measured).
MAX_UNKNOWN_FIELDS = 20
_UNKNOWN_EXAMPLES = 3


class Reason(StrEnum):
    # request level
    INVALID_JSON = "invalid_json"
    INVALID_BODY = "invalid_body"
    EMPTY_BATCH = "empty_batch"
    BATCH_TOO_LARGE = "batch_too_large"
    BODY_TOO_LARGE = "body_too_large"
    UNKNOWN_MODEL = "unknown_model"  # Open Inference Protocol: another model name or version
    INVALID_TENSOR = "invalid_tensor"  # Open Inference Protocol: shape, element count, raw bytes
    # instance level
    INVALID_INSTANCE = "invalid_instance"
    MISSING = "missing"
    UNKNOWN_FIELD = "unknown_field"
    EXCLUDED_FIELD = "excluded_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_CATEGORY = "unknown_category"
    OUT_OF_RANGE = "out_of_range"
    # server side: the request was valid but could not be answered
    INTERNAL_ERROR = "internal_error"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    # the client gave up: it cancelled its gRPC call before the answer, or closed its HTTP
    # connection before sending the whole body (status CLIENT_CLOSED)
    CANCELLED = "cancelled"


# nginx's "client closed request": the status recorded when the client gave up (Reason.CANCELLED).
CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with a request; ``instance`` is None for request-level problems."""

    instance: int | None
    field: str
    reason: Reason
    message: str
    # Bounded label for metrics: a contract feature or excluded name, REQUEST_FIELD or
    # UNKNOWN_FIELD.
    metric_field: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "field": self.field,
            "reason": self.reason.value,
            "message": self.message,
        }


class RequestRejected(Exception):
    """A request answered with ``errors`` instead of predictions, with HTTP ``status``.

    Mostly the client's mistake (4xx; gRPC INVALID_ARGUMENT or NOT_FOUND), but the same shape
    records the server's condition too (500, 503 unavailable, 504 timeout) and a client that
    gave up (499, :data:`CLIENT_CLOSED`): every request not answered with predictions is logged
    and counted the same way.
    """

    def __init__(self, errors: list[FieldError], status: int = 400) -> None:
        super().__init__(errors[0].message if errors else "invalid request")
        self.errors = errors
        self.status = status

    @classmethod
    def request_level(cls, reason: Reason, message: str, status: int = 400) -> RequestRejected:
        return cls([FieldError(None, REQUEST_FIELD, reason, message, REQUEST_FIELD)], status)

    @property
    def summary(self) -> str:
        """One line naming the first problem, e.g. for a gRPC status detail or a log line."""
        first = self.errors[0]
        where = "request" if first.instance is None else f"instances[{first.instance}]"
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        field = "" if first.field == REQUEST_FIELD else f".{first.field}"
        return f"{where}{field}: {first.message}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {
            # What a client decides on: a request to correct (4xx), or the server's condition
            # (503 "unavailable": retry later), as a 500's "internal_error" is.
            "error": "invalid_request" if self.status < 500 else self.errors[0].reason.value,
            "message": self.summary,
            "error_count": len(self.errors),
            "errors": [e.to_dict() for e in self.errors[:MAX_REPORTED_ERRORS]],
        }


# A check returns None when the value is valid, else (reason, message).
Check = Callable[[Any], tuple[Reason, str] | None]


def _echo(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_ECHO else text[: _MAX_VALUE_ECHO - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _categorical_check(feat: CategoricalFeature) -> Check:
    allowed = frozenset(feat.categories)
    listing = ", ".join(repr(c) for c in feat.categories)

    def check(value: Any) -> tuple[Reason, str] | None:
        if type(value) is str:
            if value in allowed:
                return None
            return Reason.UNKNOWN_CATEGORY, f"{_echo(value)} is not one of: {listing}"
        return Reason.WRONG_TYPE, f"expected a string category, got {_json_type(value)}"

    return check


def _integer_check(feat: IntegerFeature) -> Check:
    lo, hi = feat.minimum, feat.maximum

    def check(value: Any) -> tuple[Reason, str] | None:
        # type() rather than isinstance(): bool is an int subclass and must be refused.
        if type(value) is int:
            if lo <= value <= hi:
                return None
            return Reason.OUT_OF_RANGE, f"{value} is outside the allowed range {lo}..{hi}"
        if type(value) is float and math.isfinite(value):
            # orjson decodes integers of 2**64 and beyond as floats: such a client sent an
            # integer, too large, not a fraction.
            if value.is_integer() and not lo <= value <= hi:
                # Up to 309 digits (1e308): shortened like any echoed value.
                shown = _echo(int(value))
                return Reason.OUT_OF_RANGE, f"{shown} is outside the allowed range {lo}..{hi}"
            return Reason.WRONG_TYPE, f"expected an integer, got the fraction {_echo(value)}"
        return Reason.WRONG_TYPE, f"expected an integer, got {_json_type(value)}"

    return check


def _number_check(feat: NumberFeature) -> Check:
    lo, hi = feat.minimum, feat.maximum

    def check(value: Any) -> tuple[Reason, str] | None:
        if type(value) in (int, float):
            if not math.isfinite(value):
                return Reason.WRONG_TYPE, f"expected a finite number, got {_echo(value)}"
            if lo <= value <= hi:
                return None
            return Reason.OUT_OF_RANGE, f"{value} is outside the allowed range {lo}..{hi}"
        return Reason.WRONG_TYPE, f"expected a number, got {_json_type(value)}"

    return check


# A column check says whether every value of one feature across a batch is valid, using
# C-level builtins (set, min, max) instead of one Python call per value. It must never accept
# what the per-value check refuses; when it says no, the per-value checks find the errors.
ColumnCheck = Callable[[list[Any]], bool]
# Below this many instances the per-value checks are as fast (measured).
_COLUMNAR_FROM = 16


def make_column_check(feat: Feature) -> ColumnCheck:
    if isinstance(feat, CategoricalFeature):
        allowed = frozenset(feat.categories)

        def categorical(column: list[Any]) -> bool:
            # Only a str equals a str category (JSON decoders give exact types), and an
            # unhashable value (a list, an object) cannot be a member.
            try:
                return allowed.issuperset(column)
            except TypeError:
                return False

        return categorical
    lo, hi = feat.minimum, feat.maximum
    if isinstance(feat, IntegerFeature):
        return lambda column: (
            set(map(type, column)) == {int} and lo <= min(column) and max(column) <= hi
        )
    return lambda column: (
        set(map(type, column)) <= {int, float}
        and all(map(math.isfinite, column))
        and lo <= min(column)
        and max(column) <= hi
    )


def make_check(feat: Feature) -> Check:
    if isinstance(feat, CategoricalFeature):
        return _categorical_check(feat)
    if isinstance(feat, IntegerFeature):
        return _integer_check(feat)
    return _number_check(feat)


class InstanceValidator:
    """Validates instances (dicts of feature values) and whole ``{"instances": [...]}`` payloads."""

    def __init__(self, contract: FeatureContract, max_instances: int) -> None:
        self.contract = contract
        self.max_instances = max_instances
        self._checks: tuple[tuple[str, Check], ...] = tuple(
            (f.name, make_check(f)) for f in contract.features
        )
        self._column_checks: tuple[tuple[str, ColumnCheck], ...] = tuple(
            (f.name, make_column_check(f)) for f in contract.features
        )
        self._names = frozenset(contract.feature_names)
        self._width = len(self._names)
        self._excluded = frozenset(contract.excluded)
        why = f" ({contract.excluded_reason})" if contract.excluded_reason else ""
        self._excluded_message = (
            f"this attribute is deliberately not used by the model{why}; remove it from the request"
        )

    def validate_payload(self, payload: Any) -> Instances:
        """Validate a decoded ``{"instances": [...]}`` body; return its instances."""
        if not isinstance(payload, dict):
            raise RequestRejected.request_level(
                Reason.INVALID_BODY,
                f'expected a JSON object {{"instances": [...]}}, got {_json_type(payload)}',
            )
        extra = sorted(k for k in payload if k != "instances")
        if extra:
            raise RequestRejected.request_level(
                Reason.INVALID_BODY,
                f"unexpected top-level field {_echo(extra[0])[:MAX_NAME_ECHO]}; "
                'the body must be {"instances": [...]}',
            )
        instances = payload.get("instances")
        if not isinstance(instances, list):
            got = "nothing" if "instances" not in payload else _json_type(instances)
            raise RequestRejected.request_level(
                Reason.INVALID_BODY, f'"instances" must be an array of objects, got {got}'
            )
        return self.validate_instances(instances)

    def validate_instances(self, instances: list[Any]) -> Instances:
        self.check_batch_size(len(instances))
        if len(instances) >= _COLUMNAR_FROM:
            columns = self._valid_columns(instances)
            if columns is not None:
                return Instances(instances, columns)
        errors: list[FieldError] = []
        for index, instance in enumerate(instances):
            self._validate_one(index, instance, errors)
        if errors:
            raise RequestRejected(errors)
        return Instances(instances)

    def _valid_columns(self, instances: list[Any]) -> dict[str, list[Any]] | None:
        """The fast path, column by column: every feature's values if every instance is valid,
        else None (the per-value checks then find the errors)."""
        # Objects with exactly as many keys as features, each feature present (a KeyError
        # otherwise): exactly the contract's keys.
        if set(map(type, instances)) != {dict} or set(map(len, instances)) != {self._width}:
            return None
        columns: dict[str, list[Any]] = {}
        try:
            for name, check in self._column_checks:
                column = [instance[name] for instance in instances]
                if not check(column):
                    return None
                columns[name] = column
        except KeyError:
            return None
        return columns

    def check_batch_size(self, size: int) -> None:
        if size == 0:
            raise RequestRejected.request_level(
                Reason.EMPTY_BATCH, "the batch is empty: send 1 or more instances"
            )
        if size > self.max_instances:
            raise RequestRejected.request_level(
                Reason.BATCH_TOO_LARGE,
                f"the batch has {size} instances; at most {self.max_instances} are accepted "
                "per request: split it",
                status=413,
            )

    def _validate_one(self, index: int, instance: Any, errors: list[FieldError]) -> None:
        if not isinstance(instance, dict):
            errors.append(
                FieldError(
                    index,
                    REQUEST_FIELD,
                    Reason.INVALID_INSTANCE,
                    f"each instance must be a JSON object, got {_json_type(instance)}",
                    REQUEST_FIELD,
                )
            )
            return
        # Fast path: the exact key set needs no membership test per feature.
        complete = instance.keys() == self._names
        for name, check in self._checks:
            if complete or name in instance:
                problem = check(instance[name])
                if problem is not None:
                    errors.append(FieldError(index, name, problem[0], problem[1], name))
            else:
                errors.append(
                    FieldError(index, name, Reason.MISSING, "required field is missing", name)
                )
        if not complete:
            # Counted here, off the valid instances' path: the features present, then the rest.
            present = sum(1 for name in self._names if name in instance)
            self._unknown_field_errors(index, instance, len(instance) - present, errors)

    def _unknown_field_errors(
        self, index: int, instance: Mapping[str, Any], count: int, errors: list[FieldError]
    ) -> None:
        """The errors of the ``count`` fields of ``instance`` that are not features."""
        unknown = (name for name in instance if name not in self._names)
        if count <= MAX_UNKNOWN_FIELDS:
            errors.extend(self.unknown_field(index, name) for name in unknown)
            return
        examples = ", ".join(
            _echo(str(name)[:MAX_NAME_ECHO]) for name in islice(unknown, _UNKNOWN_EXAMPLES)
        )
        message = (
            f"{count} fields are not features (first: {examples}); more than "
            f"{MAX_UNKNOWN_FIELDS} are reported as one error; GET /model lists the features"
        )
        errors.append(
            FieldError(index, UNKNOWN_FIELD, Reason.UNKNOWN_FIELD, message, UNKNOWN_FIELD)
        )

    def unknown_field(self, index: int | None, name: Any) -> FieldError:
        """The error for a field (or OIP input tensor) ``name`` that is not a feature."""
        shown = str(name)[:MAX_NAME_ECHO]
        if name in self._excluded:
            return FieldError(
                index,
                shown,
                Reason.EXCLUDED_FIELD,
                self._excluded_message,
                shown,
            )
        return FieldError(
            index,
            shown,
            Reason.UNKNOWN_FIELD,
            "unknown field; GET /model lists the accepted features",
            UNKNOWN_FIELD,
        )
