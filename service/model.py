"""The registered model artifact: how it is saved to and loaded from the BentoML model store.

A registered model is a directory in the store holding:

- ``model.joblib``: a fitted scikit-learn estimator (usually a Pipeline) with ``predict_proba``,
  taking a DataFrame of the contract's features;
- ``contract.json``: the feature contract, with the training ranges filled in;
- ``reference.parquet``: the training features plus each row's out-of-fold score, from a model
  not fitted on that row (the drift baseline);

and BentoML metadata (shown by ``bentoml models get``): decision threshold, metrics, data set hash,
git commit, package versions, hyper-parameters. This module is the only place that knows the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import bentoml
import joblib
import numpy as np
import pandas as pd

from service.contract import FeatureContract

MODEL_FILE = "model.joblib"
CONTRACT_FILE = "contract.json"
REFERENCE_FILE = "reference.parquet"


class Classifier(Protocol):
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to predict: the narrow interface the service depends on."""

    tag: str
    estimator: Classifier
    contract: FeatureContract
    threshold: float
    metadata: dict[str, Any]
    path: Path

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of the contract's positive label for each row."""
        classes = list(getattr(self.estimator, "classes_", [0, 1]))
        return self.estimator.predict_proba(frame)[:, classes.index(1)]

    def labels(self, scores: np.ndarray) -> list[str]:
        c = self.contract
        return [c.positive_label if s >= self.threshold else c.negative_label for s in scores]

    def reference(self) -> pd.DataFrame:
        """Training features plus their out-of-fold score (column ``contract.score_name``)."""
        return pd.read_parquet(self.path / REFERENCE_FILE)


def load_model(stored: bentoml.Model) -> LoadedModel:
    """Load a model from its store entry (``bentoml.models.get(tag)`` or a ``BentoModel``)."""
    path = Path(stored.path)
    metadata = dict(stored.info.metadata)
    return LoadedModel(
        tag=str(stored.tag),
        estimator=joblib.load(path / MODEL_FILE),
        contract=FeatureContract.from_json((path / CONTRACT_FILE).read_text()),
        threshold=float(metadata["decision_threshold"]),
        metadata=metadata,
        path=path,
    )


def register_model(
    estimator: Classifier,
    contract: FeatureContract,
    reference: pd.DataFrame,
    metadata: dict[str, Any],
) -> str:
    """Save a trained model with everything an audit needs; return its tag ``name:version``.

    ``metadata`` must hold ``decision_threshold``; ``reference`` must hold every contract feature
    and ``contract.score_name``; the estimator's classes must be 0 (negative) and 1 (positive).
    ``reference`` is the drift baseline: the training rows, and as their score what a model not
    fitted on them gives (out-of-fold), which new rows of the same population also get.
    """
    if "decision_threshold" not in metadata:
        raise ValueError("metadata must record the decision_threshold")
    classes = list(getattr(estimator, "classes_", [0, 1]))
    if sorted(classes) != [0, 1]:
        # LoadedModel.score reads the column of class 1: refuse here, not when a worker starts.
        raise ValueError(
            f"the estimator's classes are {classes}; encode the target as "
            f"0 = {contract.negative_label!r}, 1 = {contract.positive_label!r}"
        )
    missing = {*contract.feature_names, contract.score_name} - set(reference.columns)
    if missing:
        raise ValueError(f"reference data lacks columns {sorted(missing)}")
    with bentoml.models.create(contract.model_name, metadata=metadata) as stored:
        path = Path(stored.path)
        joblib.dump(estimator, path / MODEL_FILE)
        (path / CONTRACT_FILE).write_text(contract.to_json())
        reference.to_parquet(path / REFERENCE_FILE, index=False)
    return str(stored.tag)
