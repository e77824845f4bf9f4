"""The Open Inference Protocol tensor codec: layout derived from the contract, and its errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from models.contract import CONTRACT
from service.contract import CategoricalFeature, IntegerFeature, NumberFeature
from service.events import Prediction
from service.oip.tensors import Tensor, TensorCodec, decode_raw, encode_raw
from service.validation import UNKNOWN_FIELD, InstanceValidator, Reason, RequestRejected
from tests.support import contract_of, example_rows, first_feature, first_numeric_feature

VALIDATOR = InstanceValidator(CONTRACT, max_instances=1000)
CODEC = TensorCodec(VALIDATOR)
# The structural errors are the same for every input: any model's first one.
ANY_INPUT = CODEC.inputs[0]


def tensors(rows: list[dict[str, Any]], raw: bool = False, column: bool = False) -> list[Tensor]:
    """One tensor per contract input, typed (str/int elements) or raw, [n] or [n, 1]."""
    shape = [len(rows), 1] if column else [len(rows)]
    out = []
    for meta in CODEC.inputs:
        values = [row[meta.name] for row in rows]
        data = encode_raw(meta.datatype, values) if raw else values
        out.append(Tensor(meta.name, meta.datatype, shape, data))
    return out


def replace(items: list[Tensor], name: str, **changes: Any) -> list[Tensor]:
    return [
        Tensor(**{**{f: getattr(t, f) for f in ("name", "datatype", "shape", "data")}, **changes})
        if t.name == name
        else t
        for t in items
    ]


def refused(items: list[Tensor]) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        CODEC.decode(items)
    return info.value


def test_metadata_is_derived_from_the_contract() -> None:
    kinds = {"categorical": "BYTES", "integer": "INT64", "number": "FP64"}
    assert [(t.name, t.datatype, t.shape) for t in CODEC.inputs] == [
        (f.name, kinds[f.kind], (-1,)) for f in CONTRACT.features
    ]
    assert [(t.name, t.datatype) for t in CODEC.outputs] == [
        ("label", "BYTES"),
        (CONTRACT.score_name, "FP64"),
    ]


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
@pytest.mark.parametrize("column", [False, True], ids=["[n]", "[n,1]"])
def test_tensors_decode_to_the_instances(raw: bool, column: bool) -> None:
    rows = example_rows(50)
    assert CODEC.decode(tensors(rows, raw=raw, column=column)) == rows


def test_bytes_elements_may_come_as_bytes() -> None:
    categorical = first_feature("categorical").name
    rows = example_rows(3)
    items = replace(tensors(rows), categorical, data=[row[categorical].encode() for row in rows])
    assert CODEC.decode(items) == rows


def test_a_number_feature_is_fp64() -> None:
    contract = contract_of(
        NumberFeature("ratio", 0.0, 1.0),
        IntegerFeature("count", 0, 9),
        CategoricalFeature("color", ("red", "blue")),
    )
    codec = TensorCodec(InstanceValidator(contract, 10))
    assert [t.datatype for t in codec.inputs] == ["FP64", "INT64", "BYTES"]
    assert [t.name for t in codec.outputs] == ["label", "probability_yes"]
    items = [
        Tensor("ratio", "FP64", [2], encode_raw("FP64", [0.25, 1.0])),
        Tensor("count", "INT64", [2], [3, 4]),
        Tensor("color", "BYTES", [2], [b"red", b"blue"]),
    ]
    assert codec.decode(items) == [
        {"ratio": 0.25, "count": 3, "color": "red"},
        {"ratio": 1.0, "count": 4, "color": "blue"},
    ]


def test_raw_layout_is_what_tritonclient_writes_and_reads() -> None:
    values = ["no checking account", "", "é ünïcode", "x" * 300]
    ours = encode_raw("BYTES", values)
    theirs = serialize_byte_tensor(np.array([v.encode() for v in values], dtype=np.object_))
    assert ours == theirs.item()
    assert [v.decode() for v in deserialize_bytes_tensor(ours)] == values
    assert decode_raw("BYTES", theirs.item(), len(values)) == [v.encode() for v in values]
    assert encode_raw("INT64", [1, -2]) == np.array([1, -2], dtype="<i8").tobytes()
    assert decode_raw("FP64", np.array([0.5, -1e300]).tobytes(), 2) == [0.5, -1e300]


# -- structural errors name the input -----------------------------------------------------------


def only_error(exc: RequestRejected) -> tuple[int | None, str, Reason, str]:
    assert len(exc.errors) == 1, exc.errors
    e = exc.errors[0]
    return e.instance, e.field, e.reason, e.message


def test_wrong_datatype() -> None:
    name, datatype = ANY_INPUT.name, ANY_INPUT.datatype
    other = "INT32"  # no feature's datatype
    items = replace(tensors(example_rows(2)), name, datatype=other, data=[12, 24])
    instance, field, reason, message = only_error(refused(items))
    assert (instance, field, reason) == (None, name, Reason.WRONG_TYPE)
    kind = CONTRACT.feature(name).kind
    assert message == f"datatype must be {datatype} ({kind} feature), got 'INT32'"


def test_missing_input() -> None:
    items = [t for t in tensors(example_rows(2)) if t.name != ANY_INPUT.name]
    assert only_error(refused(items))[:3] == (None, ANY_INPUT.name, Reason.MISSING)


def test_unknown_and_excluded_inputs_are_refused_like_unknown_fields() -> None:
    excluded = CONTRACT.excluded[:1]  # a contract may exclude nothing
    items = [
        *tensors(example_rows(2)),
        Tensor("colour", "BYTES", [2], ["a", "b"]),
        *[Tensor(name, "BYTES", [2], ["a", "b"]) for name in excluded],
    ]
    exc = refused(items)
    by_field = {e.field: e for e in exc.errors}
    assert by_field["colour"].reason is Reason.UNKNOWN_FIELD
    assert by_field["colour"].metric_field == UNKNOWN_FIELD
    for name in excluded:
        assert by_field[name].reason is Reason.EXCLUDED_FIELD
        # the same message as an excluded field of POST /predict
        row = {**example_rows(1)[0], name: "a"}
        with pytest.raises(RequestRejected) as http:
            VALIDATOR.validate_instances([row])
        assert by_field[name].message == http.value.errors[0].message


def test_input_given_twice() -> None:
    items = tensors(example_rows(2))
    exc = refused([*items, items[0]])
    assert only_error(exc)[:3] == (None, items[0].name, Reason.INVALID_TENSOR)


def test_ragged_batch_names_the_input_that_differs() -> None:
    rows = example_rows(3)
    name = CODEC.inputs[-1].name  # not the first: the one the others are measured against
    items = replace(tensors(rows), name, shape=[2], data=[r[name] for r in rows[:2]])
    instance, field, reason, message = only_error(refused(items))
    assert (instance, field, reason) == (None, name, Reason.INVALID_TENSOR)
    assert message == (
        f"has 2 elements but input {CODEC.inputs[0].name!r} has 3: "
        "every input needs one element per instance"
    )


@pytest.mark.parametrize(
    "shape", [[3, 2], [1, 3], [3, 1, 1], [], [-3], ["3"], [3.0], [True]], ids=repr
)
def test_shapes_other_than_batch_or_batch_by_one(shape: list[Any]) -> None:
    items = replace(tensors(example_rows(3)), ANY_INPUT.name, shape=shape)
    instance, field, reason, message = only_error(refused(items))
    assert (instance, field, reason) == (None, ANY_INPUT.name, Reason.INVALID_TENSOR)
    assert "[batch] or [batch, 1]" in message


def test_element_count_must_match_the_shape() -> None:
    items = replace(tensors(example_rows(3)), ANY_INPUT.name, shape=[4])
    _, field, reason, message = only_error(refused(items))
    assert (field, reason) == (ANY_INPUT.name, Reason.INVALID_TENSOR)
    assert message == "shape [4] needs 4 elements; the contents hold 3"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x01\x00", "end inside the length prefix"),
        (b"\xff\x00\x00\x00abc", "claims 255 bytes"),
        (encode_raw("BYTES", ["none", "none"]), "hold 2 elements; the shape needs 3"),
    ],
)
def test_malformed_raw_bytes(raw: bytes, expected: str) -> None:
    categorical = first_feature("categorical").name
    items = replace(tensors(example_rows(3), raw=True), categorical, data=raw)
    _, field, reason, message = only_error(refused(items))
    assert (field, reason) == (categorical, Reason.INVALID_TENSOR)
    assert expected in message


def test_raw_fixed_size_length_must_match() -> None:
    numeric = first_numeric_feature().name
    datatype = CODEC.inputs[CONTRACT.feature_names.index(numeric)].datatype  # INT64 or FP64
    items = replace(tensors(example_rows(3), raw=True), numeric, data=b"\x00" * 20)
    message = f"raw contents hold 20 bytes; 3 {datatype} elements take 24"
    assert only_error(refused(items))[3] == message


def test_bytes_that_are_not_utf8_name_the_instance() -> None:
    categorical = first_feature("categorical").name
    rows = example_rows(3)
    data = [r[categorical].encode() for r in rows]
    data[2] = b"\xff\xfe"
    instance, field, reason, _ = only_error(refused(replace(tensors(rows), categorical, data=data)))
    assert (instance, field, reason) == (2, categorical, Reason.WRONG_TYPE)


# -- values are judged by the validator, with the messages of POST /predict ----------------------


def refused_value(case: str) -> tuple[str, Any]:
    """A feature and a value of its type outside its domain."""
    if case == "unknown category":
        return first_feature("categorical").name, "castle"
    numeric = first_numeric_feature()
    return numeric.name, numeric.maximum + 1 if case == "above" else numeric.minimum - 1


@pytest.mark.parametrize("case", ["unknown category", "above", "below"])
def test_value_errors_are_those_of_the_http_api(case: str) -> None:
    field, value = refused_value(case)
    rows = example_rows(4)
    bad = [dict(r) for r in rows]
    bad[3][field] = value
    with pytest.raises(RequestRejected) as http:
        VALIDATOR.validate_instances(bad)
    exc = refused(tensors(bad, raw=True))
    assert [e.to_dict() for e in exc.errors] == [e.to_dict() for e in http.value.errors]
    assert exc.summary == http.value.summary
    assert exc.errors[0].instance == 3


def test_nan_in_fp64_is_refused_by_the_validator() -> None:
    contract = contract_of(NumberFeature("x", 0.0, 1.0))
    codec = TensorCodec(InstanceValidator(contract, 10))
    with pytest.raises(RequestRejected) as info:
        codec.decode([Tensor("x", "FP64", [2], encode_raw("FP64", [0.5, math.nan]))])
    assert (info.value.errors[0].instance, info.value.errors[0].reason) == (1, Reason.WRONG_TYPE)


@pytest.mark.parametrize(
    ("n", "reason", "status"), [(0, "empty_batch", 400), (1001, "batch_too_large", 413)]
)
def test_batch_size_limits(n: int, reason: str, status: int) -> None:
    rows = (example_rows(1) * n)[:n]
    exc = refused(tensors(rows, raw=True))
    assert (exc.errors[0].reason.value, exc.status) == (reason, status)


# -- outputs ------------------------------------------------------------------------------------


def test_outputs_in_the_requested_order() -> None:
    predictions = [Prediction("good", 0.125), Prediction("bad", 0.75)]
    names = CODEC.requested_outputs([])
    assert names == ("label", CONTRACT.score_name)
    label, score = CODEC.encode(predictions, names)
    assert (label.name, label.datatype, tuple(label.shape), label.data) == (
        "label",
        "BYTES",
        (2,),
        ["good", "bad"],
    )
    assert (score.datatype, score.data) == ("FP64", [0.125, 0.75])
    only = CODEC.requested_outputs([CONTRACT.score_name, CONTRACT.score_name])
    assert [t.name for t in CODEC.encode(predictions, only)] == [CONTRACT.score_name]


def test_unknown_output_is_refused() -> None:
    with pytest.raises(RequestRejected) as info:
        CODEC.requested_outputs(["label", "probability"])
    (error,) = info.value.errors
    assert (error.field, error.reason, error.metric_field) == (
        "probability",
        Reason.UNKNOWN_FIELD,
        UNKNOWN_FIELD,
    )
    assert "'label'" in error.message
