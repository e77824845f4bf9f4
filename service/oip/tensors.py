"""Open Inference Protocol tensors <-> the instances that the validator and the model take.

Shared by the gRPC servicer and the v2 REST routes, and derived from the feature contract:

- one input tensor per feature, named after it, of shape ``[batch]``; ``[batch, 1]`` is accepted
  too, because that is how MLServer's pandas codec and clients holding column vectors send columns;
- datatype by feature kind: categorical ``BYTES`` (UTF-8), integer ``INT64``, number ``FP64``;
- outputs ``label`` (``BYTES``) and the contract's score (e.g. ``probability_bad``, ``FP64``),
  shape ``[batch]``.

A transport turns its tensors into :class:`Tensor` (elements as Python values, or raw bytes as
``raw_input_contents`` and the binary REST extension carry them) and calls
:meth:`TensorCodec.decode`. Structural problems (unknown or missing inputs, datatypes, shapes,
element counts, bad raw bytes) raise :class:`RequestRejected` naming the input; values then go
through :class:`InstanceValidator`, so a bad value is reported with the same message over every
transport.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from service.contract import FeatureKind
from service.events import Prediction
from service.validation import (
    MAX_NAME_ECHO,
    UNKNOWN_FIELD,
    FieldError,
    Instance,
    InstanceValidator,
    Reason,
    RequestRejected,
)

DATATYPES: Final[dict[FeatureKind, str]] = {
    "categorical": "BYTES",
    "integer": "INT64",
    "number": "FP64",
}
LABEL_OUTPUT: Final = "label"
BATCH: Final = -1  # a dimension of variable size, in tensor metadata
# Little-endian element layout of the fixed-size datatypes this service reads or writes.
_FIXED_DTYPES: Final[dict[str, str]] = {"INT64": "<i8", "FP64": "<f8"}
_LENGTH = struct.Struct("<I")  # prefix of each BYTES element in raw contents
# Longest echo of a refused value (a datatype, a shape, bytes) in a message.
_MAX_ECHO = 64
# Inputs or requested outputs beyond the model's that are still read and reported one by one;
# a request with more is refused whole (see check_tensor_counts).
MAX_EXTRA_TENSORS: Final = 100


def check_tensor_counts(
    inputs: int, outputs: int, model_inputs: int, model_outputs: int, listed_by: str
) -> None:
    """Refuse a request with far more inputs or requested outputs than the model has, unread;
    ``listed_by`` names what lists the model's (e.g. ``ModelMetadata``).

    Each one beyond the model's is an error of its own, listed, up to MAX_EXTRA_TENSORS: read
    one by one, the 800,000 empty gRPC inputs that fit in a 4 MB message took 3.6 s, and the
    300,000 v2 REST outputs 1 s, holding the worker's event loop (every other request of the
    worker) all along.
    """
    for kind, count, model_count in (
        ("inputs", inputs, model_inputs),
        ("requested outputs", outputs, model_outputs),
    ):
        if count > model_count + MAX_EXTRA_TENSORS:
            raise RequestRejected.request_level(
                Reason.INVALID_TENSOR,
                f"the request has {count} {kind}; the model has {model_count} "
                f"({listed_by} lists them)",
            )


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor, whatever the transport: its elements flat in row-major order, either as Python
    values (typed contents, JSON ``data``) or as raw little-endian bytes."""

    name: str
    datatype: str
    shape: Sequence[Any]  # as sent; checked by the codec
    data: Sequence[Any] | bytes


class _TensorError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _echo(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_ECHO else text[: _MAX_ECHO - 3] + "..."


def input_error(name: str, message: str, known: Collection[str]) -> RequestRejected:
    """An input tensor refused by a transport's parser, reported under the input's name as the
    codec reports its own errors; a name not in ``known`` (the contract's inputs) is labelled
    UNKNOWN_FIELD in metrics."""
    metric = name if name in known else UNKNOWN_FIELD
    return RequestRejected(
        [FieldError(None, name[:MAX_NAME_ECHO], Reason.INVALID_TENSOR, message, metric)]
    )


def decode_raw(datatype: str, raw: bytes, count: int) -> list[Any]:
    """The ``count`` elements of raw contents: bytes for ``BYTES``, Python numbers otherwise."""
    if datatype == "BYTES":
        return _split_bytes(raw, count)
    width = np.dtype(_FIXED_DTYPES[datatype]).itemsize
    if len(raw) != count * width:
        raise _TensorError(
            Reason.INVALID_TENSOR,
            f"raw contents hold {len(raw)} bytes; {count} {datatype} elements take {count * width}",
        )
    return np.frombuffer(raw, dtype=_FIXED_DTYPES[datatype]).tolist()


def _split_bytes(raw: bytes, count: int) -> list[bytes]:
    elements: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise _TensorError(
                Reason.INVALID_TENSOR,
                f"raw BYTES contents end inside the length prefix of element {len(elements)}",
            )
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise _TensorError(
                Reason.INVALID_TENSOR,
                f"raw BYTES element {len(elements)} claims {size} bytes; "
                f"only {len(raw) - offset} remain",
            )
        elements.append(bytes(view[offset : offset + size]))
        offset += size
    if len(elements) != count:
        raise _TensorError(
            Reason.INVALID_TENSOR,
            f"raw BYTES contents hold {len(elements)} elements; the shape needs {count}",
        )
    return elements


def encode_raw(datatype: str, values: Sequence[Any]) -> bytes:
    """Raw contents of ``values``: each BYTES element (str) UTF-8, prefixed by its length."""
    if datatype == "BYTES":
        parts = []
        for value in values:
            data = value.encode() if isinstance(value, str) else bytes(value)
            parts += (_LENGTH.pack(len(data)), data)
        return b"".join(parts)
    return np.asarray(values, dtype=_FIXED_DTYPES[datatype]).tobytes()


class TensorCodec:
    """Input tensors -> validated instances; predictions -> output tensors."""

    def __init__(self, validator: InstanceValidator) -> None:
        contract = validator.contract
        self._validator = validator
        self.inputs = tuple(
            TensorMetadata(f.name, DATATYPES[f.kind], (BATCH,)) for f in contract.features
        )
        self.outputs = (
            TensorMetadata(LABEL_OUTPUT, "BYTES", (BATCH,)),
            TensorMetadata(contract.score_name, "FP64", (BATCH,)),
        )
        self._kinds = {f.name: f.kind for f in contract.features}
        self._datatypes = {t.name: t.datatype for t in self.inputs}
        self.input_names = frozenset(self._datatypes)
        self._output_names = tuple(t.name for t in self.outputs)

    # -- inputs -------------------------------------------------------------------------------

    def decode(self, tensors: Sequence[Tensor]) -> list[Instance]:
        """Validated instances, one per batch element; raises :class:`RequestRejected`."""
        errors: list[FieldError] = []
        columns: dict[str, list[Any]] = {}
        for tensor in tensors:
            name = tensor.name
            if name not in self._datatypes:
                errors.append(self._validator.unknown_field(None, name))
            elif name in columns:
                errors.append(
                    FieldError(None, name, Reason.INVALID_TENSOR, "the input is given twice", name)
                )
            else:
                try:
                    columns[name] = self._column(tensor, errors)
                except _TensorError as exc:
                    errors.append(FieldError(None, name, exc.reason, exc.message, name))
                    columns[name] = []  # known, so not reported missing
        errors += [
            FieldError(None, name, Reason.MISSING, "required input is missing", name)
            for name in self._datatypes
            if name not in columns
        ]
        if errors:
            raise RequestRejected(errors)
        batch = self._batch_size(tensors, columns)
        instances = self._rows(columns, batch)
        return self._validator.validate_instances(instances)

    def _column(self, tensor: Tensor, errors: list[FieldError]) -> list[Any]:
        expected = self._datatypes[tensor.name]
        if tensor.datatype != expected:
            raise _TensorError(
                Reason.WRONG_TYPE,
                f"datatype must be {expected} ({self._kinds[tensor.name]} feature), "
                f"got {_echo(tensor.datatype)}",
            )
        count = _batch_of(tensor.shape)
        if count > self._validator.max_instances:
            # Refused before its contents are read: the 1,300,000 one-byte BYTES elements that fit
            # in a 4 MB message, each judged (and refused) on its own, held the worker's event
            # loop, every other request of the worker, for 6 s.
            self._validator.check_batch_size(count)
        if isinstance(tensor.data, bytes | bytearray | memoryview):
            values = decode_raw(expected, bytes(tensor.data), count)
        else:
            values = list(tensor.data)
            if len(values) != count:
                raise _TensorError(
                    Reason.INVALID_TENSOR,
                    f"shape {list(tensor.shape)} needs {count} elements; "
                    f"the contents hold {len(values)}",
                )
        if expected == "BYTES":
            values = [_text(i, tensor.name, v, errors) for i, v in enumerate(values)]
        return values

    def _batch_size(self, tensors: Sequence[Tensor], columns: dict[str, list[Any]]) -> int:
        reference = tensors[0].name
        batch = len(columns[reference])
        mismatched = [
            FieldError(
                None,
                name,
                Reason.INVALID_TENSOR,
                f"has {len(values)} elements but input {reference!r} has {batch}: "
                "every input needs one element per instance",
                name,
            )
            for name, values in columns.items()
            if len(values) != batch
        ]
        if mismatched:
            raise RequestRejected(mismatched)
        return batch

    def _rows(self, columns: dict[str, list[Any]], batch: int) -> list[Instance]:
        self._validator.check_batch_size(batch)
        names = list(self._datatypes)  # contract order
        rows = zip(*(columns[n] for n in names), strict=True)
        return [dict(zip(names, row, strict=True)) for row in rows]

    # -- outputs ------------------------------------------------------------------------------

    def requested_outputs(self, names: Iterable[str]) -> tuple[str, ...]:
        """The outputs to answer, in order, duplicates dropped; all of them when ``names`` is
        empty. Raises :class:`RequestRejected` for a name the model does not produce."""
        wanted = tuple(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self._output_names]
        if unknown:
            listing = ", ".join(repr(n) for n in self._output_names)
            raise RequestRejected(
                [
                    self._output_error(name, f"unknown output; the outputs are {listing}")
                    for name in unknown
                ]
            )
        return wanted or self._output_names

    def _output_error(self, name: str, message: str) -> FieldError:
        shown = str(name)[:MAX_NAME_ECHO]
        return FieldError(None, shown, Reason.UNKNOWN_FIELD, message, UNKNOWN_FIELD)

    def encode(self, predictions: Sequence[Prediction], names: Sequence[str]) -> list[Tensor]:
        """Output tensors ``names`` (from :meth:`requested_outputs`) with Python values."""
        shape = (len(predictions),)
        columns: dict[str, tuple[str, list[Any]]] = {
            LABEL_OUTPUT: ("BYTES", [p.label for p in predictions]),
            self._output_names[1]: ("FP64", [p.probability for p in predictions]),
        }
        return [Tensor(name, columns[name][0], shape, columns[name][1]) for name in names]


def _batch_of(shape: Sequence[Any]) -> int:
    dims = list(shape)
    valid = (
        all(type(d) is int and d >= 0 for d in dims)
        and len(dims) in (1, 2)
        and (len(dims) == 1 or dims[1] == 1)
    )
    if not valid:
        raise _TensorError(
            Reason.INVALID_TENSOR,
            f"shape {_echo(dims)} is not accepted: each input is one feature, "
            "of shape [batch] or [batch, 1]",
        )
    return dims[0]


def _text(index: int, name: str, value: Any, errors: list[FieldError]) -> Any:
    """BYTES elements arrive as bytes (gRPC, raw) or str (JSON); the validator judges str."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        message = f"expected a UTF-8 string, got bytes that are not UTF-8: {_echo(value)}"
        errors.append(FieldError(index, name, Reason.WRONG_TYPE, message, name))
        return None
