from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest

from models import train
from models.contract import CONTRACT
from service.model import CONTRACT_FILE, MODEL_FILE, REFERENCE_FILE, load_model
from tests.support import DATA_PATH


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return train.load_data()


def test_registered_model_carries_what_an_audit_needs(model_tag: str) -> None:
    stored = bentoml.models.get(model_tag)
    files = {p.name for p in Path(stored.path).iterdir()}
    assert {MODEL_FILE, CONTRACT_FILE, REFERENCE_FILE} <= files
    meta = stored.info.metadata
    assert meta["dataset"]["sha256"] == train.DATA_SHA256
    assert meta["decision_threshold"] == pytest.approx(1 / 6)
    assert meta["metrics"]["held_out"]["roc_auc"] >= train.MIN_ROC_AUC
    assert {"roc_auc", "brier_score", "accuracy_at_threshold"} <= set(meta["metrics"]["held_out"])
    assert meta["hyperparameters"]["C"] == train.HYPERPARAMETERS["C"]
    assert meta["packages"]["scikit-learn"]
    assert meta["git_commit"]
    assert meta["created_at"]


def test_registered_contract_and_reference(model_tag: str) -> None:
    model = load_model(bentoml.models.get(model_tag))
    assert model.contract.feature_names == CONTRACT.feature_names
    reference = model.reference()
    age = model.contract.feature("age_in_years")
    # the range the model saw: the training split's, within the data set's 19..75
    assert (age.training_min, age.training_max) == (
        reference["age_in_years"].min(),
        reference["age_in_years"].max(),
    )
    assert 19 <= age.training_min < age.training_max <= 75
    assert list(reference.columns) == [*CONTRACT.feature_names, "probability_bad"]
    assert len(reference) == 750
    assert reference["probability_bad"].between(0, 1).all()
    # the stored scores are the model's own scores on those rows
    rescored = model.score(reference[list(CONTRACT.feature_names)])
    np.testing.assert_array_equal(rescored, reference["probability_bad"].to_numpy())


def test_training_is_reproducible(data: pd.DataFrame) -> None:
    first, _, metrics_1 = train.train(data)
    second, _, metrics_2 = train.train(data)
    assert metrics_1 == metrics_2
    np.testing.assert_array_equal(first[-1].coef_, second[-1].coef_)


def test_quality_gate_refuses_a_weak_model(data: pd.DataFrame) -> None:
    with pytest.raises(train.QualityGateError, match="below the floor"):
        train.train(data, min_roc_auc=0.99)
    # and a model trained on shuffled labels does not pass the real floor
    shuffled = data.copy()
    shuffled[CONTRACT.target] = shuffled[CONTRACT.target].sample(frac=1, random_state=1).values
    with pytest.raises(train.QualityGateError):
        train.train(shuffled)


def test_gate_failure_registers_nothing(monkeypatch: pytest.MonkeyPatch, model_tag: str) -> None:
    before = {str(m.tag) for m in bentoml.models.list("credit_risk")}
    monkeypatch.setattr(train, "MIN_ROC_AUC", 0.99)
    assert train.main([]) == 1
    assert {str(m.tag) for m in bentoml.models.list("credit_risk")} == before


def test_if_missing_skips_when_a_model_exists(model_tag: str) -> None:
    before = {str(m.tag) for m in bentoml.models.list("credit_risk")}
    assert train.main(["--if-missing"]) == 0
    assert {str(m.tag) for m in bentoml.models.list("credit_risk")} == before


def test_a_changed_data_file_is_refused(tmp_path: Path) -> None:
    changed = tmp_path / "german_credit.csv"
    changed.write_bytes(DATA_PATH.read_bytes().replace(b",good\r\n", b",bad\r\n", 1))
    with pytest.raises(ValueError, match="SHA-256"):
        train.load_data(changed, train.DATA_SHA256)


def test_data_that_breaks_the_contract_is_refused(data: pd.DataFrame) -> None:
    broken = data.copy()
    broken.loc[5, "purpose"] = "vacation"
    with pytest.raises(ValueError, match=r"instances\[5\]\.purpose"):
        train.train(broken)
