"""The graceful GOAWAY: its bytes, when it may be written (never inside one of the
server's frames or header blocks, never on TLS or non-HTTP/2 connections, never with
bytes of the server still queued), and how the executor drains busy HTTP/2
connections: after a bounded busy time, once each, within the pacing."""

from __future__ import annotations

import asyncio
import struct

from handoff_fakes import FakeDiag, FakeTable
from hypothesis import given
from hypothesis import strategies as st

from aviator.agent.bpf.model import SocketState
from aviator.agent.handoff import goaway
from aviator.agent.handoff.drain import SENT
from aviator.agent.handoff.executor import HandOffExecutor
from aviator.agent.handoff.runner import HandOffRunner
from aviator.agent.handoff.select import Target
from aviator.agent.handoff.sockdiag import DiagSocket


def test_the_frame_is_a_graceful_goaway() -> None:
    f = goaway.GRACEFUL
    assert len(f) == 17
    length = int.from_bytes(f[:3], "big")
    ftype, flags, stream = f[3], f[4], struct.unpack("!I", f[5:9])[0]
    last, error = struct.unpack("!II", f[9:])
    assert (length, ftype, flags, stream) == (8, 7, 0, 0)
    assert (last, error) == (2**31 - 1, 0)


def test_what_may_be_written_on() -> None:
    ok = {"protocol": "grpc", "server_cuts": (0, 0), "ulp": b"\0" * 16, "outq": 0}
    assert goaway.refusal(**ok) is None  # type: ignore[arg-type]
    assert goaway.refusal(**{**ok, "protocol": "h2"}) is None  # type: ignore[arg-type]
    for change, why in [
        ({"protocol": "http1"}, goaway.NOT_H2),
        ({"protocol": "opaque"}, goaway.NOT_H2),
        ({"protocol": None}, goaway.NOT_H2),
        ({"server_cuts": (None, 0)}, goaway.UNPARSED),
        ({"server_cuts": (0, None)}, goaway.UNPARSED),
        ({"server_cuts": ()}, goaway.UNPARSED),
        ({"ulp": b"tls" + b"\0" * 13}, goaway.ULP),
        ({"server_cuts": (1, 0)}, goaway.MID_FRAME),  # mid-frame at the first look
        ({"server_cuts": (0, 1)}, goaway.MID_FRAME),  # ... or by the second
        ({"server_cuts": (2, 2)}, goaway.MID_FRAME),  # inside a header block
        ({"outq": 1}, goaway.SEND_QUEUE),
    ]:
        assert goaway.refusal(**{**ok, **change}) == why, change  # type: ignore[arg-type]
    assert {goaway.MID_FRAME, goaway.SEND_QUEUE} == goaway.TRANSIENT


@given(
    protocol=st.sampled_from(["h2", "grpc", "http1", "opaque", None]),
    cuts=st.lists(st.one_of(st.none(), st.integers(0, 3)), max_size=3),
    ulp=st.binary(max_size=16),
    outq=st.integers(0, 1 << 20),
)
def test_written_only_between_frames_of_a_parsed_h2_connection(
    protocol: str | None, cuts: list[int | None], ulp: bytes, outq: int
) -> None:
    """Whatever the inputs: a GOAWAY is allowed only if every look saw the server's
    bytes end between frames and outside a header block, nothing queued, no ULP."""
    allowed = goaway.refusal(protocol=protocol, server_cuts=cuts, ulp=ulp, outq=outq) is None
    assert allowed == (
        protocol in ("h2", "grpc")
        and bool(cuts)
        and all(c == 0 for c in cuts)
        and not ulp.strip(b"\0")
        and outq == 0
    )


# --- the executor's drain ---------------------------------------------------------------


def h2conn(sk: int, streams: int, protocol: str = "grpc") -> SocketState:
    return SocketState(
        sk,
        "server",
        ("10.0.0.1", 8080),
        ("10.9.9.9", 40000 + sk),
        1,
        0,
        1,
        3,
        streams,
        protocol,  # type: ignore[arg-type]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _executor(
    table: FakeTable, diag: FakeDiag, answers: list[str], clock: Clock
) -> tuple[HandOffExecutor, list[int]]:
    asked: list[int] = []

    def drain(sock: SocketState, target: DiagSocket) -> str:
        asked.append(sock.sk)
        return answers.pop(0) if answers else SENT

    executor = HandOffExecutor(
        table=table,
        open_diag=lambda _ns: diag,
        fresh_s=0.0,
        watch_s=0.01,
        watch_poll_s=0.001,
        sleep=clock.sleep,
        clock=clock,
        drain=drain,
        drain_after_s=1.0,
    )
    return executor, asked


TARGET = Target("ns/a", "10.0.0.1", frozenset({8080}))


def test_a_connection_never_idle_is_drained_once_after_the_bounded_wait() -> None:
    table = FakeTable([h2conn(1, streams=3)])
    diag, clock = FakeDiag(table), Clock()
    executor, asked = _executor(table, diag, [], clock)
    h = executor.begin(TARGET, "ns/p", 0.0)
    executor.step()  # due, busy through the watch: not drained yet
    assert asked == [] and h.drained == 0
    clock.now += 1.0
    executor.step()
    assert asked == [1] and h.drained == 1 and h.remaining == 0
    assert executor.drained_total == {"ns/a": 1}
    for _ in range(3):  # written once: its open streams finish
        clock.now += 1.0
        executor.step()
    assert asked == [1] and h.active and diag.destroyed_cookies == []
    # Its client keeps it open once its streams are done: ended like any idle one,
    # not counted again.
    table.socks[1] = h2conn(1, streams=0)
    executor.step()
    assert diag.destroyed_cookies == [1] and h.ended == 0 and h.drained == 1
    executor.step()
    assert h.outcome == "complete"


def test_mid_frame_is_retried_and_what_never_may_be_written_is_not_asked_again() -> None:
    table = FakeTable([h2conn(1, streams=2), h2conn(2, streams=2, protocol="h2")])
    diag, clock = FakeDiag(table), Clock()
    executor, asked = _executor(
        table, diag, [goaway.MID_FRAME, goaway.ULP, goaway.SEND_QUEUE], clock
    )
    h = executor.begin(TARGET, "ns/p", 0.0)
    executor.step()
    clock.now += 1.0
    executor.step()  # 1: mid-frame (retried); 2: a TLS socket (never)
    assert asked == [1, 2] and h.drained == 0
    clock.now += 0.1
    executor.step()  # 1: queued (retried)
    clock.now += 0.1
    executor.step()  # 1: sent
    assert asked == [1, 2, 1, 1] and h.drained == 1


def test_only_http2_connections_are_drained_and_idle_ones_are_ended_instead() -> None:
    busy_http1 = SocketState(
        3, "server", ("10.0.0.1", 8080), ("10.9.9.9", 3), 1, 7, 1, 3, 0, "http1"
    )
    table = FakeTable([busy_http1, h2conn(4, streams=0)])
    diag, clock = FakeDiag(table), Clock()
    executor, asked = _executor(table, diag, [], clock)
    h = executor.begin(TARGET, "ns/p", 0.0)
    for _ in range(3):
        executor.step()
        clock.now += 1.0
    assert asked == [] and diag.destroyed_cookies == [4] and h.ended == 1 and h.drained == 0


def test_the_drain_follows_the_ramp() -> None:
    """Four never-idle connections over a 4 s period: drained one by one, not at once."""
    table = FakeTable([h2conn(sk, streams=1) for sk in range(1, 5)])
    diag, clock = FakeDiag(table), Clock()
    executor, _ = _executor(table, diag, [], clock)
    executor.drain_after_s = 0.0
    h = executor.begin(TARGET, "ns/p", 4.0)
    drained = []
    for _ in range(5):
        executor.step()
        drained.append(h.drained)
        clock.now += 1.0
    # The ramp's share by each step (the watch moves the clock a little past it).
    assert drained[0] == 0 and drained[1] <= 2 and drained[2] <= 3 and drained[-1] == 4


def test_the_runner_counts_drains_and_reports_them() -> None:
    pod = {
        "metadata": {"name": "a", "namespace": "ns"},
        "spec": {"nodeName": "node-a"},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]},
    }
    handoff = {"pod": "a", "node": "node-a", "ip": "10.0.0.1", "ports": [8080]}
    handoff |= {"since": "2020-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"}
    policy = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"routing": {"mode": "takeover", "handoff": {"enabled": True}}},
        "status": {"handOffs": [handoff]},
    }
    table = FakeTable([h2conn(1, streams=2)])
    diag, clock = FakeDiag(table), Clock()
    executor, _ = _executor(table, diag, [], clock)
    executor.drain_after_s = 0.0
    drained: list[tuple[str, int]] = []
    recorded: list[tuple[str, str]] = []
    got_drained, got_recorded = asyncio.Event(), asyncio.Event()

    def on_drained(p: str, n: int) -> None:
        drained.append((p, n))
        got_drained.set()

    async def record(obj: dict[str, object], reason: str, note: str) -> None:
        recorded.append((reason, note))
        got_recorded.set()

    runner = HandOffRunner(
        executor,
        "node-a",
        lambda: [policy],
        {"ns/a": pod}.get,
        policy=lambda _key: policy,
        record=record,
        on_ended=lambda _p, _n: None,
        on_drained=on_drained,
        step_s=0.01,
    )

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(runner.run())
        await asyncio.wait_for(got_drained.wait(), 10)
        del table.socks[1]  # its client closed it once its calls were done
        runner.poke()
        await asyncio.wait_for(got_recorded.wait(), 10)
        task.cancel()

    asyncio.run(scenario())
    assert drained == [("ns/a", 1)]
    ((reason, note),) = recorded
    assert reason == "ConnectionsHandedOff"
    assert note.startswith(
        "ended 0 idle client connection(s), drained 1 busy HTTP/2 connection(s) with a "
        "graceful GOAWAY of pod a on port(s) 8080 (complete"
    ), note
