"""Which connections a hand-off may end, and its pacing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aviator.agent.bpf.model import SocketState
from aviator.agent.handoff import pacing
from aviator.agent.handoff.select import Target, connections, is_idle, is_quiet

NOW = 10**12
POD = Target(pod="ns/a", ip="10.0.0.5", ports=frozenset({8080}))
NODE = frozenset({"10.0.0.1"})
ips = st.sampled_from(["10.0.0.5", "10.0.0.6", "10.0.0.1", "10.0.9.9"])


@st.composite
def sockets(draw: st.DrawFn) -> SocketState:
    return SocketState(
        sk=draw(st.integers(1, 2**64 - 1)),
        role=draw(st.sampled_from(["server", "client"])),
        local=(draw(ips), draw(st.sampled_from([8080, 9090, 40000]))),
        remote=(draw(ips), draw(st.sampled_from([8080, 51000]))),
        netns=1,
        start_ns=draw(st.sampled_from([0, NOW - 5])),
        idle_ns=draw(st.sampled_from([NOW - 10**6, NOW - 5 * 10**9])),
        requests=draw(st.integers(0, 3)),
        streams=draw(st.sampled_from([0, 2])),
        protocol=draw(st.sampled_from([None, "http1", "h2", "grpc", "opaque"])),
    )


@given(st.lists(sockets(), max_size=30))
def test_only_the_pods_client_connections_on_target_ports(socks: list[SocketState]) -> None:
    found, young = connections(socks, POD, node_addresses=NODE, now_ns=NOW, fresh_s=1.0)
    for s in found:
        assert s.role == "server" and s.local == ("10.0.0.5", 8080)
        assert s.remote[0] not in NODE
        assert s.protocol != "opaque"
        assert s.requests > 0 or NOW - s.idle_ns >= 10**9
    for s in socks:
        if s not in found:
            assert (
                s.role == "client"
                or s.local != ("10.0.0.5", 8080)
                or s.remote[0] in NODE
                or s.protocol == "opaque"
                or (s.requests == 0 and NOW - s.idle_ns < 10**9)
            )
    # Idle ones first.
    idle = [is_idle(s) for s in found]
    assert idle == sorted(idle, reverse=True)
    # The pod's other client connections are just dialled: they keep its hand-off going.
    clients = [
        s
        for s in socks
        if s.role == "server"
        and s.local == ("10.0.0.5", 8080)
        and s.remote[0] not in NODE
        and s.protocol != "opaque"
    ]
    assert len(found) + young == len(clients)


@given(
    total=st.integers(0, 500),
    period=st.floats(0.1, 60.0),
    times=st.lists(st.floats(0.0, 100.0), max_size=40),
)
def test_the_ramp_never_runs_ahead_and_ends_everything(
    total: int, period: float, times: list[float]
) -> None:
    ended = 0
    for t in sorted(times):
        n = pacing.due(ended=ended, remaining=total - ended, started=0.0, period_s=period, now=t)
        assert 0 <= n <= total - ended
        ended += n
        # At most the ramp's share (rounded up) by time t.
        assert ended <= max(0, -(-total * min(t, period) // period)) + 1
    last = pacing.due(
        ended=ended, remaining=total - ended, started=0.0, period_s=period, now=period
    )
    assert ended + last == total


@given(
    rate=st.floats(0.5, 200.0),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(0.0, 2.0), max_size=30),
)
def test_rate_limit_bounds_what_is_taken(rate: float, burst: int, steps: list[float]) -> None:
    limit = pacing.RateLimit(rate, burst)
    now = 0.0
    taken = 0
    for dt in steps:
        now += dt
        taken += limit.take(1000, now)
        assert taken <= burst + rate * now + 1e-6


@given(sockets(), st.integers(0, 10 * 10**9))
def test_quiet_is_idle_for_at_least_the_quiet_time(sock: SocketState, quiet_ns: int) -> None:
    assert is_quiet(sock, NOW, quiet_ns) == (is_idle(sock) and NOW - sock.idle_ns >= quiet_ns)
    if is_quiet(sock, NOW, quiet_ns):
        assert is_quiet(sock, NOW + 1, quiet_ns)  # stays quiet while nothing happens
