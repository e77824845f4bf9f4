"""register_model refuses what the service could not serve, whatever the model."""

from __future__ import annotations

import bentoml
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from service.contract import FeatureContract, NumberFeature
from service.model import load_model, register_model

CONTRACT = FeatureContract(
    model_name="swap_check",
    target="diagnosis",
    positive_label="malignant",
    negative_label="benign",
    features=(NumberFeature("radius", 0, 100),),
)


def fitted(target: np.ndarray) -> tuple[LogisticRegression, pd.DataFrame]:
    frame = pd.DataFrame({"radius": np.linspace(1, 50, len(target))})
    estimator = LogisticRegression().fit(frame, target)
    reference = frame.assign(**{CONTRACT.score_name: estimator.predict_proba(frame)[:, -1]})
    return estimator, reference


def test_an_estimator_trained_on_label_strings_is_refused_at_registration() -> None:
    # README "Serving your own model": classes encoded 0 = negative, 1 = positive. Trained on the
    # labels themselves, the model used to register and then fail in every worker at startup.
    estimator, reference = fitted(np.array(["benign"] * 10 + ["malignant"] * 10))
    with pytest.raises(ValueError, match=r"encode the target as 0 = 'benign', 1 = 'malignant'"):
        register_model(estimator, CONTRACT, reference, {"decision_threshold": 0.5})


def test_an_estimator_with_classes_0_and_1_registers_and_loads_as_the_service_loads_it() -> None:
    estimator, reference = fitted(np.array([0] * 10 + [1] * 10))
    tag = register_model(estimator, CONTRACT, reference, {"decision_threshold": 0.5})
    assert tag.startswith("swap_check:")
    # What a worker does at startup: the registered model loads, with its contract, and scores
    # as the estimator it was registered from.
    loaded = load_model(bentoml.models.get(tag))
    assert loaded.contract == CONTRACT
    rows = [{"radius": 2.0}, {"radius": 45.0}]
    expected = estimator.predict_proba(pd.DataFrame(rows))[:, 1]
    np.testing.assert_allclose(loaded.score(loaded.contract.frame(rows)), expected)
