from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from models.contract import CONTRACT
from service.asgi import decode_json
from service.contract import (
    CategoricalFeature,
    FeatureContract,
    IntegerFeature,
    NumberFeature,
    NumericFeature,
)
from service.validation import (
    MAX_REPORTED_ERRORS,
    REQUEST_FIELD,
    UNKNOWN_FIELD,
    InstanceValidator,
    Reason,
    RequestRejected,
)
from tests.support import (
    contract_of,
    example_rows,
    excluded_columns,
    first_feature,
    first_numeric_feature,
    params_or_skip,
    training_data,
)

VALIDATOR = InstanceValidator(CONTRACT, max_instances=1000)


def valid_row() -> dict[str, Any]:
    return example_rows(1)[0]


def rejection(payload: Any) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        VALIDATOR.validate_payload(payload)
    return info.value


def only_error(payload: Any) -> tuple[int | None, str, Reason]:
    exc = rejection(payload)
    assert len(exc.errors) == 1, exc.errors
    err = exc.errors[0]
    return err.instance, err.field, err.reason


def test_every_row_of_the_data_set_is_valid() -> None:
    rows = example_rows()
    assert InstanceValidator(CONTRACT, len(rows)).validate_instances(rows) == rows


# The contract's first feature of each kind, and another categorical one: the rules are the
# validator's, the fields any model's (a swapped model's included, whichever kinds it has).
_INTEGERS = CONTRACT.of_kind("integer")
_NUMBERS = CONTRACT.of_kind("number")
_CATEGORICALS = CONTRACT.of_kind("categorical")


def _not_a_category(feat: CategoricalFeature, value: str) -> list[str]:
    return [] if value in feat.categories else [value]


def _numeric_cases(feat: IntegerFeature | NumberFeature) -> list[tuple[str, Any, Reason]]:
    """What integer and number features both refuse."""
    name, lo, hi = feat.name, feat.minimum, feat.maximum
    return [
        (name, str(lo), Reason.WRONG_TYPE),
        (name, True, Reason.WRONG_TYPE),  # bool is not a number
        (name, None, Reason.WRONG_TYPE),
        (name, math.nan, Reason.WRONG_TYPE),
        (name, math.inf, Reason.WRONG_TYPE),
        (name, [lo], Reason.WRONG_TYPE),
        (name, lo - 1, Reason.OUT_OF_RANGE),
        (name, hi + 1, Reason.OUT_OF_RANGE),
        (name, orjson.loads(b"-1e30"), Reason.OUT_OF_RANGE),
    ]


def _integer_cases(feat: IntegerFeature) -> list[tuple[str, Any, Reason]]:
    name, lo = feat.name, feat.minimum
    return [
        *_numeric_cases(feat),
        (name, lo + 0.5, Reason.WRONG_TYPE),
        (name, float(lo), Reason.WRONG_TYPE),  # a JSON fraction, even if integral
        (name, 10**30, Reason.OUT_OF_RANGE),
        # integers orjson decodes as floats (2**64 and beyond): too large, not fractions
        (name, orjson.loads(b"18446744073709551616"), Reason.OUT_OF_RANGE),
    ]


def _categorical_cases(feat: CategoricalFeature) -> list[tuple[str, Any, Reason]]:
    first = feat.categories[0]
    unknown = [
        *_not_a_category(feat, first + " (unknown)"),
        *_not_a_category(feat, first.swapcase()),  # exact match, case included
        *_not_a_category(feat, " " + first),
    ]
    return [
        *[(feat.name, value, Reason.UNKNOWN_CATEGORY) for value in unknown],
        (feat.name, 3, Reason.WRONG_TYPE),
        (feat.name, None, Reason.WRONG_TYPE),
        (feat.name, {"a": 1}, Reason.WRONG_TYPE),
        (feat.name, [first], Reason.WRONG_TYPE),
    ]


INVALID_VALUES = [
    *(_integer_cases(_INTEGERS[0]) if _INTEGERS else []),  # type: ignore[arg-type]
    # every integer feature's domain, not only the first's
    *[(f.name, f.maximum + 1, Reason.OUT_OF_RANGE) for f in _INTEGERS[1:]],
    *[(f.name, f.minimum - 1, Reason.OUT_OF_RANGE) for f in _INTEGERS[1:]],
    *(_numeric_cases(_NUMBERS[0]) if _NUMBERS else []),  # type: ignore[arg-type]
    *(_categorical_cases(_CATEGORICALS[0]) if _CATEGORICALS else []),  # type: ignore[arg-type]
    *[(f.name, ["x"], Reason.WRONG_TYPE) for f in _CATEGORICALS[1:2]],
]


@pytest.mark.parametrize(("field", "value", "reason"), INVALID_VALUES)
def test_invalid_values_name_instance_field_and_reason(
    field: str, value: Any, reason: Reason
) -> None:
    rows = [valid_row(), valid_row(), valid_row()]
    rows[2][field] = value
    assert only_error({"instances": rows}) == (2, field, reason)


def _inside_the_domain_outside_training(feat: NumericFeature) -> list[tuple[str, Any]]:
    """A value the domain allows that the training data does not hold (the metrics count it)."""
    seen = training_data()[feat.name]
    if isinstance(feat, IntegerFeature):
        value: float = (int(seen.max()) + feat.maximum + 1) // 2
    else:
        value = (float(seen.max()) + feat.maximum) / 2
    return [(feat.name, value)] if value > seen.max() else []


@pytest.mark.parametrize(
    ("field", "value"),
    params_or_skip(
        [
            *[(f.name, f.minimum) for f in CONTRACT.numeric_features()],
            *[(f.name, f.maximum) for f in CONTRACT.numeric_features()],
            *[
                pair
                for f in CONTRACT.numeric_features()
                for pair in _inside_the_domain_outside_training(f)
            ],
        ],
        "the contract has no integer or number feature",
        width=2,
    ),
)
def test_domain_bounds_are_inclusive(field: str, value: float) -> None:
    row = valid_row()
    row[field] = value
    assert VALIDATOR.validate_payload({"instances": [row]}) == [row]


def test_missing_field() -> None:
    row = valid_row()
    name = CONTRACT.feature_names[-1]
    del row[name]
    assert only_error({"instances": [row]}) == (0, name, Reason.MISSING)


def test_unknown_field_is_refused_and_labelled_boundedly() -> None:
    row = valid_row()
    row["favourite_colour"] = "blue"
    exc = rejection({"instances": [row]})
    (err,) = exc.errors
    assert (err.instance, err.field, err.reason) == (0, "favourite_colour", Reason.UNKNOWN_FIELD)
    assert err.metric_field == UNKNOWN_FIELD


@pytest.mark.parametrize("field", excluded_columns())
def test_excluded_attributes_are_refused_with_a_reason(field: str) -> None:
    row = valid_row()
    row[field] = "yes"
    exc = rejection({"instances": [row]})
    (err,) = exc.errors
    assert (err.field, err.reason) == (field, Reason.EXCLUDED_FIELD)
    assert CONTRACT.excluded_reason in err.message


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("", "this attribute is deliberately not used by the model; remove it from the request"),
        (
            "personal data",
            "this attribute is deliberately not used by the model (personal data); "
            "remove it from the request",
        ),
    ],
)
def test_an_excluded_field_is_refused_with_the_contracts_reason(reason: str, message: str) -> None:
    # A swapped model's excluded columns need not be protected attributes: the contract says why.
    contract = contract_of(
        NumberFeature("x", 0, 1), excluded=("patient_name",), excluded_reason=reason
    )
    with pytest.raises(RequestRejected) as info:
        InstanceValidator(contract, 10).validate_payload(
            {"instances": [{"x": 0.5, "patient_name": "Ann"}]}
        )
    (err,) = info.value.errors
    assert (err.field, err.reason, err.message) == ("patient_name", Reason.EXCLUDED_FIELD, message)
    assert FeatureContract.from_json(contract.to_json()) == contract


def test_a_contract_saved_without_an_excluded_reason_keeps_the_examples() -> None:
    # contract.json of models registered before excluded_reason existed: the example's wording.
    saved = CONTRACT.to_dict()
    del saved["excluded_reason"]
    assert FeatureContract.from_dict(saved).excluded_reason == "protected attribute"


def test_all_errors_of_all_instances_are_reported() -> None:
    # two features broken in each of two instances: reported in instance, then contract, order
    first, last = CONTRACT.feature_names[0], CONTRACT.feature_names[-1]
    bad = valid_row()
    bad[last] = [1]
    bad[first] = [1]
    exc = rejection({"instances": [valid_row(), bad, valid_row(), bad]})
    assert [(e.instance, e.field) for e in exc.errors] == [
        (1, first),
        (1, last),
        (3, first),
        (3, last),
    ]
    assert exc.status == 400
    assert exc.summary.startswith(f"instances[1].{first}: ")
    assert exc.summary.endswith("(and 3 more)")


def test_reported_errors_are_capped_but_counted() -> None:
    rows: list[dict[str, Any]] = [{} for _ in range(MAX_REPORTED_ERRORS + 1)]
    body = rejection({"instances": rows}).to_dict()
    assert body["error_count"] == len(rows) * len(CONTRACT.features)
    assert len(body["errors"]) == MAX_REPORTED_ERRORS


def test_the_error_code_says_whether_the_request_or_the_server_is_at_fault() -> None:
    assert rejection({"instances": []}).to_dict()["error"] == "invalid_request"
    busy = RequestRejected.request_level(Reason.UNAVAILABLE, "overloaded", status=503)
    assert busy.to_dict()["error"] == "unavailable"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], Reason.INVALID_BODY),
        ("instances", Reason.INVALID_BODY),
        ({}, Reason.INVALID_BODY),
        ({"instances": {"a": 1}}, Reason.INVALID_BODY),
        ({"instances": None}, Reason.INVALID_BODY),
        ({"instances": [], "extra": 1}, Reason.INVALID_BODY),
        ({"inputs": []}, Reason.INVALID_BODY),
        ({"instances": []}, Reason.EMPTY_BATCH),
    ],
)
def test_wrong_shapes_are_request_level_errors(payload: Any, reason: Reason) -> None:
    assert only_error(payload) == (None, REQUEST_FIELD, reason)


@pytest.mark.parametrize("instance", [[1, 2], "row", 3, None])
def test_an_instance_must_be_an_object(instance: Any) -> None:
    assert only_error({"instances": [valid_row(), instance]}) == (
        1,
        REQUEST_FIELD,
        Reason.INVALID_INSTANCE,
    )


def test_oversized_batch_is_413_before_any_instance_is_checked() -> None:
    validator = InstanceValidator(CONTRACT, max_instances=3)
    with pytest.raises(RequestRejected) as info:
        validator.validate_payload({"instances": [None] * 4})
    assert info.value.status == 413
    assert info.value.errors[0].reason is Reason.BATCH_TOO_LARGE
    assert validator.validate_payload({"instances": [valid_row()] * 3})


def test_number_features_accept_integers_and_fractions_but_not_nan() -> None:
    contract = contract_of(NumberFeature("x", -1.5, 2.5))
    validator = InstanceValidator(contract, 10)
    assert validator.validate_instances([{"x": 1}, {"x": -1.5}, {"x": 2.5}])
    for value, reason in [
        (math.nan, Reason.WRONG_TYPE),
        (-math.inf, Reason.WRONG_TYPE),
        (False, Reason.WRONG_TYPE),
        ("1", Reason.WRONG_TYPE),
        (2.6, Reason.OUT_OF_RANGE),
    ]:
        with pytest.raises(RequestRejected) as info:
            validator.validate_instances([{"x": value}])
        assert info.value.errors[0].reason is reason, value


def test_long_unknown_names_and_values_are_truncated_in_messages() -> None:
    row = valid_row()
    row["x" * 1000] = 1
    row[CONTRACT.feature_names[0]] = "y" * 1000
    exc = rejection({"instances": [row]})
    assert all(len(e.field) <= 64 and len(e.message) < 1000 for e in exc.errors)


@pytest.mark.parametrize(("field", "value", "reason"), INVALID_VALUES)
def test_large_batches_take_the_columnar_path_and_refuse_the_same(
    field: str, value: Any, reason: Reason
) -> None:
    rows = example_rows(40)
    assert VALIDATOR.validate_payload({"instances": rows}) == rows  # the fast path accepts
    rows[37] = {**rows[37], field: value}
    assert only_error({"instances": rows}) == (37, field, reason)


_LAST = CONTRACT.feature_names[-1]


@pytest.mark.parametrize(
    "change",
    [
        lambda row: row.pop(_LAST),
        lambda row: row.update(colour="red"),
        *[lambda row, name=name: row.update({name: "yes"}) for name in CONTRACT.excluded[:1]],
        lambda row: (row.pop(_LAST), row.update(colour="red")),  # same width, wrong keys
    ],
)
def test_large_batches_refuse_wrong_keys(change: Any) -> None:
    rows = example_rows(40)
    change(rows[5])
    exc = rejection({"instances": rows})
    assert {e.instance for e in exc.errors} == {5}


def test_a_huge_integral_number_is_echoed_shortened() -> None:
    # 1e308 decodes as a float, reported as the integer it is: all 309 digits of it.
    row = {**valid_row(), first_feature("integer").name: 1e308}
    (error,) = rejection({"instances": [row]}).errors
    assert error.reason is Reason.OUT_OF_RANGE
    assert error.message.startswith("10000000000000000109790636")
    assert len(error.message) < 160, error.message


def test_a_field_given_twice_counts_once_with_its_last_value() -> None:
    # JSON leaves repeated names undefined (RFC 8259, 4); the body's parser keeps the last one,
    # and the README says so: the value validated and predicted on is the last one written.
    feature = first_numeric_feature()
    row = valid_row()
    fields = orjson.dumps(row).decode()[1:-1]  # the row's members, without the braces
    bad = orjson.dumps("not a number").decode()
    name = orjson.dumps(feature.name).decode()

    last_good = f'{{"instances": [{{{name}: {bad}, {fields}}}]}}'.encode()
    assert VALIDATOR.validate_payload(decode_json(last_good)) == [row]

    last_bad = f'{{"instances": [{{{fields}, {name}: {bad}}}]}}'.encode()
    with pytest.raises(RequestRejected) as info:
        VALIDATOR.validate_payload(decode_json(last_bad))
    assert [(e.field, e.reason) for e in info.value.errors] == [(feature.name, Reason.WRONG_TYPE)]
