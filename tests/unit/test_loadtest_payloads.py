"""Load-test payloads: valid ones pass validation, invalid ones get the refusal they expect,
drift moves exactly the named features and stays valid, v2 tensors follow the contract."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from loadtests.payloads import (
    Drift,
    PayloadFactory,
    Shift,
    default_shifts,
    invalid_cases,
    parse_shifts,
    v2_inputs,
    v2_output_rows,
)
from loadtests.slo import Slo, judge
from models.contract import CONTRACT
from service.asgi import decode_json
from service.contract import (
    CategoricalFeature,
    Feature,
    IntegerFeature,
    NumberFeature,
)
from service.settings import Settings
from service.validation import InstanceValidator, Reason, RequestRejected
from tests.support import contract_of, example_rows, training_data

MAX_INSTANCES = 50
CATEGORIES = CONTRACT.of_kind("categorical")


@pytest.fixture(scope="module")
def factory() -> PayloadFactory:
    return PayloadFactory(CONTRACT, example_rows(), seed=1)


@pytest.fixture(scope="module")
def validator() -> InstanceValidator:
    return InstanceValidator(CONTRACT, MAX_INSTANCES)


def answer_of(validator: InstanceValidator, body: bytes) -> tuple[int, dict[str, Any]]:
    """What the service's validation answers for ``body``: (status, error body) or 200."""
    try:
        validator.validate_payload(decode_json(body))
    except RequestRejected as exc:
        return exc.status, exc.to_dict()
    return 200, {}


def test_sampled_and_synthetic_instances_are_valid(
    factory: PayloadFactory, validator: InstanceValidator
) -> None:
    trained = CONTRACT.with_training_ranges(training_data())
    synthetic = PayloadFactory.synthetic(trained, rows=200, seed=3)
    for source in (factory, synthetic):
        instances = source.instances(MAX_INSTANCES)
        assert validator.validate_instances(instances) == instances
    # Synthetic numbers stay within what the model saw in training.
    for feat in trained.numeric_features():
        values = [row[feat.name] for row in synthetic.rows]
        assert feat.training_min <= min(values) <= max(values) <= feat.training_max


def test_sampling_is_seeded_and_returns_copies(factory: PayloadFactory) -> None:
    a = PayloadFactory(CONTRACT, example_rows(), seed=7).instances(5)
    b = PayloadFactory(CONTRACT, example_rows(), seed=7).instances(5)
    assert a == b
    name = CONTRACT.feature_names[0]
    a[0][name] = None
    assert all(row[name] is not None for row in factory.rows)


def test_every_invalid_case_gets_exactly_its_expected_refusal(
    factory: PayloadFactory, validator: InstanceValidator
) -> None:
    cases = invalid_cases(factory, max_instances=MAX_INSTANCES)
    for case in cases:
        status, answer = answer_of(validator, case.body)
        assert case.matches(status, answer), (case.reason, case.field, status, answer)
        assert 400 <= status < 500
    reasons = {case.reason for case in cases}
    # a contract that excludes no column has no excluded field to send, one without categorical
    # features no unknown category, one without numeric features no value out of range
    unsendable = set() if CONTRACT.excluded else {Reason.EXCLUDED_FIELD}
    if not CATEGORIES:
        unsendable.add(Reason.UNKNOWN_CATEGORY)
    if not CONTRACT.numeric_features():
        unsendable.add(Reason.OUT_OF_RANGE)
    server_side = {Reason.INTERNAL_ERROR, Reason.UNAVAILABLE, Reason.BODY_TOO_LARGE, Reason.TIMEOUT}
    tensors_only = {Reason.INVALID_TENSOR, Reason.UNKNOWN_MODEL}  # Open Inference Protocol
    not_the_body = {Reason.CANCELLED}  # a client's cancelled gRPC call
    assert reasons == (
        {r.value for r in Reason} - server_side - tensors_only - not_the_body - unsendable
    )
    broken = {case.field for case in cases if case.reason == Reason.MISSING}
    assert broken == set(CONTRACT.feature_names)
    assert {c.field for c in cases if c.reason == Reason.EXCLUDED_FIELD} == set(CONTRACT.excluded)
    # The broken instance is not always the first one: answers must name the right index.
    assert len({case.instance for case in cases if case.instance is not None}) > 1


def test_out_of_range_cases_are_out_of_range_for_any_bounds() -> None:
    # A float bound of 1e20 minus 1 is the same float: the "out of range" value was in range.
    contract = contract_of(
        NumberFeature("wide", minimum=-1e20, maximum=1e20),
        NumberFeature("unit", minimum=0.0, maximum=1.0),
        IntegerFeature("big", minimum=-(10**18), maximum=10**18),
    )
    factory = PayloadFactory.synthetic(contract, rows=20)
    validator = InstanceValidator(contract, MAX_INSTANCES)
    cases = [c for c in invalid_cases(factory) if c.reason == Reason.OUT_OF_RANGE]
    assert len(cases) == 6
    for case in cases:
        status, answer = answer_of(validator, case.body)
        assert case.matches(status, answer), (case.field, orjson.loads(case.body), status, answer)


def test_the_too_large_batch_fits_the_body_limit_of_a_wide_model() -> None:
    # A swapped model with 120 features: MAX_BATCH_SIZE + 1 copies of a valid instance were
    # 6.6 MB, over the default MAX_BODY_BYTES, so the service answered 413 body_too_large, unread,
    # and InvalidUser counted a failure on every batch_too_large request.
    contract = contract_of(
        *(NumberFeature(f"lab_measurement_{i:03d}_mmol_per_litre", 0.0, 1e6) for i in range(120)),
        model_name="wide",
    )
    max_instances = Settings.model_fields["max_batch_size"].default
    factory = PayloadFactory.synthetic(contract, rows=20)
    (case,) = [
        c
        for c in invalid_cases(factory, max_instances=max_instances)
        if c.reason == Reason.BATCH_TOO_LARGE
    ]
    assert len(case.body) <= Settings.model_fields["max_body_bytes"].default
    status, answer = answer_of(InstanceValidator(contract, max_instances), case.body)
    assert case.matches(status, answer), (status, answer)


def test_an_invalid_case_does_not_match_other_answers(factory: PayloadFactory) -> None:
    # a missing feature: an instance-level case every contract has
    case = next(c for c in invalid_cases(factory) if c.reason == Reason.MISSING)
    error = {"instance": case.instance, "field": case.field, "reason": case.reason}
    assert case.matches(400, {"errors": [error]})
    assert not case.matches(200, {"predictions": []})
    assert not case.matches(500, {"errors": [error]})
    assert not case.matches(400, {"errors": [{**error, "field": "other"}]})
    assert not case.matches(400, {"errors": [{**error, "instance": (case.instance or 0) + 1}]})


def _two_numeric_and_a_categorical() -> tuple[Feature, Feature, CategoricalFeature]:
    """The contract's first two numeric features and its first categorical one, which the shift
    tests move (skipped for a contract without them)."""
    numeric = CONTRACT.numeric_features()
    if len(numeric) < 2 or not CATEGORIES:
        pytest.skip("the contract has fewer than two numeric or no categorical features")
    category = CATEGORIES[0]
    assert isinstance(category, CategoricalFeature)
    return numeric[0], numeric[1], category


def test_parse_shifts() -> None:
    first, second, category = _two_numeric_and_a_categorical()
    last = CATEGORIES[-1].name
    value = category.categories[-1]
    spec = f"{first.name}*2; {second.name}+500; {first.name}-3; {category.name}={value}; {last}"
    assert parse_shifts(spec, CONTRACT) == (
        Shift(first.name, scale=2.0),
        Shift(second.name, offset=500.0),
        Shift(first.name, offset=-3.0),
        Shift(category.name, category=value),
        Shift(last),
    )
    # A bare numeric name: the default x1.5.
    assert parse_shifts(f"{last}; {second.name}", CONTRACT)[1] == Shift(second.name, scale=1.5)


def test_parse_shifts_takes_categories_with_commas_and_names_sharing_a_prefix() -> None:
    contract = contract_of(
        CategoricalFeature("asset", ("real estate", "car or other, not savings")),
        IntegerFeature("amount", 0, 10),
        IntegerFeature("amount_due", 0, 10),
    )
    spec = "asset=car or other, not savings; amount_due+2; amount"
    assert parse_shifts(spec, contract) == (
        Shift("asset", category="car or other, not savings"),
        Shift("amount_due", offset=2.0),
        Shift("amount", scale=1.5),
    )


def _refused_specs() -> list[tuple[str, str]]:
    specs = [("no such feature at all*2", "no such feature")]
    if CATEGORIES:
        category = CATEGORIES[0]
        assert isinstance(category, CategoricalFeature)
        specs += [
            (f"{category.name}={category.categories[0]} (unknown)", "one of"),
            (f"{category.name}*2", "categorical"),
        ]
    for feat in CONTRACT.numeric_features()[:1]:
        specs += [(f"{feat.name}*x", "not a number"), (f"{feat.name}=3", "numeric")]
    return specs


@pytest.mark.parametrize(("spec", "complaint"), _refused_specs())
def test_parse_shifts_refuses_what_it_cannot_apply(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_shifts(spec, CONTRACT)


def test_a_shift_is_logged_as_drift_writes_it() -> None:
    first, second, category = _two_numeric_and_a_categorical()
    value = category.categories[-1]
    spec = f"{first.name}*1.5; {second.name}+2000; {first.name}-10; {category.name}={value}"
    spec += f"; {CATEGORIES[-1].name}"
    shifts = parse_shifts(spec, CONTRACT)
    assert "; ".join(map(str, shifts)) == spec
    assert parse_shifts("; ".join(map(str, shifts)), CONTRACT) == shifts


def test_drift_moves_the_named_features_and_stays_valid(
    factory: PayloadFactory, validator: InstanceValidator
) -> None:
    scaled, offset, category = _two_numeric_and_a_categorical()
    assert isinstance(scaled, IntegerFeature | NumberFeature)
    assert isinstance(offset, IntegerFeature | NumberFeature)
    # an offset of the whole domain moves every value past the maximum: clipped to it
    width = offset.maximum - offset.minimum
    spec = f"{scaled.name}*1.5; {offset.name}+{width}; {category.name}"
    drift = Drift(CONTRACT, parse_shifts(spec, CONTRACT))
    rng = random.Random(0)
    for row in factory.instances(MAX_INSTANCES):
        moved = drift.apply(row, rng)
        validator.validate_instances([moved])
        expected = min(max(row[scaled.name] * 1.5, scaled.minimum), scaled.maximum)
        if isinstance(scaled, IntegerFeature):
            assert moved[scaled.name] == round(expected)
        else:
            assert moved[scaled.name] == pytest.approx(expected)
        assert moved[offset.name] == offset.maximum  # clipped into the domain
        position = category.categories.index(row[category.name])
        assert (
            moved[category.name] == category.categories[(position + 1) % len(category.categories)]
        )
        untouched = set(CONTRACT.feature_names) - {scaled.name, offset.name, category.name}
        assert {k: moved[k] for k in untouched} == {k: row[k] for k in untouched}


def test_drift_fraction_and_defaults(factory: PayloadFactory) -> None:
    rows = factory.instances(200)
    rng = random.Random(0)
    none = Drift(CONTRACT, default_shifts(CONTRACT), fraction=0.0)
    assert [none.apply(r, rng) for r in rows] == rows
    half = Drift(CONTRACT, default_shifts(CONTRACT), fraction=0.5)
    changed = sum(half.apply(r, rng) != r for r in rows)
    assert 60 < changed < 140
    # the first numeric feature scaled and the first categorical moved, of those the model has
    shifts = default_shifts(CONTRACT)
    moved = [*CONTRACT.numeric_features()[:1], *CATEGORIES[:1]]
    assert [s.feature for s in shifts] == [f.name for f in moved]
    assert [s.scale for s in shifts] == [1.5 if f.kind != "categorical" else 1.0 for f in moved]


def test_the_default_drift_moves_categories_as_frequent_as_each_other() -> None:
    # Each category moved to the next one (a bare name's shift) kept a uniform feature uniform:
    # DriftedUser's default traffic did not drift for a model of such categories only.
    contract = contract_of(CategoricalFeature("tier", ("basic", "standard", "premium")))
    rows = [{"tier": tier} for tier in ("basic", "standard", "premium") * 100]
    factory = PayloadFactory(contract, rows, seed=5)
    drifted = Drift(contract, default_shifts(contract)).instances(factory, 300)
    counts = Counter(row["tier"] for row in drifted)
    # a third of the data each: a drift must make one far more frequent
    assert max(counts.values()) > 200, counts


def test_v2_inputs_are_one_typed_tensor_per_feature(factory: PayloadFactory) -> None:
    rows = factory.instances(3)
    tensors = v2_inputs(CONTRACT, rows)
    assert [t["name"] for t in tensors] == list(CONTRACT.feature_names)
    for tensor, feat in zip(tensors, CONTRACT.features, strict=True):
        assert (
            tensor["datatype"]
            == {"categorical": "BYTES", "integer": "INT64", "number": "FP64"}[feat.kind]
        )
        assert tensor["shape"] == [3]
        assert tensor["data"] == [row[feat.name] for row in rows]
    shaped = v2_inputs(CONTRACT, rows, {name: [-1, 1] for name in CONTRACT.feature_names})
    assert {tuple(t["shape"]) for t in shaped} == {(3, 1)}


def test_slo_verdicts() -> None:
    slo = Slo(p99_ms=100, max_error_rate=0.01)
    assert judge(slo, requests=1000, failures=10, p99_ms=100, requests_per_second=50).passed
    slow = judge(slo, requests=1000, failures=0, p99_ms=101, requests_per_second=50)
    assert slow.violations == ["p99 latency 101 ms > 100 ms"]
    failing = judge(slo, requests=1000, failures=11, p99_ms=5, requests_per_second=50)
    assert not failing.passed
    assert "error rate 1.10%" in failing.violations[0]
    assert not judge(slo, requests=0, failures=0, p99_ms=0, requests_per_second=0).passed
    assert "SLO MISSED" in slow.summary()
    assert slow.to_dict()["passed"] is False


@pytest.mark.parametrize(
    ("answer", "rows"),
    [
        ({"outputs": [{"name": "score", "shape": [3], "data": [0.1, 0.2, 0.3]}]}, 3),
        ({"outputs": [{"name": "score", "shape": [2, 1]}]}, 2),
        # Not an infer answer: V2RestUser counts a failed request, not an exception.
        (None, None),
        ([], None),
        ({"outputs": []}, None),
        ({"outputs": [{"name": "score"}]}, None),
        ({"outputs": [{"name": "score", "shape": []}]}, None),
        ({"outputs": ["score"]}, None),
    ],
)
def test_v2_output_rows(answer: Any, rows: int | None) -> None:
    assert v2_output_rows(answer) == rows
