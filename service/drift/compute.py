"""Drift of a window against the reference data, by Evidently 0.7's data drift preset.

Column types come from the feature contract (categorical features as categorical, integer and
number features as numerical), so Evidently chooses its tests by kind and a swapped model gets
the right tests without configuration. The preset runs over the features only, so that the
share of drifted features and the dataset verdict are about the inputs; the model's score is a
``ValueDrift`` of its own (prediction drift), with the test Evidently chooses for a numerical
column. Evidently's own defaults apply: per column a test chosen by the column's type and the
reference size (p-values up to 1000 reference rows: K-S, or chi-square/Z for categories and for
numbers with at most 5 distinct values; distances above), and dataset drift when at least half
of the features drift. One exception: where Evidently would choose its chi-square test, a
two-sample chi-square test (of homogeneity) takes its place. Evidently's is a goodness-of-fit
test that takes the reference's proportions as exact, although the reference is a sample too
(750 rows in the example): traffic from the reference's own population is then flagged more often
the larger the window (in simulation, about 38% of such columns at 1000 rows and 88% at 10,000,
instead of 5%), and a single instance of a value the reference lacks gives a p-value of 0.

Imports Evidently, which takes seconds: only the drift child process imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.legacy.calculations.stattests import chi_stat_test
from evidently.legacy.calculations.stattests.registry import (
    StatTest,
    get_stattest,
    register_stattest,
)
from evidently.legacy.core import ColumnType
from evidently.legacy.renderers.html_widgets import CounterData, counter
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset
from scipy.stats import chi2_contingency

from service.contract import CategoricalFeature, FeatureContract
from service.drift.summary import ColumnDrift

log = logging.getLogger(__name__)

# Evidently's default: the dataset drifts when at least this share of the columns drift.
DRIFT_SHARE = 0.5
_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_DRIFTED_COUNT = "evidently:metric_v2:DriftedColumnsCount"


def _chi_square_two_sample(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    """Chi-square test of homogeneity of the two samples' value counts (a 2 x k table).

    ``feature_type`` is unused: Evidently calls every test with this signature."""
    counts = pd.concat(
        [reference.value_counts(), current.value_counts()], axis=1, keys=["r", "c"]
    ).fillna(0)
    if len(counts) < 2:  # one value in both: nothing can differ
        return 1.0, False
    p_value = float(chi2_contingency(counts.to_numpy().T, correction=False).pvalue)
    return p_value, p_value < threshold


CHI_SQUARE_TWO_SAMPLE = StatTest(
    name="chisquare_two_sample",
    display_name="chi-square two-sample p_value",
    allowed_feature_types=[ColumnType.Categorical, ColumnType.Numerical],
    default_threshold=0.05,
)
register_stattest(CHI_SQUARE_TWO_SAMPLE, default_impl=_chi_square_two_sample)
_DISPLAY_NAMES = {CHI_SQUARE_TWO_SAMPLE.name: CHI_SQUARE_TWO_SAMPLE.display_name}


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
    reference: pd.DataFrame,
    current: pd.DataFrame,
    contract: FeatureContract,
    timestamp: datetime | None = None,
    name: str | None = None,
    metadata: Mapping[str, str] | None = None,
    header: Sequence[tuple[str, str]] = (),
) -> DriftResult:
    """Compare ``current`` with ``reference`` (both: the contract's features and its score).

    ``timestamp`` is the snapshot's time (the run's, UTC); Evidently's default is the local time
    without a zone. ``name`` (the run id) and ``metadata`` go into the snapshot (for notebooks:
    ``Snapshot.load(path).dump_dict()["metadata"]``); ``header`` (label, value pairs) heads the
    HTML report. Evidently's own report names neither the model nor when the compared data was
    received, so a report opened on its own (``GET /drift/report``, a file kept for weeks)
    would not say what it is about.
    """
    columns = [*contract.feature_names, contract.score_name]
    definition = data_definition(contract)
    methods = _methods(reference, current, contract)
    report = Report(
        [
            DataDriftPreset(
                columns=list(contract.feature_names),
                drift_share=DRIFT_SHARE,
                per_column_method=methods,
            ),
            ValueDrift(column=contract.score_name, method=methods.get(contract.score_name)),
        ],
        # The per-column tests carry Evidently's drifted/not-drifted verdict, whichever the
        # direction of the method's score (p-value or distance).
        include_tests=True,
    )
    # A column constant in the window (clients sending one value, or the same request again)
    # makes the report's correlations divide by a zero deviation: numpy's "invalid value
    # encountered in divide" in the server log, for a window whose verdict is sound.
    with np.errstate(divide="ignore", invalid="ignore"):
        snapshot = report.run(
            Dataset.from_pandas(current[columns], data_definition=definition),
            Dataset.from_pandas(reference[columns], data_definition=definition),
            timestamp=timestamp or datetime.now(UTC),
            metadata=dict(metadata or {}),
            name=name,
        )
    if header:
        _head(snapshot, header, name or "")
    return _result(snapshot, contract)


def _head(snapshot: Snapshot, header: Sequence[tuple[str, str]], title: str) -> None:
    # Evidently has no public way to add a widget to a report; its snapshot keeps its widgets
    # in this list, which both the HTML and the saved snapshot (hence a rebuilt report) show. A
    # later Evidently may keep them elsewhere: the report then goes without its head, and the
    # run (the verdict, the metrics) goes on.
    try:
        counters = [CounterData(label, value) for label, value in header]
        snapshot._widgets.insert(0, counter(counters=counters, title=title))
    except Exception:
        log.warning("could not head drift report %s with what it compared", title, exc_info=True)


def _methods(
    reference: pd.DataFrame, current: pd.DataFrame, contract: FeatureContract
) -> dict[str, str]:
    """The columns Evidently would test with its goodness-of-fit chi-square, mapped to the
    two-sample one; every other column keeps Evidently's choice."""
    categorical = {f.name for f in contract.features if isinstance(f, CategoricalFeature)}
    methods: dict[str, str] = {}
    for name in [*contract.feature_names, contract.score_name]:
        kind = ColumnType.Categorical if name in categorical else ColumnType.Numerical
        if get_stattest(reference[name], current[name], kind, None) is chi_stat_test:
            methods[name] = CHI_SQUARE_TWO_SAMPLE.name
    return methods


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
                # An auto-chosen test is named by Evidently's display name; ours likewise.
                method=_DISPLAY_NAMES.get(config["method"], str(config["method"])),
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
