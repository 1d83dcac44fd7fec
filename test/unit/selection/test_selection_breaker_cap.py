"""A full ejection cap does not keep a stalled pod in traffic (aviator.selection.breaker):
a pod with a request open past the threshold takes the place of a pod held out that has
none now; no other rule displaces, so pods judged on keep-warm probes while held out do
not trade places."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from aviator.selection import (
    BreakerPolicy,
    DampeningPolicy,
    DecisionKind,
    EngineState,
    LatencyEstimate,
    Mode,
    PodInput,
    Reason,
    SelectionPolicy,
    evaluate,
)
from aviator.selection.breaker import step, violation
from aviator.selection.safety import ejection_cap, is_overloaded
from aviator.selection.state import BreakerRecord, BreakerStatus

BREAKER = BreakerPolicy(
    enabled=True, p99_threshold_ms=500.0, consecutive_violations=3, recovery_interval_s=30.0
)
FAST = LatencyEstimate(p50_ms=10.0, p99_ms=10.0, samples=50)
# Pods answering at the threshold: their keep-warm p99 sits just under it, and a late
# scheduling of one answer puts a request past it now and then.
MARGINAL = LatencyEstimate(p50_ms=499.7, p99_ms=499.7, samples=6, keepwarm=6)
CAUGHT = LatencyEstimate(p50_ms=499.7, p99_ms=499.7, samples=6, keepwarm=6, oldest_open_ms=502.0)
HUNG = LatencyEstimate(p50_ms=2000.0, p99_ms=2000.0, samples=10, oldest_open_ms=1500.0)


def quickstart_policy() -> SelectionPolicy:
    return SelectionPolicy(
        mode=Mode.PERCENTAGE,
        percentage=50,
        breaker=BREAKER,
        dampening=DampeningPolicy(enabled=True, threshold_percent=20, consecutive_intervals=2),
    )


def test_two_marginal_pods_holding_the_cap_do_not_keep_a_hung_pod_serving() -> None:
    """Two fast pods, two at the threshold (each caught once with a request just past
    it, then again when half-open: 60 s waits); then a fast pod hangs. It leaves at
    once, and one marginal pod comes back in its place (it behaves now)."""
    pol = quickstart_policy()
    state, active = EngineState(), frozenset[str]()
    caught_at = {"slow-a": {5, 36}, "slow-b": {12, 43}}
    hung_at = 60
    for t in range(0, hung_at + 1):
        pods = [
            PodInput("fast-a", latency=HUNG if t >= hung_at else FAST),
            PodInput("fast-b", latency=FAST),
        ] + [
            PodInput(name, latency=CAUGHT if t in at else MARGINAL)
            for name, at in caught_at.items()
        ]
        ev = evaluate(pods, active, pol, state, float(t))
        state, active = ev.state, ev.active
        if t == hung_at - 1:
            # The cap (2 of 4) is held by the marginal pods.
            assert {n for n, p in ev.pods.items() if not p.serving} == {"slow-a", "slow-b"}
    assert "fast-a" not in active, ev.pods
    ejected = [d.pod for d in ev.decisions if d.kind is DecisionKind.EJECTED]
    (released,) = [d for d in ev.decisions if d.kind is DecisionKind.READMITTED]
    assert ejected == ["fast-a"]
    assert released.pod == "slow-a" and "room for fast-a" in released.message
    assert active == {"fast-b", "slow-a"}
    # Its backoff is kept: caught again, it waits as long as it would have.
    assert state.breaker["slow-a"].level == 2


def _held(level: int = 1, reason: str = "P99AboveThreshold") -> BreakerRecord:
    return BreakerRecord(BreakerStatus.OPEN, 0, 0.0, level, reason)


CAP_2_OF_6 = replace(BREAKER, max_ejection_percent=34)
SLOW = LatencyEstimate(p50_ms=600.0, p99_ms=600.0, samples=50)
SLOWER = LatencyEstimate(p50_ms=3000.0, p99_ms=3000.0, samples=50)


def test_only_a_stalled_pod_displaces_and_the_least_slow_goes_back() -> None:
    eligible = [PodInput(n) for n in "abcdef"]
    latency = {n: FAST for n in "abcdef"} | {"a": SLOW, "b": SLOWER, "c": SLOWER}
    records = {"a": _held(), "b": _held(), "c": BreakerRecord(violations=2)}
    out = step(eligible, latency, CAP_2_OF_6, records, 10.0, 1)
    assert not out.overload
    assert out.out_of_traffic == {"a", "b"} and not out.readmitted  # c waits for room
    latency["c"] = HUNG
    out = step(eligible, latency, CAP_2_OF_6, records, 10.0, 1)
    assert out.out_of_traffic == {"b", "c"} and out.readmitted == {"a"}
    assert out.records["a"].status is BreakerStatus.CLOSED and out.records["a"].level == 1


def test_a_pod_held_out_that_looks_healthy_is_not_displaced_by_a_slow_one() -> None:
    """Held out, a pod slow only under load is measured by keep-warm probes alone and
    looks fast; a p99 (or error-rate) candidate taking its place would have the two
    trade places at every evaluation."""
    eligible = [PodInput(n) for n in "abcd"]
    latency = {"a": FAST, "b": SLOW, "c": FAST, "d": FAST}
    cap_1 = replace(BREAKER, max_ejection_percent=25, error_rate_percent=50.0)
    records = {"a": _held(), "b": BreakerRecord(violations=2)}
    out = step(eligible, latency, cap_1, records, 10.0, 1)
    assert out.out_of_traffic == {"a"} and not out.readmitted
    latency["b"] = LatencyEstimate(p50_ms=5.0, p99_ms=10.0, statuses=40, errors=30)
    out = step(eligible, latency, cap_1, records, 10.0, 1)
    assert out.out_of_traffic == {"a"} and not out.readmitted


def test_two_pods_slow_only_under_load_do_not_trade_places() -> None:
    """Each answers in 600 ms while it serves and in 200 ms while held out; the cap
    holds one. Over five minutes the breaker moves them no more than its recovery
    waits allow (the first version of this rule swapped them every 3 s)."""
    pol = SelectionPolicy(
        mode=Mode.PERCENTAGE,
        percentage=100,
        breaker=replace(BREAKER, max_ejection_percent=25),
        dampening=DampeningPolicy(enabled=True),
    )
    held_out = LatencyEstimate(p50_ms=200.0, p99_ms=200.0, samples=6, keepwarm=6)
    state, active = EngineState(), frozenset[str]()
    changes = 0
    for t in range(300):
        pods = [PodInput("fa", latency=FAST), PodInput("fb", latency=FAST)] + [
            PodInput(n, latency=SLOW if n in active or t == 0 else held_out) for n in ("sa", "sb")
        ]
        ev = evaluate(pods, active, pol, state, float(t))
        changes += ev.active != active
        state, active = ev.state, ev.active
    assert changes <= 10, changes


def test_a_pod_sent_back_out_in_this_evaluation_keeps_its_place() -> None:
    """A half-open pod found still slow goes back out; a stalled pod in the same
    evaluation does not release it at once (two contradicting Events, a level counted
    for nothing): it waits for the next evaluation."""
    eligible = [PodInput(n) for n in "abcd"]
    latency = {"a": SLOW, "b": HUNG, "c": FAST, "d": FAST}
    half_open = BreakerRecord(BreakerStatus.HALF_OPEN, 0, 5.0, 2, "P99AboveThreshold")
    cap_1 = replace(BREAKER, max_ejection_percent=25)
    out = step(eligible, latency, cap_1, {"a": half_open}, 10.0, 1)
    assert out.out_of_traffic == {"a"} and not out.readmitted
    assert out.records["a"].level == 3
    nxt = step(eligible, latency, cap_1, out.records, 11.0, 1)
    assert nxt.out_of_traffic == {"b"} and nxt.readmitted == {"a"}


def test_a_pod_held_out_with_nothing_known_now_keeps_its_place() -> None:
    eligible = [PodInput(n) for n in ("a", "b", "c", "d")]
    latency = {"a": None, "b": None, "c": HUNG, "d": FAST}
    records = {"a": _held(), "b": _held()}
    out = step(eligible, latency, BREAKER, records, 10.0, 1)
    assert out.out_of_traffic == {"a", "b"} and not out.readmitted


ESTIMATES = st.sampled_from([FAST, MARGINAL, CAUGHT, HUNG, None]) | st.builds(
    LatencyEstimate,
    p50_ms=st.just(1.0),
    p99_ms=st.floats(1.0, 3000.0),
    samples=st.just(20),
    oldest_open_ms=st.sampled_from([0.0, 400.0, 800.0]),
    statuses=st.just(40),
    errors=st.integers(0, 40),
)


@given(
    st.lists(
        st.tuples(ESTIMATES, st.sampled_from(["closed", "open", "halfOpen"])),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 100),
)
def test_a_stalled_pod_stays_in_traffic_only_if_every_pod_held_out_is_stalled_or_unknown(
    pods: list[tuple[LatencyEstimate | None, str]], cap_percent: int
) -> None:
    """After a step without overload and with the cap full, a pod left in traffic with a
    request open past the threshold means every pod that was held out before the step
    (and not sent back out in it) is stalled too, or unknown; only stalled pods took
    anyone's place; the cap holds."""
    breaker = BreakerPolicy(
        enabled=True,
        p99_threshold_ms=500.0,
        consecutive_violations=1,
        error_rate_percent=50.0,
        max_ejection_percent=cap_percent,
    )
    eligible = [PodInput(f"p{i}") for i in range(len(pods))]
    latency = {f"p{i}": lat for i, (lat, _) in enumerate(pods)}
    status = {"open": BreakerStatus.OPEN, "halfOpen": BreakerStatus.HALF_OPEN}
    records = {
        f"p{i}": BreakerRecord(status[s], 0, 9.0, 1, "P99AboveThreshold")
        for i, (_, s) in enumerate(pods)
        if s in status
    }
    cap = ejection_cap(cap_percent, len(eligible), 1)
    held_before = {n for n, r in records.items() if r.out_of_traffic}
    out = step(eligible, latency, breaker, records, 10.0, 1)
    if len(held_before) > cap or is_overloaded(
        sum(violation(lat, breaker) is not None for lat in latency.values()), len(eligible)
    ):
        return  # the cap's release path and overload are other rules' business
    assert len(out.out_of_traffic) <= cap
    stalled = Reason.OPEN_REQUEST_ABOVE_THRESHOLD
    sent_back = {d.pod for d in out.decisions if d.kind is DecisionKind.EJECTED} & held_before
    released = {d.pod for d in out.decisions if "room for" in d.message}
    newly_out = out.out_of_traffic - held_before
    # Each pod released made room for a stalled one.
    assert len(released) <= sum(violation(latency[n], breaker) is stalled for n in newly_out)
    left_stalled = [
        n
        for n in latency
        if n not in out.out_of_traffic
        and n not in held_before
        and violation(latency[n], breaker) is stalled
    ]
    if left_stalled:
        for name in (out.out_of_traffic & held_before) - sent_back:
            lat = latency[name]
            assert lat is None or violation(lat, breaker) is stalled, (name, out)
