"""The agent acts only on hand-offs of its own node's pods, confirmed by its Pod cache;
the runner follows the orders and reports what it ended."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import re
import threading
from typing import Any

import pytest
from handoff_fakes import FakeDiag, FakeTable

from aviator.agent.bpf.model import SocketState
from aviator.agent.handoff.executor import HandOffExecutor
from aviator.agent.handoff.orders import orders
from aviator.agent.handoff.runner import HandOffRunner
from aviator.agent.handoff.select import Target
from aviator.agent.handoff.sockdiag import DiagSocket

JSON = dict[str, Any]
NOW = 1_800_000_000.0
UNTIL = "2027-01-15T08:00:05Z"  # NOW + 5 s


def pod(name: str, ip: str, node: str = "node-a", host_network: bool = False) -> JSON:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"nodeName": node, "hostNetwork": host_network},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def policy(*entries: JSON, enabled: bool = True) -> JSON:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"routing": {"mode": "takeover", "handoff": {"enabled": enabled}}},
        "status": {"handOffs": list(entries)},
    }


def entry(name: str, ip: str, node: str = "node-a", until: str = UNTIL) -> JSON:
    return {"pod": name, "node": node, "ip": ip, "ports": [8080], "since": UNTIL, "until": until}


LOCAL = {
    "ns/a": pod("a", "10.0.0.1"),
    "ns/b": pod("b", "10.0.0.2"),
    "ns/h": pod("h", "192.168.0.1", host_network=True),
}


def test_only_confirmed_pods_of_this_node() -> None:
    got = orders(
        [
            policy(
                entry("a", "10.0.0.1"),
                entry("b", "10.0.0.9"),  # the IP is another pod's now
                entry("c", "10.0.0.3"),  # not in this node's cache
                entry("a2", "10.0.0.1", node="node-b"),  # another node's
                entry("h", "192.168.0.1"),  # host network: the node's own address
            )
        ],
        "node-a",
        LOCAL.get,
        NOW,
    )
    assert list(got) == ["ns/a"]
    order = got["ns/a"]
    assert order.target.ip == "10.0.0.1" and order.target.ports == frozenset({8080})
    assert order.period_s == 5.0
    assert order.policy == "ns/p"
    assert orders([policy(entry("a", "10.0.0.1"), enabled=False)], "node-a", LOCAL.get, NOW) == {}


def conn(sk: int, local: tuple[str, int], busy: bool = False) -> SocketState:
    return SocketState(sk, "server", local, ("10.9.9.9", 40000 + sk), 1, 5 if busy else 0, 1, 1)


def test_runner_follows_orders_and_reports_once() -> None:
    table = FakeTable([conn(1, ("10.0.0.1", 8080)), conn(2, ("10.0.0.1", 8080), busy=True)])
    diag = FakeDiag(table)
    executor = HandOffExecutor(table=table, open_diag=lambda _ns: diag, fresh_s=0.0)
    policies = [policy(entry("a", "10.0.0.1", until="2020-01-01T00:00:00Z"))]  # period over
    recorded: list[tuple[str, str]] = []
    ended: list[tuple[str, int]] = []
    got_ended, got_recorded = asyncio.Event(), asyncio.Event()

    async def record(obj: JSON, reason: str, note: str) -> None:
        recorded.append((reason, note))
        got_recorded.set()

    def on_ended(p: str, n: int) -> None:
        ended.append((p, n))
        got_ended.set()

    runner = HandOffRunner(
        executor,
        "node-a",
        lambda: policies,
        LOCAL.get,
        policy=lambda key: policies[0] if key == "ns/p" else None,
        record=record,
        on_ended=on_ended,
        step_s=0.01,
    )

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(runner.run())
        await asyncio.wait_for(got_ended.wait(), 10)
        # The busy one is never ended; the order goes away (routed again): cancelled.
        assert [d.cookie for d in diag.destroyed] == [1]
        policies[0] = policy()
        runner.poke()
        await asyncio.wait_for(got_recorded.wait(), 10)
        task.cancel()

    asyncio.run(scenario())
    assert ended == [("ns/a", 1)]
    assert [d.cookie for d in diag.destroyed] == [1]
    ((reason, note),) = recorded
    assert reason == "ConnectionsHandedOff"
    assert re.fullmatch(
        r"ended 1 idle client connection\(s\) of pod a on port\(s\) 8080 "
        r"\(cancelled after \d+\.\ds\); 1 busy left alone",
        note,
    ), note


@dataclasses.dataclass
class SteppedExecutor(HandOffExecutor):
    """Tells when it has stepped (the runner steps it in a thread)."""

    stepped: threading.Event = dataclasses.field(default_factory=threading.Event)

    def step(self) -> None:
        super().step()
        self.stepped.set()


def test_a_hand_off_that_ended_nothing_still_says_what_it_left_alone() -> None:
    """A pod whose only connection was busy at every look: nothing ended, but the
    operator learns that a connection stayed on the pod (and why, in the note)."""
    table = FakeTable([conn(2, ("10.0.0.1", 8080), busy=True)])
    diag = FakeDiag(table)
    executor = SteppedExecutor(table=table, open_diag=lambda _ns: diag, fresh_s=0.0, watch_s=0)
    policies = [policy(entry("a", "10.0.0.1", until="2020-01-01T00:00:00Z"))]
    recorded: list[tuple[str, str]] = []
    got_recorded = asyncio.Event()

    async def record(obj: JSON, reason: str, note: str) -> None:
        recorded.append((reason, note))
        got_recorded.set()

    runner = HandOffRunner(
        executor,
        "node-a",
        lambda: policies,
        LOCAL.get,
        policy=lambda key: policies[0] if key == "ns/p" else None,
        record=record,
        step_s=0.01,
    )

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(runner.run())
        assert await asyncio.to_thread(executor.stepped.wait, 10)  # it looked once
        policies[0] = policy()  # the controller drops the order
        runner.poke()
        await asyncio.wait_for(got_recorded.wait(), 10)
        task.cancel()

    asyncio.run(scenario())
    assert diag.destroyed == []
    ((reason, note),) = recorded
    assert reason == "ConnectionsHandedOff"
    assert re.fullmatch(
        r"ended 0 idle client connection\(s\) of pod a on port\(s\) 8080 "
        r"\(cancelled after \d+\.\ds\); 1 busy left alone",
        note,
    ), note


def test_a_connection_busy_at_the_last_look_is_never_ended() -> None:
    """The walk saw it idle; by the destroy a request is in flight: it stays."""
    idle = conn(1, ("10.0.0.1", 8080))
    diag = FakeDiag(FakeTable([idle]))

    class TurnsBusy(FakeTable):
        def socket(self, sk: int) -> SocketState | None:
            return conn(sk, ("10.0.0.1", 8080), busy=True)

    busy_table = TurnsBusy([idle])
    executor = HandOffExecutor(table=busy_table, open_diag=lambda _ns: diag, fresh_s=0.0)
    h = executor.begin(Target("ns/a", "10.0.0.1", frozenset({8080})), "ns/p", 0.0)
    executor.step()
    assert diag.destroyed == [] and h.busy == 1 and h.ended == 0


def test_a_request_arriving_during_the_query_keeps_it() -> None:
    """Idle at the first look; a request's first segment arrives while the kernel is
    asked about its queues (read after it, the receive queue may already be empty
    again, or the segment not yet queued): the program's view, read once more right
    before the destroy, keeps the connection."""
    table = FakeTable([conn(1, ("10.0.0.1", 8080))])

    class RequestDuringQuery(FakeDiag):
        def query(self, sock: DiagSocket) -> DiagSocket | None:
            table.socks[1] = conn(1, ("10.0.0.1", 8080), busy=True)
            return sock

    diag = RequestDuringQuery(table)
    executor = HandOffExecutor(table=table, open_diag=lambda _ns: diag, fresh_s=0.0, watch_s=0.0)
    h = executor.begin(Target("ns/a", "10.0.0.1", frozenset({8080})), "ns/p", 0.0)
    executor.step()
    assert diag.destroyed == [] and h.busy == 1 and h.ended == 0


def test_where_the_kernel_ends_it_the_look_and_the_end_are_its() -> None:
    """With an in-kernel end (`destroy_if_quiet`), the executor neither queries nor
    destroys: the kernel's answer decides (0 ended, EBUSY busy, ENOENT gone)."""
    for answer, ended, busy in ((0, 1, 0), (errno.EBUSY, 0, 1), (errno.ENOENT, 0, 0)):
        table = FakeTable([conn(1, ("10.0.0.1", 8080))])

        class InKernel(FakeDiag):
            asked: list[int] = []
            answers = [answer]

            def query(self, sock: DiagSocket) -> DiagSocket | None:
                raise AssertionError("queried: the kernel looks itself")

            def destroy(self, sock: DiagSocket) -> int:
                raise AssertionError("destroyed from user space")

            def destroy_if_quiet(self, sock: DiagSocket, quiet_ns: int) -> int | None:
                self.asked.append(quiet_ns)
                return self.answers[0]

        diag = InKernel(table)
        executor = HandOffExecutor(
            table=table, open_diag=lambda _ns, d=diag: d, fresh_s=0.0, watch_s=0.0
        )
        h = executor.begin(Target("ns/a", "10.0.0.1", frozenset({8080})), "ns/p", 0.0)
        executor.step()
        assert (h.ended, h.busy) == (ended, busy), answer
        assert diag.asked == [int(executor.quiet_s * 1e9)]


def test_a_connection_is_ended_only_once_quiet() -> None:
    """Idle since an answer 10 ms ago: its client may be sending the next request right
    now, so it waits (counted busy); idle for the quiet time, it is ended."""
    kernel_now = [10**12]
    sock = dataclasses.replace(conn(1, ("10.0.0.1", 8080)), idle_ns=kernel_now[0] - 10**7)
    table = FakeTable([sock])
    diag = FakeDiag(table)
    executor = HandOffExecutor(
        table=table,
        open_diag=lambda _ns: diag,
        fresh_s=0.0,
        watch_s=0.0,
        quiet_s=0.05,
        kernel_clock=lambda: kernel_now[0],
    )
    h = executor.begin(Target("ns/a", "10.0.0.1", frozenset({8080})), "ns/p", 0.0)
    executor.step()
    assert diag.destroyed == [] and h.busy == 1 and h.active
    kernel_now[0] += 4 * 10**7  # 50 ms since its answer
    executor.step()
    assert diag.destroyed_cookies == [1] and h.ended == 1


def test_a_connection_just_dialled_to_the_pod_keeps_its_hand_off_going() -> None:
    """A Service proxy that follows the routing change late places a new connection on
    the pod. Carrying its first request (which clients do not retry), it is not ended;
    but the hand-off is not over while it is there, and once answered it is ended."""
    kernel_now = [10**12]
    first = dataclasses.replace(
        conn(1, ("10.0.0.1", 8080), busy=True), requests=0, idle_ns=kernel_now[0] - 10**8
    )
    table = FakeTable([first])
    diag = FakeDiag(table)
    executor = HandOffExecutor(
        table=table,
        open_diag=lambda _ns: diag,
        fresh_s=1.0,
        watch_s=0.0,
        kernel_clock=lambda: kernel_now[0],
    )
    h = executor.begin(Target("ns/a", "10.0.0.1", frozenset({8080})), "ns/p", 0.0)
    executor.step()
    assert h.active and h.remaining == 1 and diag.destroyed == []
    kernel_now[0] += 2 * 10**8  # answered 100 ms ago
    table.socks[1] = dataclasses.replace(
        first, start_ns=0, requests=1, idle_ns=kernel_now[0] - 10**8
    )
    executor.step()
    assert diag.destroyed_cookies == [1] and h.ended == 1
    executor.step()
    assert h.outcome == "complete" and h.remaining == 0


def test_a_request_unread_keeps_it() -> None:
    """Idle in the program's view, but the kernel holds request bytes the application
    has not read yet: the connection stays."""

    class Queued(FakeDiag):
        queues: dict[str, int] = {}

        def query(self, sock: DiagSocket) -> DiagSocket | None:
            return dataclasses.replace(sock, **self.queues)

    for queues in ({"rqueue": 30}, {"rqueue": 1, "wqueue": 100}):
        table = FakeTable([conn(1, ("10.0.0.1", 8080))])
        diag = Queued(table)
        diag.queues = queues
        executor = HandOffExecutor(
            table=table, open_diag=lambda _ns, d=diag: d, fresh_s=0.0, watch_s=0.0
        )
        h = executor.begin(Target("ns/a", "10.0.0.1", frozenset({8080})), "ns/p", 0.0)
        executor.step()
        assert diag.destroyed == [] and h.busy == 1, queues


def test_an_order_begun_again_after_it_finished_logs_only_what_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While a finished order lingers, the runner begins it again at every look: a
    connection dialled to the pod since is still ended, and said; a look that finds
    nothing says so only at DEBUG (it said "0 connections ended" every second)."""
    table = FakeTable([])
    diag = FakeDiag(table)
    executor = HandOffExecutor(table=table, open_diag=lambda _ns: diag, fresh_s=0.0, watch_s=0)
    target = Target("ns/a", "10.0.0.1", frozenset({8080}))

    def run_once() -> list[tuple[int, str]]:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="aviator.agent.handoff.executor"):
            h = executor.begin(target, "ns/p", 0.0)
            for _ in range(3):  # a step ends what it finds; the next finds nothing left
                executor.step()
        assert not h.active
        return [(r.levelno, r.getMessage()) for r in caplog.records]

    first = run_once()
    assert [lvl for lvl, _ in first] == [logging.INFO, logging.INFO], first
    again = run_once()
    assert [lvl for lvl, _ in again] == [logging.DEBUG, logging.DEBUG], again
    assert "again" in again[0][1]
    table.socks[1] = conn(1, ("10.0.0.1", 8080))  # a late proxy placed a client there
    ended = run_once()
    assert diag.destroyed_cookies == [1]
    assert [lvl for lvl, _ in ended] == [logging.DEBUG, logging.INFO], ended
    assert "complete: 1 connections ended" in ended[1][1]
    # Another policy's order for the pod is news.
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="aviator.agent.handoff.executor"):
        executor.begin(target, "ns/q", 0.0)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
