"""Hypothesis strategies and helpers shared by the selection tests."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from aviator.selection import (
    BreakerPolicy,
    DampeningPolicy,
    EngineState,
    Evaluation,
    LatencyEstimate,
    Mode,
    PodInput,
    PodState,
    SelectionPolicy,
    evaluate,
)
from aviator.selection.safety import ejection_cap, serving_floor

# A few round values make ties and threshold hits likely; floats cover the rest.
p99s = st.one_of(
    st.sampled_from([1.0, 5.0, 10.0, 10.0, 50.0, 100.0, 120.0, 500.0, 2000.0]),
    st.floats(min_value=0.1, max_value=5000.0, allow_nan=False, allow_infinity=False),
)


@st.composite
def latencies(draw: st.DrawFn, *, max_age: float = 60.0) -> LatencyEstimate:
    p99 = draw(p99s)
    return LatencyEstimate(
        p50_ms=p99 * draw(st.sampled_from([0.1, 0.5, 1.0])),
        p99_ms=p99,
        rif=draw(st.integers(0, 20)),
        samples=draw(st.integers(1, 1000)),
        age_s=draw(st.floats(0.0, max_age)),
    )


@st.composite
def pod_lists(
    draw: st.DrawFn,
    *,
    min_size: int = 0,
    max_size: int = 8,
    known: bool = False,
    eligible: bool = False,
    fresh: bool | None = None,
) -> list[PodInput]:
    """Pods with unique names; `known` = every pod has data, `eligible` = all ready."""
    n = draw(st.integers(min_size, max_size))
    pods = []
    for i in range(n):
        ready = eligible or draw(st.sampled_from([True, True, True, False]))
        terminating = not eligible and draw(st.sampled_from([False, False, False, True]))
        lat = draw(latencies()) if known else draw(st.none() | latencies())
        pods.append(
            PodInput(
                name=f"pod-{i:02d}",
                ip=f"10.0.0.{i}",
                node=f"node-{i % 3}",
                ready=ready,
                terminating=terminating,
                created=float(i),
                latency=lat,
                fresh=draw(st.booleans()) if fresh is None else fresh,
            )
        )
    return pods


@st.composite
def breaker_policies(draw: st.DrawFn, enabled: bool | None = None) -> BreakerPolicy:
    return BreakerPolicy(
        enabled=draw(st.booleans()) if enabled is None else enabled,
        p99_threshold_ms=draw(st.sampled_from([10.0, 100.0, 500.0])),
        consecutive_violations=draw(st.integers(1, 4)),
        recovery_interval_s=draw(st.sampled_from([0.0, 5.0, 30.0])),
        max_ejection_percent=draw(st.sampled_from([0, 10, 34, 50, 100])),
        error_rate_percent=draw(st.sampled_from([None, 10.0, 50.0, 100.0])),
        error_rate_min_responses=draw(st.sampled_from([1, 5, 20])),
    )


@st.composite
def dampening_policies(
    draw: st.DrawFn, enabled: bool | None = None, intervals: int | None = None
) -> DampeningPolicy:
    return DampeningPolicy(
        enabled=draw(st.booleans()) if enabled is None else enabled,
        threshold_percent=draw(st.sampled_from([0.0, 10.0, 20.0, 50.0])),
        consecutive_intervals=draw(st.integers(1, 4)) if intervals is None else intervals,
    )


@st.composite
def policies(
    draw: st.DrawFn,
    *,
    modes: Sequence[Mode] = tuple(Mode),
    breaker: bool | None = None,
    dampening: bool | None = None,
    intervals: int | None = None,
    min_endpoints: int | None = None,
    staleness: bool = True,
) -> SelectionPolicy:
    """Policies; `staleness=False` never treats data as stale (for stable pod sets)."""
    return SelectionPolicy(
        mode=draw(st.sampled_from(list(modes))),
        top_n=draw(st.none() | st.integers(1, 8)),
        percentage=draw(st.none() | st.integers(1, 100)),
        latency_threshold_ms=draw(st.sampled_from([10.0, 50.0, 100.0, 1000.0])),
        rif_quantile=draw(st.sampled_from([0.5, 0.84, 1.0])),
        min_endpoints=draw(st.integers(1, 4)) if min_endpoints is None else min_endpoints,
        stale_after_s=draw(st.sampled_from([math.inf, 30.0])) if staleness else math.inf,
        breaker=draw(breaker_policies(enabled=breaker)),
        dampening=draw(dampening_policies(enabled=dampening, intervals=intervals)),
    )


@dataclass(frozen=True)
class Step:
    """One evaluation of a timeline with the inputs it was given."""

    pods: Sequence[PodInput]
    now: float
    active: frozenset[str]  # the active set before it
    state: EngineState  # the state before it
    ev: Evaluation


def run(
    timeline: Iterable[tuple[Sequence[PodInput], float]],
    policy: SelectionPolicy,
    state: EngineState | None = None,
    active: frozenset[str] = frozenset(),
) -> list[Step]:
    """Evaluate a timeline, feeding each result into the next evaluation."""
    state = state or EngineState()
    steps = []
    for pods, now in timeline:
        ev = evaluate(pods, active, policy, state, now)
        steps.append(Step(pods, now, active, state, ev))
        active, state = ev.active, ev.state
    return steps


def out_of_traffic(ev: Evaluation) -> set[str]:
    return {n for n, v in ev.pods.items() if v.state in (PodState.EJECTED, PodState.HALF_OPEN)}


def check_invariants(pods: Sequence[PodInput], policy: SelectionPolicy, ev: Evaluation) -> None:
    """What must hold after every evaluation, whatever came before."""
    eligible = {p.name for p in pods if p.eligible}
    assert set(ev.pods) == {p.name for p in pods}
    # Result is a subset of the eligible pods, and the verdicts agree with it.
    assert ev.active <= eligible
    assert ev.active == {n for n, v in ev.pods.items() if v.serving}
    # Never empty while anything is eligible; the floor holds.
    assert bool(ev.active) == bool(eligible)
    assert len(ev.active) >= serving_floor(policy.min_endpoints, len(eligible))
    # Ejections within the cap (and never more than the percentage, rounded down, or 1).
    out = out_of_traffic(ev)
    assert out <= eligible
    assert len(out) <= ejection_cap(
        policy.breaker.max_ejection_percent, len(eligible), policy.min_endpoints
    )
    if out:
        pct = policy.breaker.max_ejection_percent
        assert len(out) <= max(1, pct * len(eligible) // 100) and pct > 0
    if not policy.breaker.enabled:
        assert not out and not ev.state.breaker and not ev.conditions.overload
    # Unknown pods serve (fail open).
    for p in pods:
        if ev.pods[p.name].state is PodState.UNKNOWN:
            assert p.name in ev.active
    # Breaker records only for pods that exist; dampening never waits past its count.
    assert set(ev.state.breaker) <= {p.name for p in pods}
    assert ev.state.dampening.streak < policy.dampening.consecutive_intervals or (
        ev.state.dampening.candidate is None
    )
    assert ev.conditions.no_eligible_pods == (not eligible)
