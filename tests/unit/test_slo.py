"""The SLO verdict of a load test run, as docs/benchmarks.md describes it."""

from __future__ import annotations

from loadtests.slo import Slo, judge

SLO = Slo(p99_ms=500, max_error_rate=0.01)


def test_a_run_that_sent_nothing_misses_its_slo() -> None:
    # Every user raised at its start (a gRPC target that does not answer): nothing to judge,
    # and a CI job gating on the exit code must not pass it.
    verdict = judge(SLO, requests=0, failures=0, p99_ms=0.0, requests_per_second=0.0)
    assert not verdict.passed
    assert verdict.summary().startswith("SLO MISSED (no request was made): ")


def test_failures_within_the_error_budget_meet_it() -> None:
    verdict = judge(SLO, requests=1000, failures=10, p99_ms=499.0, requests_per_second=50.0)
    assert verdict.passed, verdict.violations
    missed = judge(SLO, requests=1000, failures=11, p99_ms=501.0, requests_per_second=50.0)
    assert missed.violations == [
        "p99 latency 501 ms > 500 ms",
        "error rate 1.10% > 1.00% (11 of 1000)",
    ]
