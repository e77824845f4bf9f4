"""The typed result of a drift run: what the store keeps, GET /drift serves, the metrics show.

A plain JSON document (``to_dict``/``from_dict``), so that the child process that computes it,
the ``drift_runs`` table that keeps it and every worker that exports it agree on one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

Status: TypeAlias = Literal["ok", "insufficient_data", "failed"]
# Completed runs carry a summary; failed ones only an error.
COMPLETED: tuple[Status, ...] = ("ok", "insufficient_data")


@dataclass(frozen=True, slots=True)
class ColumnDrift:
    """Evidently's verdict on one column: the test used, its score and threshold, the result.

    ``score`` is a p-value for statistical tests (drift when below the threshold) and a distance
    for distance metrics (drift when at or above it); ``method`` names which.
    """

    method: str
    score: float
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "score": self.score,
            "threshold": self.threshold,
            "drifted": self.drifted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnDrift:
        return cls(
            str(data["method"]),
            float(data["score"]),
            float(data["threshold"]),
            bool(data["drifted"]),
        )


@dataclass(frozen=True, slots=True)
class DriftSummary:
    """One completed run. Without enough instances (``insufficient_data``) there is no verdict:
    ``dataset_drift``, ``drifted_share`` and ``prediction`` are None and ``features`` is empty."""

    status: Literal["ok", "insufficient_data"]
    computed_at: datetime
    window_size: int
    min_samples: int
    model: str
    duration_seconds: float
    dataset_drift: bool | None = None
    drifted_share: float | None = None
    drift_share_threshold: float | None = None
    features: dict[str, ColumnDrift] = field(default_factory=dict)
    prediction: ColumnDrift | None = None
    report: str | None = None  # file name of the HTML report in DRIFT_SNAPSHOT_DIR
    # received_at of the newest and oldest instance in the window (None if empty, or a run
    # recorded before these were): computed_at is fresh on every run, the data need not be.
    window_newest_at: datetime | None = None
    window_oldest_at: datetime | None = None
    # Rows of the reference the window was compared with: a p-value depends on both sizes, so a
    # reader judging one needs both. None without a comparison, or for a run recorded before.
    reference_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "computed_at": self.computed_at.isoformat(),
            "window_size": self.window_size,
            "min_samples": self.min_samples,
            "model": self.model,
            "duration_seconds": self.duration_seconds,
            "dataset_drift": self.dataset_drift,
            "drifted_share": self.drifted_share,
            "drift_share_threshold": self.drift_share_threshold,
            "features": {name: f.to_dict() for name, f in self.features.items()},
            "prediction": self.prediction.to_dict() if self.prediction else None,
            "report": self.report,
            "window_newest_at": _iso(self.window_newest_at),
            "window_oldest_at": _iso(self.window_oldest_at),
            "reference_size": self.reference_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftSummary:
        prediction = data.get("prediction")
        return cls(
            status=data["status"],
            computed_at=datetime.fromisoformat(data["computed_at"]),
            window_size=int(data["window_size"]),
            min_samples=int(data["min_samples"]),
            model=str(data["model"]),
            duration_seconds=float(data["duration_seconds"]),
            dataset_drift=data.get("dataset_drift"),
            drifted_share=data.get("drifted_share"),
            drift_share_threshold=data.get("drift_share_threshold"),
            features={k: ColumnDrift.from_dict(v) for k, v in data.get("features", {}).items()},
            prediction=ColumnDrift.from_dict(prediction) if prediction else None,
            report=data.get("report"),
            window_newest_at=_datetime(data.get("window_newest_at")),
            window_oldest_at=_datetime(data.get("window_oldest_at")),
            reference_size=data.get("reference_size"),
        )


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _datetime(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
