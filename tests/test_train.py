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
from tests.support import ROOT, example_model_only

DATA_PATH = ROOT / "models" / "data" / "german_credit.csv"


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return train.load_data()


def test_registered_model_carries_what_the_service_needs(model_tag: str) -> None:
    stored = bentoml.models.get(model_tag)
    files = {p.name for p in Path(stored.path).iterdir()}
    assert {MODEL_FILE, CONTRACT_FILE, REFERENCE_FILE} <= files
    assert 0 < stored.info.metadata["decision_threshold"] < 1


@example_model_only
def test_example_model_carries_what_an_audit_needs(model_tag: str) -> None:
    meta = bentoml.models.get(model_tag).info.metadata
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
    # the ranges the model saw: the reference data's (its training rows)
    for feat in model.contract.numeric_features():
        seen = reference[feat.name]
        assert (feat.training_min, feat.training_max) == (seen.min(), seen.max()), feat.name
    assert list(reference.columns) == [*CONTRACT.feature_names, CONTRACT.score_name]
    assert reference[CONTRACT.score_name].between(0, 1).all()
    # the stored scores are out-of-fold, not the model's scores on rows it was fitted on
    # (test_reference_scores_are_what_unseen_rows_get)
    rescored = model.score(reference[list(CONTRACT.feature_names)])
    assert not np.array_equal(rescored, reference[CONTRACT.score_name].to_numpy())


@example_model_only
def test_example_contract_and_reference(model_tag: str) -> None:
    model = load_model(bentoml.models.get(model_tag))
    reference = model.reference()
    age = model.contract.feature("age_in_years")
    # the range the model saw: the training split's, within the data set's 19..75
    assert 19 <= age.training_min < age.training_max <= 75  # type: ignore[union-attr]
    assert len(reference) == 750
    # out-of-fold scores of the example's logistic regression are close to its own
    rescored = model.score(reference[list(CONTRACT.feature_names)])
    assert np.corrcoef(rescored, reference["probability_bad"])[0, 1] > 0.9


@example_model_only
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


def test_training_is_reproducible(model_tag: str) -> None:
    # README: training is seeded; two runs of `python -m models.train` register the same model
    assert train.main([]) == 0
    again = bentoml.models.get(f"{CONTRACT.model_name}:latest")
    try:
        first, second = load_model(bentoml.models.get(model_tag)), load_model(again)
        assert first.tag != second.tag
        assert first.metadata.get("metrics") == second.metadata.get("metrics")
        assert first.threshold == second.threshold
        rows = first.reference()[list(CONTRACT.feature_names)]
        np.testing.assert_array_equal(first.score(rows), second.score(rows))
    finally:
        # the session's services serve `:latest`, which must stay the session's model
        bentoml.models.delete(str(again.tag))


@example_model_only
def test_quality_gate_refuses_a_weak_model(data: pd.DataFrame) -> None:
    with pytest.raises(train.QualityGateError, match="below the floor"):
        train.train(data, min_roc_auc=0.99)
    # and a model trained on shuffled labels does not pass the real floor
    shuffled = data.copy()
    shuffled[CONTRACT.target] = shuffled[CONTRACT.target].sample(frac=1, random_state=1).values
    with pytest.raises(train.QualityGateError):
        train.train(shuffled)


def test_gate_failure_registers_nothing(monkeypatch: pytest.MonkeyPatch, model_tag: str) -> None:
    if not hasattr(train, "MIN_ROC_AUC"):
        pytest.skip("models/train.py has no quality gate (MIN_ROC_AUC)")
    before = {str(m.tag) for m in bentoml.models.list(CONTRACT.model_name)}
    monkeypatch.setattr(train, "MIN_ROC_AUC", 0.99)
    assert train.main([]) == 1
    assert {str(m.tag) for m in bentoml.models.list(CONTRACT.model_name)} == before


def test_if_missing_skips_when_a_model_exists(model_tag: str) -> None:
    # `make serve` runs `python -m models.train --if-missing`
    before = {str(m.tag) for m in bentoml.models.list(CONTRACT.model_name)}
    assert train.main(["--if-missing"]) == 0
    assert {str(m.tag) for m in bentoml.models.list(CONTRACT.model_name)} == before


@example_model_only
def test_a_changed_data_file_is_refused(tmp_path: Path) -> None:
    changed = tmp_path / "german_credit.csv"
    changed.write_bytes(DATA_PATH.read_bytes().replace(b",good\r\n", b",bad\r\n", 1))
    with pytest.raises(ValueError, match="SHA-256"):
        train.load_data(changed, train.DATA_SHA256)


@example_model_only
def test_data_that_breaks_the_contract_is_refused(data: pd.DataFrame) -> None:
    broken = data.copy()
    broken.loc[5, "purpose"] = "vacation"
    with pytest.raises(ValueError, match=r"instances\[5\]\.purpose"):
        train.train(broken)
