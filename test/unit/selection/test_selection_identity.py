"""What the engine remembers about a pod is filed under its identity (uid), not its
name: a pod recreated under the same name (a StatefulSet's) starts afresh, and a state
written under names (version 1) still reads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.selection import (
    BreakerPolicy,
    BreakerStatus,
    DampeningPolicy,
    EngineState,
    LatencyEstimate,
    Mode,
    PodInput,
    PodState,
    SelectionPolicy,
    evaluate,
)

BREAKER = SelectionPolicy(
    mode=Mode.PERCENTAGE,
    percentage=100,
    breaker=BreakerPolicy(enabled=True, p99_threshold_ms=100.0, consecutive_violations=1),
    dampening=DampeningPolicy(enabled=False),
)


def pod(name: str, p99: float, uid: str) -> PodInput:
    return PodInput(name, latency=LatencyEstimate(p99 / 2, p99), uid=uid)


def test_a_recreated_pod_does_not_inherit_an_ejection() -> None:
    healthy = [pod("web-0", 10, "u0"), pod("web-1", 10, "u1"), pod("web-2", 10, "u2")]
    first = evaluate([*healthy, pod("web-3", 900, "old")], frozenset(), BREAKER, EngineState(), 0)
    assert first.pods["web-3"].state is PodState.EJECTED
    assert set(first.state.breaker) == {"old"}  # filed under the uid
    # The StatefulSet recreates web-3: same name, new uid, healthy.
    again = [*healthy, pod("web-3", 10, "new")]
    second = evaluate(again, first.active, BREAKER, first.state, 1)
    assert second.pods["web-3"].state is PodState.ACTIVE and "web-3" in second.active
    assert second.state.breaker == {}  # the old pod's record went with it
    # The same pod (same uid) stays ejected.
    same = evaluate([*healthy, pod("web-3", 10, "old")], first.active, BREAKER, first.state, 1)
    assert same.pods["web-3"].state is PodState.EJECTED


def test_a_pending_dampened_set_with_a_recreated_pod_starts_over() -> None:
    policy = SelectionPolicy(
        mode=Mode.TOP_N,
        top_n=1,
        dampening=DampeningPolicy(enabled=True, threshold_percent=10, consecutive_intervals=3),
    )
    a, b = pod("a", 100, "ua"), pod("b", 10, "ub")
    ev = evaluate([a, b], frozenset(), policy, EngineState(), 0)
    ev = evaluate([pod("a", 10, "ua"), pod("b", 100, "ub")], ev.active, policy, ev.state, 1)
    assert ev.state.dampening.candidate == frozenset({"ua"}) and ev.state.dampening.streak == 1
    # "a" is recreated: the set waiting to win named the old pod; the count restarts.
    ev = evaluate([pod("a", 10, "ua2"), pod("b", 100, "ub")], ev.active, policy, ev.state, 2)
    assert ev.state.dampening.candidate == frozenset({"ua2"}) and ev.state.dampening.streak == 1


def test_a_version_1_state_is_read_by_name_and_written_by_uid() -> None:
    v1 = {"version": 1, "evaluated": True, "breaker": {"web-3": {"status": "open", "since": 0}}}
    state = EngineState.from_dict(v1)
    assert state.by_name
    pods = [pod("web-0", 10, "u0"), pod("web-1", 10, "u1"), pod("web-3", 10, "u3")]
    ev = evaluate(pods, frozenset(), BREAKER, state, 1)
    assert ev.pods["web-3"].state is PodState.EJECTED
    written = ev.state.to_dict()
    assert written["version"] == 2 and set(written["breaker"]) == {"u3"}
    assert not EngineState.from_dict(written).by_name


def test_without_a_uid_the_name_is_the_identity() -> None:
    pods = [PodInput("a", latency=LatencyEstimate(5, 900)), PodInput("b"), PodInput("c")]
    ev = evaluate(pods, frozenset(), BREAKER, EngineState(), 0)
    assert ev.state.breaker["a"].status is BreakerStatus.OPEN


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=12))
def test_renaming_uids_changes_nothing_but_the_keys(slow_pods: list[str]) -> None:
    """The engine decides by name and latency; uids only file its memory."""
    state_by_name, state_by_uid = EngineState(), EngineState()
    active_a: frozenset[str] = frozenset()
    active_b: frozenset[str] = frozenset()
    for i, slow in enumerate(slow_pods):
        lat = {n: (900.0 if n == slow else 10.0) for n in "abcd"}
        plain = [PodInput(n, latency=LatencyEstimate(1, lat[n])) for n in "abcd"]
        with_uid = [pod(n, lat[n], f"uid-{n}") for n in "abcd"]
        a = evaluate(plain, active_a, BREAKER, state_by_name, float(i))
        b = evaluate(with_uid, active_b, BREAKER, state_by_uid, float(i))
        assert a.active == b.active and a.pods == b.pods
        assert {f"uid-{n}": r for n, r in a.state.breaker.items()} == dict(b.state.breaker)
        state_by_name, state_by_uid, active_a, active_b = a.state, b.state, a.active, b.active
