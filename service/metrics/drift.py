"""Drift metrics: the latest drift run in the store, which every worker reads and shows alike."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from service.drift.summary import ColumnDrift, DriftSummary

NAN = float("nan")


class DriftMetrics:
    """The latest drift run, as gauges; the runs this worker did, as a counter.

    Every worker sets the gauges from the same run (the newest completed row of ``drift_runs``
    for the served model), so they use ``livemostrecent``: one scrape shows one value per series,
    whichever worker answers it. Each series carries ``model_version``, as the model-call metrics
    do: during a rolling deploy the old and the new version's runs are told apart, and the
    dashboards' version selector applies to drift too. Without a verdict (before the first run,
    or a run with insufficient data) the verdict gauges are NaN: prometheus_client's
    multiprocess files cannot remove a series, and NaN makes comparisons such as ``== 1`` false,
    so no drift alert fires on missing data.
    """

    def __init__(
        self,
        features: Sequence[str],
        interval_seconds: float,
        model_version: str,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        def family(name: str, what: str, labels: Sequence[str]) -> Gauge:
            return Gauge(
                f"model_drift_{name}",
                what,
                ["model_version", *labels],
                multiprocess_mode="livemostrecent",
                registry=registry,
            )

        def gauge(name: str, what: str) -> Gauge:
            return family(name, what, ()).labels(model_version)

        self._score = family(
            "feature_score",
            "Drift score of the feature in the last run: a p-value for statistical tests, a "
            "distance for distance metrics (model_drift_feature_method_info names it).",
            ["feature"],
        )
        self._threshold = family(
            "feature_threshold",
            "Threshold the feature's drift score is compared with.",
            ["feature"],
        )
        self._drifted = family("feature_drifted", "1 if the feature drifted, else 0.", ["feature"])
        self._method = family(
            "feature_method_info",
            "1 for the drift method (Evidently's test) used for the feature; 0 for a method used "
            "before.",
            ["feature", "method"],
        )
        self._ratio = gauge("drifted_features_ratio", "Share of the features that drifted, 0..1.")
        self._dataset = gauge(
            "dataset_drifted", "1 if the dataset drifted (Evidently's verdict), else 0."
        )
        self._prediction_score = gauge(
            "prediction_score", "Drift score of the model's score column."
        )
        self._prediction_threshold = gauge(
            "prediction_threshold", "Threshold the score column's drift score is compared with."
        )
        self._prediction_drifted = gauge(
            "prediction_drifted", "1 if the model's score drifted, else 0."
        )
        self._window = gauge("window_instances", "Instances in the last run's window.")
        self._newest = gauge(
            "window_newest_timestamp_seconds",
            "Unix time the newest instance of the last run's window was received: how fresh the "
            "data drift is computed on (the run time is not); NaN if the window was empty.",
        )
        self._oldest = gauge(
            "window_oldest_timestamp_seconds",
            "Unix time the oldest instance of the last run's window was received; NaN if the "
            "window was empty.",
        )
        self._insufficient = gauge(
            "insufficient_data",
            "1 when the last run had fewer instances than DRIFT_MIN_SAMPLES (no verdict).",
        )
        self._last_run = gauge(
            "last_run_timestamp_seconds",
            "Unix time the last completed run (ok or insufficient_data) started; 0 before any.",
        )
        self._duration = gauge("last_run_duration_seconds", "Duration of the last completed run.")
        # Not a property of the model: the setting, one series per instance.
        interval = Gauge(
            "model_drift_interval_seconds",
            "DRIFT_INTERVAL_SECONDS: how often drift runs.",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        runs = Counter(
            "model_drift_runs",
            "Drift runs, by outcome: ok, insufficient_data, failed (counted by the process that "
            "ran them).",
            ["model_version", "status"],
            registry=registry,
        )
        self._runs = {
            status: runs.labels(model_version, status)
            for status in ("ok", "insufficient_data", "failed")
        }
        interval.set(interval_seconds)
        # 0 until a completed run is shown: a `mostrecent` gauge never set is left out of the
        # scrape, and DriftMonitorStale could not fire for a monitor that never completes a run
        self._last_run.set(0)
        self._version = model_version
        self._methods: dict[str, str] = {}
        # The contract's features, so that their series exist (NaN) before the first verdict.
        self._features = set(features)
        self._clear_verdict()

    def count(self, status: str) -> None:
        self._runs[status].inc()

    def show(self, summary: DriftSummary) -> None:
        """Export the run ``summary`` (a completed run)."""
        self._window.set(summary.window_size)
        self._newest.set(_timestamp(summary.window_newest_at))
        self._oldest.set(_timestamp(summary.window_oldest_at))
        self._last_run.set(summary.computed_at.timestamp())
        self._duration.set(summary.duration_seconds)
        if summary.status != "ok" or summary.prediction is None:
            self._insufficient.set(1)
            self._clear_verdict()
            return
        self._insufficient.set(0)
        self._ratio.set(summary.drifted_share if summary.drifted_share is not None else NAN)
        self._dataset.set(1 if summary.dataset_drift else 0)
        self._set_column(
            summary.prediction,
            self._prediction_score,
            self._prediction_threshold,
            self._prediction_drifted,
        )
        for name, column in summary.features.items():
            self._features.add(name)
            self._set_column(
                column,
                self._score.labels(self._version, name),
                self._threshold.labels(self._version, name),
                self._drifted.labels(self._version, name),
            )
            previous = self._methods.get(name)
            if previous is not None and previous != column.method:
                self._method.labels(self._version, name, previous).set(0)
            self._method.labels(self._version, name, column.method).set(1)
            self._methods[name] = column.method

    def _clear_verdict(self) -> None:
        for gauge in (self._ratio, self._dataset):
            gauge.set(NAN)
        for gauge in (self._prediction_score, self._prediction_threshold, self._prediction_drifted):
            gauge.set(NAN)
        for name in self._features:
            for family in (self._score, self._threshold, self._drifted):
                family.labels(self._version, name).set(NAN)

    @staticmethod
    def _set_column(column: ColumnDrift, score: Gauge, threshold: Gauge, drifted: Gauge) -> None:
        score.set(column.score)
        threshold.set(column.threshold)
        drifted.set(1 if column.drifted else 0)


def _timestamp(at: datetime | None) -> float:
    return at.timestamp() if at is not None else NAN
