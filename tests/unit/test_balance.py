"""The connection balancer's board and decisions, without a server (the served test is in
tests/integration/test_http.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from starlette.types import Message, Receive, Scope, Send

from service.balance import Board, ConnectionBalancer


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def request(balancer: ConnectionBalancer, client_port: int) -> list[tuple[bytes, bytes]]:
    """The response headers of one request from 127.0.0.1:client_port."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "client": ("127.0.0.1", client_port), "headers": []}
    asyncio.run(balancer(scope, receive, send))
    return list(sent[0]["headers"])


def test_the_board_shows_each_worker_its_live_siblings(tmp_path: Path) -> None:
    path = tmp_path / "workers.board"
    first, second, third = Board(path, 0), Board(path, 1), Board(path, 2)
    first.publish(5, now=100.0)
    second.publish(2, now=100.0)
    third.publish(9, now=90.0)  # stopped publishing ten seconds ago
    assert sorted(first.siblings(max_age=2.5, now=101.0)) == [2]
    assert sorted(second.siblings(max_age=2.5, now=101.0)) == [5]
    second.close()  # a worker that stops leaves the board
    assert first.siblings(max_age=2.5, now=101.0) == []


def test_a_worker_holding_two_connections_more_than_a_sibling_closes_one(tmp_path: Path) -> None:
    balancer, sibling = serving(tmp_path, (5001, 5002), interval=60, hold=0)
    sibling.publish(1)
    balancer.refresh()
    assert request(balancer, 5001) == []  # 2 against 1: a move would only swap the imbalance
    sibling.publish(0)
    balancer.refresh()  # 2 against 0
    assert request(balancer, 5001) == [(b"connection", b"close")]
    assert balancer.closed == 1
    # the next close waits for the interval, whatever the board says
    for port in (5003, 5004):
        request(balancer, port)
    balancer.refresh()
    assert all(request(balancer, port) == [] for port in (5002, 5003, 5004))


def test_only_a_difference_that_lasts_moves_a_connection(tmp_path: Path) -> None:
    """A sibling that shows no connections for one tick (its event loop was held up, or the read
    was torn) moves nothing; one that keeps showing none does, once ``hold`` has passed."""
    balancer, sibling = serving(tmp_path, (5001, 5002, 5003), interval=0.1, hold=0.5)
    start = time.monotonic()
    for offset, theirs in ((0.0, 3), (0.1, 0), (0.2, 3), (0.3, 0), (0.6, 0)):
        sibling.publish(theirs)
        balancer.refresh(now=start + offset)
        assert request(balancer, 5001) == [], offset  # the blip, then 0.3 s of a real difference
    balancer.refresh(now=start + 0.85)  # 3 against 0 since 0.3
    assert request(balancer, 5001) == [(b"connection", b"close")]
    assert balancer.closed == 1


def test_a_new_connection_is_never_closed_and_a_balanced_worker_closes_none(
    tmp_path: Path,
) -> None:
    balancer, sibling = serving(tmp_path, (5001, 5002, 5003), interval=0, hold=0)
    sibling.publish(0)
    balancer.refresh()
    assert request(balancer, 6000) == []  # first request of a connection
    sibling.publish(3)
    balancer.refresh()
    assert all(request(balancer, port) == [] for port in (5001, 5002, 5003, 6000))
    assert balancer.closed == 0


def test_without_siblings_or_before_start_requests_pass_untouched(tmp_path: Path) -> None:
    balancer = ConnectionBalancer(answer, interval=0, hold=0)
    assert request(balancer, 5001) == []  # not started: no board
    asyncio.run(_start(balancer, Board(tmp_path / "workers.board", 0)))
    for port in range(5001, 5010):
        request(balancer, port)
    balancer.refresh()
    assert request(balancer, 5001) == []
    assert balancer.closed == 0


def serving(
    tmp_path: Path, ports: tuple[int, ...], interval: float, hold: float
) -> tuple[ConnectionBalancer, Board]:
    """A started worker's balancer that has seen a request from each of ``ports``, and the board
    slot of its sibling."""
    path = tmp_path / "workers.board"
    sibling = Board(path, 1)
    balancer = ConnectionBalancer(answer, interval=interval, hold=hold)
    asyncio.run(_start(balancer, Board(path, 0)))
    for port in ports:
        request(balancer, port)
    return balancer, sibling


async def _start(balancer: ConnectionBalancer, board: Board) -> None:
    # start() needs a running loop for its refresh task; the tests refresh by hand.
    balancer.start(board)
    assert balancer._task is not None
    balancer._task.cancel()
