"""Properties of the selection engine (docs/selection.md), checked with hypothesis."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Sequence

from hypothesis import given, note, settings
from hypothesis import strategies as st
from selection_strategies import (
    check_invariants,
    pod_lists,
    policies,
    run,
)

from aviator.selection import (
    BreakerStatus,
    DampeningPolicy,
    DecisionKind,
    EngineState,
    LatencyEstimate,
    Mode,
    PodInput,
    Reason,
    SelectionPolicy,
    evaluate,
    known_latency,
)
from aviator.selection.breaker import violation
from aviator.selection.engine import stalled_after_ms
from aviator.selection.safety import serving_floor

HEAVY = settings(max_examples=200, deadline=None)
MEDIUM = settings(max_examples=120, deadline=None)
LIGHT = settings(max_examples=100, deadline=None)


@st.composite
def histories(
    draw: st.DrawFn, max_pods: int = 8, max_steps: int = 8
) -> list[tuple[list[PodInput], float]]:
    """A fixed cast of pods whose latency, freshness and readiness change step by step."""
    n = draw(st.integers(0, max_pods))
    steps = draw(st.integers(1, max_steps))
    # Few latency levels so the breaker trips, recovers and hits its cap.
    level = st.sampled_from([5.0, 10.0, 90.0, 100.0, 110.0, 600.0])
    timeline = []
    lat: list[LatencyEstimate | None] = [None] * n
    fresh: list[bool] = [True] * n
    for step in range(steps):
        pods = []
        for i in range(n):
            if draw(st.integers(0, 3)) == 0:
                lat[i] = draw(
                    st.none()
                    | st.builds(
                        LatencyEstimate,
                        p50_ms=st.just(1.0),
                        p99_ms=level,
                        rif=st.integers(0, 5),
                        samples=st.sampled_from([1, 1, 1, 0]),
                        oldest_open_ms=st.sampled_from([0.0, 0.0, 0.0, 50.0, 700.0]),
                        statuses=st.sampled_from([0, 4, 30]),
                        errors=st.sampled_from([0, 2, 4]),
                    )
                )
                fresh[i] = draw(st.booleans())
            present = draw(st.integers(0, 9)) > 0
            ready = draw(st.integers(0, 9)) > 0
            # Without data, sometimes because it went silent after being measured.
            stale = lat[i] is None and draw(st.integers(0, 2)) == 0
            if present:
                pods.append(
                    PodInput(f"pod-{i}", ready=ready, latency=lat[i], fresh=fresh[i], stale=stale)
                )
        timeline.append((pods, 5.0 * step))
    return timeline


def known_pool(pods: Sequence[PodInput], policy: SelectionPolicy) -> dict[str, float]:
    """p99 of eligible pods with usable data."""
    out = {}
    for p in pods:
        lat = known_latency(p, policy.stale_after_s)
        if p.eligible and lat is not None:
            out[p.name] = lat.p99_ms
    return out


def best(pool: dict[str, float], k: int) -> set[str]:
    return set(sorted(pool, key=lambda n: (pool[n], n))[:k])


# --- Invariants over any history -----------------------------------------------------


@HEAVY
@given(policies(), histories())
def test_invariants_hold_after_every_evaluation(
    policy: SelectionPolicy, timeline: list[tuple[list[PodInput], float]]
) -> None:
    for step in run(timeline, policy):
        ev = step.ev
        check_invariants(step.pods, policy, ev)
        for d in ev.decisions:
            if d.kind is DecisionKind.EJECTED and ev.conditions.overload:
                # Overload ejects nobody new: only a failed half-open probe goes back out.
                prior = step.state.breaker.get(d.pod or "")
                assert prior is not None and prior.status is BreakerStatus.HALF_OPEN
        for p in step.pods:
            prior = step.state.breaker.get(p.name)
            if prior is None or prior.status is not BreakerStatus.HALF_OPEN:
                continue
            now_rec = ev.state.breaker.get(p.name)
            if (now_rec and now_rec.out_of_traffic) or not policy.breaker.enabled:
                continue
            # Readmitted from half-open: needs fresh samples under the threshold, unless
            # the ejection cap released it.
            lat = known_latency(p, policy.stale_after_s, stalled_after_ms(policy))
            judged = lat is not None and p.fresh and violation(lat, policy.breaker) is None
            released = any(
                d.kind is DecisionKind.READMITTED and d.pod == p.name and "cap" in d.message
                for d in ev.decisions
            )
            assert p.eligible and (judged or released)


@HEAVY
@given(policies(), histories())
def test_a_stale_pod_starts_serving_only_to_fill_the_floor(
    policy: SelectionPolicy, timeline: list[tuple[list[PodInput], float]]
) -> None:
    """Data going stale never puts a pod into traffic (an agent restarting must not
    readmit what the policy routed around); the serving floor still holds."""
    for step in run(timeline, policy):
        for p in step.pods:
            was_stale = p.stale or (
                p.latency is not None and p.latency.age_s > policy.stale_after_s
            )
            if was_stale and p.name not in step.active and p.name in step.ev.active:
                assert step.ev.pods[p.name].reason is Reason.MIN_ENDPOINTS


@MEDIUM
@given(policies(), histories(max_steps=6), st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(
    policy: SelectionPolicy, timeline: list[tuple[list[PodInput], float]], rnd: random.Random
) -> None:
    for step in run(timeline, policy):
        shuffled = list(step.pods)
        rnd.shuffle(shuffled)
        again = evaluate(shuffled, step.active, policy, step.state, step.now)
        assert again == step.ev


@LIGHT
@given(policies(), histories(max_steps=6))
def test_state_round_trips_through_json(
    policy: SelectionPolicy, timeline: list[tuple[list[PodInput], float]]
) -> None:
    for step in run(timeline, policy):
        stored = json.loads(json.dumps(step.ev.state.to_dict()))
        assert EngineState.from_dict(stored) == step.ev.state
        # A new leader continuing from the stored state decides exactly the same.
        again = evaluate(
            step.pods,
            step.active,
            policy,
            EngineState.from_dict(json.loads(json.dumps(step.state.to_dict()))),
            step.now,
        )
        assert again == step.ev


# --- What each mode selects ----------------------------------------------------------


def expected_selection(pods: Sequence[PodInput], policy: SelectionPolicy) -> set[str]:
    """An independent statement of the modes, for a first evaluation without breaker."""
    eligible = [p for p in pods if p.eligible]
    pool = known_pool(pods, policy)
    # Measured once, stale now: none serves before a first evaluation, so all stay out.
    stale = {
        p.name
        for p in eligible
        if p.name not in pool
        and (p.stale or (p.latency is not None and p.latency.age_s > policy.stale_after_s))
    }
    unknown = {p.name for p in eligible} - set(pool) - stale
    n = len(eligible)
    if policy.mode is Mode.TOP_N:
        chosen = best(pool, policy.top_n or 3)
    elif policy.mode is Mode.PERCENTAGE:
        chosen = best(pool, max(1, math.ceil((policy.percentage or 50) * n / 100)))
    elif policy.mode is Mode.THRESHOLD:
        chosen = {k for k, v in pool.items() if v <= policy.latency_threshold_ms} or best(pool, 1)
    else:
        rif = {p.name: p.latency.rif for p in eligible if p.name in pool and p.latency}
        values = list(rif.values())
        # Nearest rank: the smallest value with at least q x m values at or below it.
        q_m = policy.rif_quantile * len(values)
        cut = min((v for v in values if sum(x <= v for x in values) >= q_m - 1e-9), default=0)
        cold = {k: pool[k] for k in pool if rif[k] <= cut}
        if policy.top_n is not None:
            chosen = best(cold, policy.top_n)
        elif policy.percentage is not None:
            chosen = best(cold, max(1, math.ceil(policy.percentage * n / 100)))
        else:
            chosen = set(cold)
    serving = chosen | unknown
    floor = serving_floor(policy.min_endpoints, n)
    rest = {k: v for k, v in pool.items() if k not in serving}
    serving |= best(rest, max(0, floor - len(serving)))
    return serving | set(sorted(stale)[: max(0, floor - len(serving))])


@HEAVY
@given(policies(breaker=False), pod_lists())
def test_each_mode_selects_what_it_promises(policy: SelectionPolicy, pods: list[PodInput]) -> None:
    ev = evaluate(pods, frozenset(), policy, EngineState(), 0.0)
    assert ev.active == expected_selection(pods, policy)


@HEAVY
@given(
    policies(modes=[Mode.TOP_N], breaker=False, min_endpoints=1),
    pod_lists(known=True, eligible=True),
)
def test_top_n_size_is_min_of_n_and_eligible(policy: SelectionPolicy, pods: list[PodInput]) -> None:
    ev = evaluate(pods, frozenset(), policy, EngineState(), 0.0)
    known = known_pool(pods, policy)
    assert len(ev.active & known.keys()) == min(policy.top_n or 3, len(known))
    # Every pod was measured: the others' data went stale, and as none served before,
    # they stay out, but for the floor's one when nothing else can serve.
    stale = sorted({p.name for p in pods} - known.keys())
    assert ev.active - known.keys() == (set() if known else set(stale[:1]))


@HEAVY
@given(
    policies(modes=[Mode.PERCENTAGE], breaker=False, min_endpoints=1),
    pod_lists(min_size=1, known=True, eligible=True),
)
def test_percentage_size_is_the_ceiling_at_least_one(
    policy: SelectionPolicy, pods: list[PodInput]
) -> None:
    ev = evaluate(pods, frozenset(), policy, EngineState(), 0.0)
    share = max(1, math.ceil((policy.percentage or 50) * len(pods) / 100))
    known = known_pool(pods, policy)
    assert len(ev.active & known.keys()) == min(share, len(known))


@MEDIUM
@given(policies(modes=[Mode.TOP_N, Mode.PERCENTAGE], breaker=False, intervals=1), histories())
def test_no_standby_pod_is_faster_than_an_active_one_beyond_the_margin(
    policy: SelectionPolicy, timeline: list[tuple[list[PodInput], float]]
) -> None:
    keep = policy.dampening.keep_factor if policy.dampening.enabled else 1.0
    for step in run(timeline, policy):
        pool = known_pool(step.pods, policy)
        active = {k: v for k, v in pool.items() if k in step.ev.active}
        standby = {k: v for k, v in pool.items() if k not in step.ev.active}
        if active and standby:
            assert min(standby.values()) >= keep * max(active.values())
        if not policy.dampening.enabled:
            assert set(active) == best(pool, len(active))


# --- Dampening -----------------------------------------------------------------------


def margin_noise(threshold_percent: float) -> float:
    """Largest relative jitter that cannot beat the incumbent margin: e <= t / (2 - t)."""
    t = threshold_percent / 100
    return 0.999 * t / (2 - t)


@HEAVY
@given(
    policies(
        modes=[Mode.TOP_N, Mode.PERCENTAGE, Mode.PREQUAL],
        breaker=False,
        dampening=True,
        staleness=False,
    ),
    pod_lists(min_size=1, known=True, eligible=True),
    st.lists(st.lists(st.floats(-1.0, 1.0), min_size=8, max_size=8), min_size=1, max_size=4),
)
def test_noise_inside_the_margin_never_changes_the_set(
    policy: SelectionPolicy, pods: list[PodInput], noise: list[list[float]]
) -> None:
    eps = margin_noise(policy.dampening.threshold_percent)
    steps = run([(pods, 0.0)], policy)
    settled, state = steps[-1].ev.active, steps[-1].ev.state
    for round_ in noise:
        jittered = [
            PodInput(p.name, latency=_scaled(p.latency, 1 + eps * f))
            for p, f in zip(pods, round_, strict=False)
        ]
        ev = evaluate(jittered, settled, policy, state, 5.0)
        note(f"jittered {[(p.name, p.latency) for p in jittered]}")
        assert ev.active == settled
        state = ev.state


@MEDIUM
@given(
    policies(modes=[Mode.THRESHOLD], breaker=False, dampening=True, staleness=False),
    pod_lists(min_size=1, known=True, eligible=True),
    st.lists(st.lists(st.floats(-1.0, 1.0), min_size=8, max_size=8), min_size=1, max_size=4),
)
def test_threshold_noise_never_drops_a_pod_within_the_threshold(
    policy: SelectionPolicy, pods: list[PodInput], noise: list[list[float]]
) -> None:
    t = policy.dampening.threshold_percent / 100
    eps = 0.999 * t / (1 - t)  # an incumbent stays while p99 x (1 - t) <= threshold
    limit = policy.latency_threshold_ms
    ev = evaluate(pods, frozenset(), policy, EngineState(), 0.0)
    within = {p.name for p in pods if p.latency and p.latency.p99_ms <= limit}
    for round_ in noise:
        jittered = [
            PodInput(p.name, latency=_scaled(p.latency, 1 + eps * f))
            for p, f in zip(pods, round_, strict=False)
        ]
        ev = evaluate(jittered, ev.active, policy, ev.state, 5.0)
        assert within <= ev.active


def _scaled(lat: LatencyEstimate | None, factor: float) -> LatencyEstimate:
    assert lat is not None
    return dataclasses.replace(lat, p50_ms=lat.p50_ms * factor, p99_ms=lat.p99_ms * factor)


@HEAVY
@given(
    st.sampled_from([Mode.TOP_N, Mode.PERCENTAGE, Mode.THRESHOLD]),
    st.permutations(range(8)).flatmap(
        lambda perm: st.tuples(st.just(perm), st.integers(2, len(perm)))
    ),
    st.integers(1, 5),
    st.sampled_from([0.0, 10.0, 20.0, 45.0]),
    st.integers(1, 5),
)
def test_a_persistent_change_lands_after_exactly_n_evaluations(
    mode: Mode,
    perm_n: tuple[list[int], int],
    intervals: int,
    threshold_percent: float,
    size: int,
) -> None:
    perm, n = perm_n
    ranks = [r for r in perm if r < n]
    # Latencies a factor 2 apart, so the margin (< 50 %) never decides the order.
    before = [
        PodInput(f"p{i}", latency=LatencyEstimate(1, 10.0 * 2**r)) for i, r in enumerate(ranks)
    ]
    after = [
        PodInput(f"p{i}", latency=LatencyEstimate(1, 10.0 * 2 ** (n - 1 - r)))
        for i, r in enumerate(ranks)
    ]
    policy = SelectionPolicy(
        mode=mode,
        top_n=size,
        percentage=20 * size,
        latency_threshold_ms=10.0 * 2 ** (size - 1),
        dampening=DampeningPolicy(
            enabled=True, threshold_percent=threshold_percent, consecutive_intervals=intervals
        ),
    )
    first = evaluate(before, frozenset(), policy, EngineState(), 0.0)
    settled, state = first.active, first.state
    target = evaluate(after, frozenset(), policy, EngineState(), 0.0).active
    current = settled
    for k in range(1, intervals + 1):
        ev = evaluate(after, current, policy, state, 5.0 * k)
        current, state = ev.active, ev.state
        if k < intervals and target != settled:
            assert ev.active == settled
            assert ev.conditions.pending == target and ev.conditions.pending_streak == k
        else:
            assert ev.active == (target if k == intervals else settled)
    assert ev.active == target and ev.conditions.pending is None


@LIGHT
@given(
    policies(breaker=False, dampening=True, staleness=False),
    pod_lists(min_size=2, known=True, eligible=True),
    pod_lists(min_size=2, known=True, eligible=True),
)
def test_alternating_winners_restart_the_count(
    policy: SelectionPolicy, a: list[PodInput], b: list[PodInput]
) -> None:
    names = {p.name for p in a} & {p.name for p in b}
    a = [p for p in a if p.name in names]
    b = [p for p in b if p.name in names]
    ev = evaluate(a, frozenset(), policy, EngineState(), 0.0)
    settled = ev.active
    for k in range(6):
        ev = evaluate(b if k % 2 == 0 else a, ev.active, policy, ev.state, 5.0 * (k + 1))
        if policy.dampening.consecutive_intervals > 1:
            # b wins at most once in a row, a is the incumbent set: nothing changes.
            assert ev.active == settled
