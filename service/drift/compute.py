"""Drift of a window against the reference data, by Evidently 0.7's data drift preset.

Column types come from the feature contract (categorical features as categorical, integer and
number features as numerical), so Evidently chooses its tests by kind and a swapped model gets
the right tests without configuration. The preset runs over the features only, so that the
share of drifted features and the dataset verdict are about the inputs; the model's score is a
``ValueDrift`` of its own (prediction drift), with the test Evidently chooses for a numerical
column. Evidently's own defaults apply: per column a test chosen by the column's type and the
reference size (p-values up to 1000 reference rows: K-S, or chi-square/Z for categories and for
numbers with at most 5 distinct values; distances above), and dataset drift when at least half
of the features drift.

Imports Evidently, which takes seconds: only the drift child process imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset

from service.contract import CategoricalFeature, FeatureContract
from service.drift.summary import ColumnDrift

# Evidently's default: the dataset drifts when at least this share of the columns drift.
DRIFT_SHARE = 0.5
_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_DRIFTED_COUNT = "evidently:metric_v2:DriftedColumnsCount"


@dataclass(frozen=True, slots=True)
class DriftResult:
    dataset_drift: bool
    drifted_share: float
    features: dict[str, ColumnDrift]
    prediction: ColumnDrift
    snapshot: Snapshot


def data_definition(contract: FeatureContract) -> DataDefinition:
    categorical = [f.name for f in contract.features if isinstance(f, CategoricalFeature)]
    numerical = [f.name for f in contract.numeric_features()]
    return DataDefinition(
        numerical_columns=[*numerical, contract.score_name], categorical_columns=categorical
    )


def compute_drift(
    reference: pd.DataFrame, current: pd.DataFrame, contract: FeatureContract
) -> DriftResult:
    """Compare ``current`` with ``reference`` (both: the contract's features and its score)."""
    columns = [*contract.feature_names, contract.score_name]
    definition = data_definition(contract)
    report = Report(
        [
            DataDriftPreset(columns=list(contract.feature_names), drift_share=DRIFT_SHARE),
            ValueDrift(column=contract.score_name),
        ],
        # The per-column tests carry Evidently's drifted/not-drifted verdict, whichever the
        # direction of the method's score (p-value or distance).
        include_tests=True,
    )
    snapshot = report.run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    return _result(snapshot, contract)


def _result(snapshot: Snapshot, contract: FeatureContract) -> DriftResult:
    document: dict[str, Any] = snapshot.dict()
    failed: set[str] = {
        test["metric_config"]["params"]["column"]
        for test in document["tests"]
        if test["metric_config"]["params"]["type"] == _VALUE_DRIFT and test["status"] == "FAIL"
    }
    columns: dict[str, ColumnDrift] = {}
    share = 0.0
    for metric in document["metrics"]:
        config = metric["config"]
        if config["type"] == _VALUE_DRIFT:
            column = config["column"]
            columns[column] = ColumnDrift(
                method=str(config["method"]),
                score=float(metric["value"]),
                threshold=float(config["threshold"]),
                drifted=column in failed,
            )
        elif config["type"] == _DRIFTED_COUNT:
            share = float(metric["value"]["share"])
    prediction = columns.pop(contract.score_name)
    return DriftResult(
        dataset_drift=share >= DRIFT_SHARE,
        drifted_share=share,
        features={name: columns[name] for name in contract.feature_names},
        prediction=prediction,
        snapshot=snapshot,
    )
