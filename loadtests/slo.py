"""The service-level objective a load test run is held to: p99 latency and error rate.

Kept apart from locust so that the verdict is a plain function of the run's totals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Exit code of a locust run that missed its SLO (locust itself uses 1 for "errors happened").
SLO_MISSED_EXIT_CODE = 3


@dataclass(frozen=True, slots=True)
class Slo:
    p99_ms: float
    max_error_rate: float

    def __post_init__(self) -> None:
        if self.p99_ms <= 0 or not 0 <= self.max_error_rate <= 1:
            raise ValueError(
                f"SLO: the p99 objective ({self.p99_ms:g} ms, --slo-p99-ms) must be > 0 and the "
                f"error rate objective ({self.max_error_rate:g}, --slo-error-rate) within 0..1"
            )


@dataclass(frozen=True, slots=True)
class SloVerdict:
    slo: Slo
    requests: int
    failures: int
    p99_ms: float
    requests_per_second: float
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "slo": asdict(self.slo),
            "requests": self.requests,
            "failures": self.failures,
            "error_rate": round(self.error_rate, 6),
            "p99_ms": self.p99_ms,
            "requests_per_second": round(self.requests_per_second, 2),
            "violations": self.violations,
        }

    def summary(self) -> str:
        verdict = "SLO met" if self.passed else f"SLO MISSED ({'; '.join(self.violations)})"
        return (
            f"{verdict}: p99 {self.p99_ms:.0f} ms (objective {self.slo.p99_ms:g} ms), error rate "
            f"{self.error_rate:.2%} (objective at most {self.slo.max_error_rate:.2%}), "
            f"{self.requests} requests, {self.requests_per_second:.1f} req/s"
        )


def judge(
    slo: Slo, requests: int, failures: int, p99_ms: float, requests_per_second: float
) -> SloVerdict:
    violations = []
    if requests == 0:
        violations.append("no request was made")
    elif p99_ms > slo.p99_ms:
        violations.append(f"p99 latency {p99_ms:.0f} ms > {slo.p99_ms:g} ms")
    if requests and failures / requests > slo.max_error_rate:
        violations.append(
            f"error rate {failures / requests:.2%} > {slo.max_error_rate:.2%} "
            f"({failures} of {requests})"
        )
    return SloVerdict(slo, requests, failures, p99_ms, requests_per_second, violations)
