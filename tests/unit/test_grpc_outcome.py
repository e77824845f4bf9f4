"""Whether a cancelled gRPC call missed its deadline, from the time its context says remains.

The served test (tests/integration/test_oip_events.py, a passed deadline and a client cancel
told apart) shows the behaviour end to end, but only when gRPC's timer fires early, about one
run in four; here the margin is pinned. The context is a stand-in (named so): a real one's
remaining time cannot be chosen."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from service.oip.outcome import DEADLINE_MARGIN_SECONDS, deadline_passed


class StandInContext:
    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


def passed(remaining: float | None) -> bool:
    return deadline_passed(cast(grpc.aio.ServicerContext, cast(Any, StandInContext(remaining))))


@pytest.mark.parametrize("remaining", [0.0, 0.006, DEADLINE_MARGIN_SECONDS])
def test_a_call_cancelled_at_its_deadline_missed_it_even_if_the_timer_fired_early(
    remaining: float,
) -> None:
    # 6 ms: what time_remaining() said of calls gRPC's deadline timer had cancelled (measured)
    assert passed(remaining)


@pytest.mark.parametrize("remaining", [None, DEADLINE_MARGIN_SECONDS + 0.01, 5.0])
def test_a_call_cancelled_well_before_its_deadline_or_without_one_was_its_clients_cancel(
    remaining: float | None,
) -> None:
    assert not passed(remaining)
