"""The gRPC arguments of the connection settings: 0 means no limit, as documented, and a limit
is never 0 ms, which gRPC would read as "at once"."""

from __future__ import annotations

from service.oip.server import ConnectionLimits


def test_zero_leaves_the_limit_to_grpc_which_has_none() -> None:
    assert ConnectionLimits(0, 0, 30).options() == []


def test_limits_are_in_milliseconds_and_the_age_brings_its_grace() -> None:
    assert dict(ConnectionLimits(300, 60, 30).options()) == {
        "grpc.max_connection_idle_ms": 300_000,
        "grpc.max_connection_age_ms": 60_000,
        "grpc.max_connection_age_grace_ms": 30_000,
    }
    # A grace of 0 closes the old connection at once, not never.
    assert dict(ConnectionLimits(0, 1, 0).options())["grpc.max_connection_age_grace_ms"] == 1
    assert dict(ConnectionLimits(0.0001, 0, 0).options())["grpc.max_connection_idle_ms"] == 1
