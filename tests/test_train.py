from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

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
    # the stored scores are out-of-fold: close to the model's own, not its scores on rows it
    # was fitted on (test_reference_scores_are_what_unseen_rows_get)
    rescored = model.score(reference[list(CONTRACT.feature_names)])
    stored = reference["probability_bad"].to_numpy()
    assert not np.array_equal(rescored, stored)
    assert np.corrcoef(rescored, stored)[0, 1] > 0.9


def test_reference_scores_are_what_unseen_rows_get(
    data: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flexible model (as a user may swap in) scores its own training rows far more confidently
    # than new ones: with those scores as the baseline, held-out rows of the same population
    # were reported as prediction drift (K-S p ~ 1e-13).
    from sklearn.ensemble import RandomForestClassifier

    from service.drift.compute import compute_drift

    def forest(contract, hyperparameters):
        pipeline = build_pipeline(contract, train.HYPERPARAMETERS)
        pipeline.steps[-1] = ("classifier", RandomForestClassifier(200, random_state=0))
        return pipeline

    build_pipeline = train.build_pipeline
    monkeypatch.setattr(train, "build_pipeline", forest)
    pipeline, reference, _ = train.train(data, min_roc_auc=0.5)
    features = data[list(CONTRACT.feature_names)]
    target = (data[CONTRACT.target] == CONTRACT.positive_label).astype(int)
    _, held_out = train_test_split(
        features, test_size=train.TEST_SIZE, stratify=target, random_state=train.SEED
    )
    window = held_out.reset_index(drop=True)
    window[CONTRACT.score_name] = pipeline.predict_proba(window)[:, 1]

    result = compute_drift(reference, window, CONTRACT)

    assert result.prediction.drifted is False, result.prediction


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
