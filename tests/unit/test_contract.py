from __future__ import annotations

import pandas as pd
import pytest

from models.contract import CONTRACT
from service.contract import (
    CategoricalFeature,
    FeatureContract,
    IntegerFeature,
    NumberFeature,
)
from tests.support import contract_of, example_model_only, training_data


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return training_data()


def test_the_contract_names_columns_of_the_data(data: pd.DataFrame) -> None:
    # load_data() holds every feature and the target; an excluded column need not be there.
    assert {*CONTRACT.feature_names, CONTRACT.target} <= set(data.columns)
    assert CONTRACT.target not in CONTRACT.feature_names


@example_model_only
def test_example_contract_has_the_18_non_protected_attributes(data: pd.DataFrame) -> None:
    protected = {"personal_status_and_sex", "foreign_worker"}
    expected = [c for c in data.columns if c not in protected | {CONTRACT.target}]
    assert list(CONTRACT.feature_names) == expected
    assert len(CONTRACT.features) == 18
    assert set(CONTRACT.excluded) == protected
    assert CONTRACT.excluded_reason == "protected attribute"


def test_categories_are_exactly_those_in_the_data(data: pd.DataFrame) -> None:
    for feat in CONTRACT.of_kind("categorical"):
        assert isinstance(feat, CategoricalFeature)
        assert set(feat.categories) == set(data[feat.name].unique()), feat.name


def test_domain_ranges_contain_the_data(data: pd.DataFrame) -> None:
    for feat in CONTRACT.numeric_features():
        assert feat.minimum <= data[feat.name].min() <= data[feat.name].max() <= feat.maximum


def test_labels_and_score_name(data: pd.DataFrame) -> None:
    assert set(data[CONTRACT.target].unique()) == set(CONTRACT.labels)
    assert CONTRACT.score_name == f"probability_{CONTRACT.positive_label}"


@example_model_only
def test_example_score_name() -> None:
    assert CONTRACT.score_name == "probability_bad"


def test_json_round_trip_keeps_everything(data: pd.DataFrame) -> None:
    filled = CONTRACT.with_training_ranges(data)
    assert FeatureContract.from_json(filled.to_json()) == filled
    for feat in filled.numeric_features():
        seen = data[feat.name]
        assert (feat.training_min, feat.training_max) == (seen.min(), seen.max()), feat.name
        assert type(feat.training_min) is (int if isinstance(feat, IntegerFeature) else float)


@example_model_only
def test_example_training_range_of_age(data: pd.DataFrame) -> None:
    age = CONTRACT.with_training_ranges(data).feature("age_in_years")
    assert isinstance(age, IntegerFeature)
    assert (age.minimum, age.maximum, age.training_min, age.training_max) == (18, 120, 19, 75)


def test_json_schema_describes_an_instance() -> None:
    schema = CONTRACT.json_schema()
    assert schema["required"] == list(CONTRACT.feature_names)
    assert schema["additionalProperties"] is False
    types = {"integer": "integer", "number": "number"}
    for feat in CONTRACT.features:
        prop = schema["properties"][feat.name]
        assert prop.get("description", "") == feat.description
        if isinstance(feat, CategoricalFeature):
            assert (prop["type"], prop["enum"]) == ("string", list(feat.categories))
        else:
            assert (prop["type"], prop["minimum"], prop["maximum"]) == (
                types[feat.kind],
                feat.minimum,
                feat.maximum,
            )


@example_model_only
def test_example_json_schema_of_age() -> None:
    assert CONTRACT.json_schema()["properties"]["age_in_years"] == {
        "description": "Age of the applicant in years.",
        "type": "integer",
        "minimum": 18,
        "maximum": 120,
    }


def test_frame_has_contract_order_and_dtypes() -> None:
    contract = contract_of(
        NumberFeature("x", 0, 10),
        CategoricalFeature("c", ("a", "b")),
        IntegerFeature("n", 0, 5),
    )
    frame = contract.frame([{"n": 1, "c": "a", "x": 2}, {"c": "b", "x": 2.5, "n": 3}])
    assert list(frame.columns) == ["x", "c", "n"]
    assert [str(t) for t in frame.dtypes] == ["float64", "object", "int64"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": (IntegerFeature("a", 0, 1), IntegerFeature("a", 0, 1))}, "unique"),
        ({"features": (IntegerFeature("a", 0, 1),), "excluded": ("a",)}, "excluded"),
    ],
)
def test_inconsistent_contracts_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureContract(
            model_name="m", target="y", positive_label="1", negative_label="0", **kwargs
        )


def test_inconsistent_features_are_refused() -> None:
    with pytest.raises(ValueError, match="minimum"):
        IntegerFeature("a", 5, 1)
    with pytest.raises(ValueError, match="unique"):
        CategoricalFeature("c", ("a", "a"))
