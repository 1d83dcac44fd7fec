"""The circuit breaker's rules besides p99: open requests (a pod that stopped answering)
and the error rate with its minimum-response guard (aviator.selection.breaker)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.selection import (
    BreakerPolicy,
    DampeningPolicy,
    DecisionKind,
    EngineState,
    LatencyEstimate,
    PodInput,
    PodState,
    Reason,
    SelectionPolicy,
    evaluate,
)
from aviator.selection.breaker import violation
from aviator.selection.safety import ejection_cap
from aviator.selection.state import BreakerRecord

FAST = LatencyEstimate(p50_ms=5.0, p99_ms=10.0, statuses=100, errors=1)


def policy(**breaker: object) -> SelectionPolicy:
    settings_ = {"enabled": True, "p99_threshold_ms": 500.0, "consecutive_violations": 3}
    settings_.update(breaker)
    return SelectionPolicy(
        breaker=BreakerPolicy(**settings_),  # type: ignore[arg-type]
        dampening=DampeningPolicy(enabled=False),
        percentage=100,
    )


def pods(bad: LatencyEstimate, n: int = 4) -> list[PodInput]:
    return [PodInput("bad", latency=bad)] + [PodInput(f"ok-{i}", latency=FAST) for i in range(n)]


def test_an_open_request_older_than_the_threshold_ejects_at_the_first_evaluation() -> None:
    stalled = LatencyEstimate(p50_ms=5.0, p99_ms=10.0, oldest_open_ms=501.0)
    ev = evaluate(pods(stalled), frozenset(), policy(), EngineState(), 0.0)
    assert ev.pods["bad"].state is PodState.EJECTED
    assert ev.pods["bad"].reason is Reason.OPEN_REQUEST_ABOVE_THRESHOLD
    (ejected,) = [d for d in ev.decisions if d.kind is DecisionKind.EJECTED]
    assert "open for 501 ms" in ejected.message
    # At the threshold it is not (yet) a violation.
    edge = LatencyEstimate(p50_ms=5.0, p99_ms=10.0, oldest_open_ms=500.0)
    assert evaluate(pods(edge), frozenset(), policy(), EngineState(), 0.0).pods["bad"].serving


def test_a_pod_that_never_answered_is_stalled_not_unknown() -> None:
    # No completed sample at all: the store gives the open request's age as quantiles.
    never = LatencyEstimate(p50_ms=900.0, p99_ms=900.0, samples=0, oldest_open_ms=900.0)
    ev = evaluate(pods(never), frozenset(), policy(), EngineState(), 0.0)
    assert ev.pods["bad"].reason is Reason.OPEN_REQUEST_ABOVE_THRESHOLD
    # Breaker off: such a pod is unknown (fail open), never ranked fast.
    off = evaluate(pods(never), frozenset(), policy(enabled=False), EngineState(), 0.0)
    assert off.pods["bad"].state is PodState.UNKNOWN
    # Young open request, nothing completed: unknown, as before.
    young = LatencyEstimate(p50_ms=3.0, p99_ms=3.0, samples=0, oldest_open_ms=3.0)
    ev = evaluate(pods(young), frozenset(), policy(), EngineState(), 0.0)
    assert ev.pods["bad"].state is PodState.UNKNOWN


def test_the_error_rule_counts_consecutive_evaluations_and_names_its_cause() -> None:
    failing = LatencyEstimate(p50_ms=5.0, p99_ms=10.0, statuses=40, errors=20)
    pol = policy(error_rate_percent=50.0, error_rate_min_responses=20)
    state, active = EngineState(), frozenset[str]()
    for i in range(3):
        ev = evaluate(pods(failing), active, pol, state, float(i))
        state, active = ev.state, ev.active
        assert (ev.pods["bad"].state is PodState.EJECTED) == (i == 2)
    assert ev.pods["bad"].reason is Reason.ERROR_RATE_ABOVE_THRESHOLD
    (ejected,) = [d for d in ev.decisions if d.kind is DecisionKind.EJECTED]
    assert "50.0 % errors of 40 responses" in ejected.message
    # The cause survives the state's JSON form.
    assert EngineState.from_dict(state.to_dict()) == state


def test_one_error_in_two_requests_does_not_eject() -> None:
    pol = policy(error_rate_percent=50.0, consecutive_violations=1)
    few = LatencyEstimate(p50_ms=5.0, p99_ms=10.0, statuses=2, errors=1)
    assert violation(few, pol.breaker) is None
    ev = evaluate(pods(few), frozenset(), pol, EngineState(), 0.0)
    assert ev.pods["bad"].serving


def test_the_error_rule_is_off_unless_set() -> None:
    all_errors = LatencyEstimate(p50_ms=5.0, p99_ms=10.0, statuses=1000, errors=1000)
    assert violation(all_errors, policy().breaker) is None
    assert violation(all_errors, policy(error_rate_percent=100.0).breaker) is not None


def test_an_error_ejected_pod_is_readmitted_by_the_breakers_rules() -> None:
    pol = policy(error_rate_percent=50.0, consecutive_violations=1, recovery_interval_s=10.0)
    failing = LatencyEstimate(p50_ms=5.0, p99_ms=10.0, statuses=40, errors=20)
    ev = evaluate(pods(failing), frozenset(), pol, EngineState(), 0.0)
    assert ev.pods["bad"].state is PodState.EJECTED
    # Recovery wait elapsed: half-open; still failing on fresh data -> open again.
    ev = evaluate(pods(failing), ev.active, pol, ev.state, 10.0)
    assert ev.pods["bad"].state is PodState.HALF_OPEN
    ev = evaluate(pods(failing), ev.active, pol, ev.state, 11.0)
    assert ev.pods["bad"].state is PodState.EJECTED
    assert ev.state.breaker["bad"].level == 2
    # Waits twice as long, then recovers on fresh, healthy data.
    ev = evaluate(pods(FAST), ev.active, pol, ev.state, 31.0)
    assert ev.pods["bad"].state is PodState.HALF_OPEN
    ev = evaluate(pods(FAST), ev.active, pol, ev.state, 32.0)
    assert ev.pods["bad"].state is PodState.ACTIVE
    assert any(d.kind is DecisionKind.READMITTED for d in ev.decisions)


def test_an_older_state_without_a_cause_reads_as_p99() -> None:
    record = BreakerRecord.from_dict({"status": "open", "since": 0.0, "level": 1})
    assert record.cause == ""
    state = EngineState(evaluated=True, breaker={"bad": record})
    ev = evaluate(pods(FAST), frozenset(), policy(), state, 1.0)
    assert ev.pods["bad"].reason is Reason.P99_ABOVE_THRESHOLD


estimates = st.builds(
    LatencyEstimate,
    p50_ms=st.just(1.0),
    p99_ms=st.sampled_from([10.0, 600.0]),
    samples=st.sampled_from([0, 1, 50]),
    oldest_open_ms=st.sampled_from([0.0, 100.0, 501.0, 5000.0]),
    statuses=st.integers(0, 60),
    errors=st.integers(0, 60),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(estimates, min_size=1, max_size=8),
    st.sampled_from([None, 10.0, 50.0, 100.0]),
    st.integers(1, 30),
    st.sampled_from([0, 25, 50, 100]),
)
def test_first_evaluation_ejects_only_stalled_pods_within_the_cap(
    lats: list[LatencyEstimate], rate: float | None, min_responses: int, cap_percent: int
) -> None:
    """From a fresh state with consecutiveViolations > 1, only rule 1 (an open request
    older than the threshold) can eject; the cap and overload still hold; the error
    rule never fires on fewer than the minimum responses."""
    pol = policy(
        error_rate_percent=rate,
        error_rate_min_responses=min_responses,
        consecutive_violations=2,
        max_ejection_percent=cap_percent,
    )
    inputs = [PodInput(f"p{i}", latency=lat) for i, lat in enumerate(lats)]
    ev = evaluate(inputs, frozenset(), pol, EngineState(), 0.0)
    ejected = {n for n, v in ev.pods.items() if v.state is PodState.EJECTED}
    stalled = {p.name for p in inputs if p.latency and p.latency.oldest_open_ms > 500.0}
    assert ejected <= stalled
    assert len(ejected) <= ejection_cap(cap_percent, len(inputs), 1)
    if ev.conditions.overload:
        assert not ejected
    elif stalled and ejection_cap(cap_percent, len(inputs), 1) > 0:
        assert ejected  # the worst stalled pods go at once
        worst = max(stalled, key=lambda n: (lats[int(n[1:])].oldest_open_ms, n))
        assert any(
            lats[int(n[1:])].oldest_open_ms == lats[int(worst[1:])].oldest_open_ms for n in ejected
        )
    for p in inputs:
        assert p.latency is not None
        if p.latency.statuses < min_responses:
            assert violation(p.latency, pol.breaker) is not Reason.ERROR_RATE_ABOVE_THRESHOLD
