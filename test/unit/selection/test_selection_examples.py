"""Worked examples: the product sheet's scenarios and each rule on a small case."""

from __future__ import annotations

import pytest

from aviator.selection import (
    BreakerPolicy,
    BreakerStatus,
    DampeningPolicy,
    DecisionKind,
    EngineState,
    Evaluation,
    LatencyEstimate,
    Mode,
    PodInput,
    PodState,
    PodVerdict,
    Reason,
    SelectionPolicy,
    evaluate,
)
from aviator.selection.modes import hot_threshold


def pod(
    name: str,
    p99: float | None,
    *,
    rif: int = 0,
    fresh: bool = True,
    age: float = 0.0,
    ready: bool = True,
    terminating: bool = False,
    stale: bool = False,
) -> PodInput:
    lat = None if p99 is None else LatencyEstimate(p99 / 2, p99, rif=rif, age_s=age)
    return PodInput(
        name, ready=ready, terminating=terminating, latency=lat, fresh=fresh, stale=stale
    )


def once(pods: list[PodInput], policy: SelectionPolicy) -> Evaluation:
    return evaluate(pods, frozenset(), policy, EngineState(), 0.0)


class Timeline:
    """Feeds evaluations one after another, carrying the active set and the state."""

    def __init__(self, policy: SelectionPolicy, interval: float = 5.0) -> None:
        self.policy = policy
        self.interval = interval
        self.now = 0.0
        self.active: frozenset[str] = frozenset()
        self.state = EngineState()

    def step(self, pods: list[PodInput]) -> Evaluation:
        ev = evaluate(pods, self.active, self.policy, self.state, self.now)
        self.active, self.state = ev.active, ev.state
        self.now += self.interval
        return ev


# --- The product sheet ---------------------------------------------------------------


def test_two_fast_two_slow_percentage_50_selects_the_fast_pair() -> None:
    pods = [pod("fast-a", 10), pod("slow-a", 500), pod("fast-b", 10), pod("slow-b", 500)]
    policy = SelectionPolicy(mode=Mode.PERCENTAGE, percentage=50)
    ev = once(pods, policy)
    assert ev.active == {"fast-a", "fast-b"}
    assert ev.pods["slow-a"] == ev.pods["slow-b"]
    assert ev.pods["slow-a"].state is PodState.STANDBY
    assert [d.kind for d in ev.decisions] == [DecisionKind.SET_CHANGED]
    assert ev.decisions[0].added == ("fast-a", "fast-b")


def test_breaker_with_three_violations_ejects_on_the_third_not_the_second() -> None:
    policy = SelectionPolicy(
        mode=Mode.PERCENTAGE,
        percentage=100,
        breaker=BreakerPolicy(enabled=True, p99_threshold_ms=500, consecutive_violations=3),
    )
    t = Timeline(policy)
    pods = [pod("a", 10), pod("b", 10), pod("c", 10), pod("slow", 900)]
    for _ in range(2):
        ev = t.step(pods)
        assert "slow" in ev.active
        assert not any(d.kind is DecisionKind.EJECTED for d in ev.decisions)
    ev = t.step(pods)
    assert "slow" not in ev.active
    assert ev.pods["slow"] == PodVerdict(PodState.EJECTED, Reason.P99_ABOVE_THRESHOLD)
    ejected = [d for d in ev.decisions if d.kind is DecisionKind.EJECTED]
    assert [d.pod for d in ejected] == ["slow"]
    assert "3 consecutive" in ejected[0].message


# --- Modes ---------------------------------------------------------------------------


def test_top_n_takes_the_n_fastest_with_ties_by_name() -> None:
    pods = [pod("d", 10), pod("c", 10), pod("b", 20), pod("a", 30)]
    assert once(pods, SelectionPolicy(mode=Mode.TOP_N, top_n=1)).active == {"c"}
    assert once(pods, SelectionPolicy(mode=Mode.TOP_N, top_n=3)).active == {"b", "c", "d"}
    assert once(pods, SelectionPolicy(mode=Mode.TOP_N, top_n=8)).active == {"a", "b", "c", "d"}
    assert once(pods, SelectionPolicy(mode=Mode.TOP_N)).active == {"b", "c", "d"}  # default 3


@pytest.mark.parametrize(("percentage", "size"), [(1, 1), (25, 1), (26, 2), (50, 2), (100, 4)])
def test_percentage_is_the_ceiling_and_at_least_one(percentage: int, size: int) -> None:
    pods = [pod(f"p{i}", 10.0 * (i + 1)) for i in range(4)]
    ev = once(pods, SelectionPolicy(mode=Mode.PERCENTAGE, percentage=percentage))
    assert ev.active == {f"p{i}" for i in range(size)}


def test_threshold_keeps_pods_within_it_or_else_the_single_fastest() -> None:
    pods = [pod("a", 80), pod("b", 100), pod("c", 101)]
    policy = SelectionPolicy(mode=Mode.THRESHOLD, latency_threshold_ms=100)
    ev = once(pods, policy)
    assert ev.active == {"a", "b"}
    assert ev.pods["c"].reason is Reason.OVER_THRESHOLD
    slow = [pod("a", 300), pod("b", 200), pod("c", 400)]
    ev = once(slow, policy)
    assert ev.active == {"b"}
    assert ev.pods["b"].reason is Reason.FASTEST_FALLBACK


def test_prequal_skips_hot_pods_and_takes_the_fastest_cold_ones() -> None:
    # RIFs 0..9: the 0.84 nearest-rank quantile is the 9th value (8), so only rif 9 is hot.
    pods = [pod(f"p{i}", 10.0 + i, rif=i) for i in range(10)]
    pods[9] = pod("p9", 1.0, rif=9)  # the fastest pod, but hot
    ev = once(pods, SelectionPolicy(mode=Mode.PREQUAL))
    assert ev.pods["p9"] == PodVerdict(PodState.STANDBY, Reason.HOT)
    assert ev.active == {f"p{i}" for i in range(9)}
    ev = once(pods, SelectionPolicy(mode=Mode.PREQUAL, top_n=2))
    assert ev.active == {"p0", "p1"}
    ev = once(pods, SelectionPolicy(mode=Mode.PREQUAL, percentage=30))
    assert ev.active == {"p0", "p1", "p2"}


def test_prequal_quantile_is_nearest_rank() -> None:
    assert hot_threshold([5, 1, 3], 1.0) == 5
    assert hot_threshold([5, 1, 3], 0.5) == 3
    assert hot_threshold(list(range(25)), 0.84) == 20  # 0.84 x 25 = 21 exactly
    assert hot_threshold([7], 0.01) == 7


# --- Unknown, stale, ineligible ------------------------------------------------------


def test_unknown_pods_serve_and_take_no_slot_stale_ones_keep_their_place() -> None:
    pods = [
        pod("a", 10),
        pod("b", 20),
        pod("new", None),
        pod("old", 1.0, age=30.5),  # measured, then silent: not serving now, stays out
        pod("was", 1.0, age=31.0),  # the same, serving now: stays in
        pod("told", None, stale=True),  # the caller says its data went stale
        pod("edge", 30.0, age=30.0),  # exactly at the bound: still usable, and slow
    ]
    policy = SelectionPolicy(mode=Mode.TOP_N, top_n=1, stale_after_s=30)
    ev = evaluate(pods, frozenset({"was", "b"}), policy, EngineState(), 0.0)
    assert ev.active == {"a", "new", "was"}
    assert ev.pods["edge"].state is PodState.STANDBY
    assert ev.pods["was"] == ev.pods["new"]
    assert ev.pods["new"] == PodVerdict(PodState.UNKNOWN, Reason.NO_LATENCY_DATA)
    assert ev.pods["old"] == ev.pods["told"]
    assert ev.pods["old"] == PodVerdict(PodState.STANDBY, Reason.LATENCY_STALE)
    assert not ev.conditions.no_latency_data


def test_stale_pods_kept_out_still_fill_the_serving_floor_last() -> None:
    pods = [pod("a", None, stale=True), pod("b", 5.0, age=99.0), pod("c", 70.0)]
    policy = SelectionPolicy(mode=Mode.TOP_N, top_n=1, min_endpoints=2, stale_after_s=30)
    ev = evaluate(pods, frozenset(), policy, EngineState(), 0.0)
    assert ev.active == {"a", "c"}  # c measured first, then the stale ones by name
    assert ev.pods["a"] == PodVerdict(PodState.UNKNOWN, Reason.MIN_ENDPOINTS)
    assert ev.pods["b"] == PodVerdict(PodState.STANDBY, Reason.LATENCY_STALE)
    every_pod_stale = [pod("a", None, stale=True), pod("b", None, stale=True)]
    assert once(every_pod_stale, SelectionPolicy()).active == {"a"}


def test_an_agent_restart_does_not_put_routed_around_pods_back() -> None:
    """The quick-start: two fast pods serve, two slow ones stand by; their node's agent
    goes away for longer than the staleness bound, then reports again."""
    policy = SelectionPolicy(mode=Mode.PERCENTAGE, percentage=50, stale_after_s=10)
    t = Timeline(policy, interval=1.0)
    measured = [pod("f1", 10), pod("f2", 12), pod("s1", 500), pod("s2", 510)]
    assert t.step(measured).active == {"f1", "f2"}
    silent = [pod(p.name, None, stale=True) for p in measured]
    for _ in range(5):
        assert t.step(silent).active == {"f1", "f2"}
    assert t.step(measured).active == {"f1", "f2"}
    forgotten = [pod(p.name, None) for p in measured]  # never measured, as far as we know
    assert t.step(forgotten).active == {"f1", "f2", "s1", "s2"}


def test_ineligible_pods_never_serve() -> None:
    pods = [pod("a", 1, ready=False), pod("b", 1, terminating=True), pod("c", 900)]
    ev = evaluate(pods, frozenset({"a", "b"}), SelectionPolicy(), EngineState(), 0.0)
    assert ev.active == {"c"}
    assert ev.pods["a"].reason is Reason.NOT_READY
    assert ev.pods["b"].reason is Reason.TERMINATING
    changed = [d for d in ev.decisions if d.kind is DecisionKind.SET_CHANGED]
    assert changed[0].removed == ("a", "b") and changed[0].added == ("c",)


def test_no_eligible_pods_gives_an_empty_set_and_a_condition() -> None:
    ev = once([pod("a", 1, ready=False)], SelectionPolicy())
    assert ev.active == frozenset()
    assert ev.conditions.no_eligible_pods
    ev = once([pod("a", None)], SelectionPolicy())
    assert ev.conditions.no_latency_data and ev.active == {"a"}


def test_min_endpoints_floor_adds_the_next_best() -> None:
    pods = [pod("a", 10), pod("b", 20), pod("c", 30)]
    ev = once(pods, SelectionPolicy(mode=Mode.TOP_N, top_n=1, min_endpoints=2))
    assert ev.active == {"a", "b"}
    assert ev.pods["b"].reason is Reason.MIN_ENDPOINTS


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        once([pod("a", 1), pod("a", 2)], SelectionPolicy())


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        SelectionPolicy(top_n=0)
    with pytest.raises(ValueError):
        SelectionPolicy(percentage=101)
    with pytest.raises(ValueError):
        SelectionPolicy(rif_quantile=0)
    with pytest.raises(ValueError):
        BreakerPolicy(max_ejection_percent=101)
    with pytest.raises(ValueError):
        DampeningPolicy(consecutive_intervals=0)


# --- Circuit breaker -----------------------------------------------------------------


def breaker_policy(**kw: object) -> SelectionPolicy:
    cfg = {"enabled": True, "p99_threshold_ms": 100.0, "consecutive_violations": 2}
    cfg.update(kw)
    return SelectionPolicy(
        mode=Mode.PERCENTAGE,
        percentage=100,
        breaker=BreakerPolicy(**cfg),  # type: ignore[arg-type]
        dampening=DampeningPolicy(enabled=False),
    )


def test_evaluations_without_fresh_samples_do_not_count() -> None:
    t = Timeline(breaker_policy())
    healthy = [pod("a", 10), pod("b", 10), pod("c", 10)]
    t.step([*healthy, pod("s", 900)])
    for _ in range(5):
        ev = t.step([*healthy, pod("s", 900, fresh=False)])
        assert "s" in ev.active
    ev = t.step([*healthy, pod("s", 900)])
    assert ev.pods["s"].state is PodState.EJECTED


def test_half_open_readmission_needs_fresh_samples_under_the_threshold() -> None:
    t = Timeline(breaker_policy(recovery_interval_s=30.0, consecutive_violations=1))
    healthy = [pod("a", 10), pod("b", 10), pod("c", 10)]
    ev = t.step([*healthy, pod("s", 900)])  # t=0: ejected
    assert ev.pods["s"].state is PodState.EJECTED
    while t.now < 30:
        assert t.step([*healthy, pod("s", 10)]).pods["s"].state is PodState.EJECTED
    ev = t.step([*healthy, pod("s", 10)])  # t=30: recovery wait over
    assert ev.pods["s"] == PodVerdict(PodState.HALF_OPEN, Reason.RECOVERING)
    for _ in range(3):  # good p99 but nothing new: still out
        ev = t.step([*healthy, pod("s", 10, fresh=False)])
        assert ev.pods["s"].state is PodState.HALF_OPEN and "s" not in ev.active
    ev = t.step([*healthy, pod("s", 10)])
    assert "s" in ev.active
    assert [d.kind for d in ev.decisions if d.pod == "s"] == [DecisionKind.READMITTED]


def test_failed_recovery_doubles_the_wait_up_to_ten_times() -> None:
    policy = breaker_policy(recovery_interval_s=10.0, consecutive_violations=1)
    t = Timeline(policy, interval=1.0)
    healthy = [pod("a", 10), pod("b", 10), pod("c", 10)]
    slow = [*healthy, pod("s", 900)]
    t.step(slow)
    waits = []
    opened = 0.0
    for _ in range(400):
        before = t.state.breaker["s"].status
        ev = t.step(slow)
        if before is BreakerStatus.OPEN and ev.pods["s"].state is PodState.HALF_OPEN:
            waits.append(t.now - 1.0 - opened)
        if before is BreakerStatus.HALF_OPEN and ev.pods["s"].state is PodState.EJECTED:
            opened = t.now - 1.0
    assert waits[:6] == [10.0, 20.0, 40.0, 80.0, 100.0, 100.0]


def test_ejections_stop_at_the_cap_and_in_overload() -> None:
    policy = breaker_policy(consecutive_violations=1, max_ejection_percent=50)
    pods = [pod(f"f{i}", 10) for i in range(6)] + [pod(f"s{i}", 900 + i) for i in range(4)]
    ev = once(pods, policy)
    ejected = sorted(n for n, v in ev.pods.items() if v.state is PodState.EJECTED)
    assert ejected == ["s0", "s1", "s2", "s3"]
    # 6 slow out of 10 is overload: nobody is ejected, and it is said once.
    pods = [pod(f"f{i}", 10) for i in range(4)] + [pod(f"s{i}", 900) for i in range(6)]
    t = Timeline(policy)
    for i in range(3):
        ev = t.step(pods)
        assert not any(v.state is PodState.EJECTED for v in ev.pods.values())
        assert ev.conditions.overload
        overload = [d for d in ev.decisions if d.kind is DecisionKind.OVERLOAD]
        assert len(overload) == (1 if i == 0 else 0)


def test_cap_keeps_the_slowest_out() -> None:
    policy = breaker_policy(consecutive_violations=1, max_ejection_percent=20)
    pods = [pod(f"f{i}", 10) for i in range(7)] + [pod(f"s{i}", 200.0 * (i + 1)) for i in range(3)]
    ev = once(pods, policy)
    assert {n for n, v in ev.pods.items() if v.state is PodState.EJECTED} == {"s1", "s2"}


def test_single_pod_is_never_ejected() -> None:
    t = Timeline(breaker_policy(consecutive_violations=1))
    for _ in range(3):
        assert t.step([pod("only", 5000)]).active == {"only"}


def test_lost_pods_release_the_ejections_over_the_cap() -> None:
    policy = breaker_policy(consecutive_violations=1)
    t = Timeline(policy)
    ev = t.step([pod("a", 10), pod("b", 10), pod("s1", 800), pod("s2", 900)])
    assert {n for n, v in ev.pods.items() if v.state is PodState.EJECTED} == {"s1", "s2"}
    ev = t.step([pod("a", 10, ready=False), pod("b", 10), pod("s1", 800), pod("s2", 900)])
    # 3 eligible: the cap is 1, so the better of the two comes back at once.
    assert ev.active == {"b", "s1"}
    assert [d.pod for d in ev.decisions if d.kind is DecisionKind.READMITTED] == ["s1"]


def test_disabling_the_breaker_readmits_at_once_and_forgets() -> None:
    t = Timeline(breaker_policy(consecutive_violations=1))
    pods = [pod("a", 10), pod("b", 10), pod("s", 900)]
    assert "s" not in t.step(pods).active
    t.policy = SelectionPolicy(mode=Mode.PERCENTAGE, percentage=100)
    ev = t.step(pods)
    assert "s" in ev.active and ev.state.breaker == {}


# --- Dampening -----------------------------------------------------------------------


def test_dampening_waits_for_the_same_winner_and_ignores_small_gains() -> None:
    policy = SelectionPolicy(
        mode=Mode.TOP_N,
        top_n=1,
        dampening=DampeningPolicy(enabled=True, threshold_percent=20, consecutive_intervals=3),
    )
    t = Timeline(policy)
    assert t.step([pod("a", 100), pod("b", 110)]).active == {"a"}
    # b 15 % better: inside the margin, never switches.
    for _ in range(5):
        assert t.step([pod("a", 100), pod("b", 85)]).active == {"a"}
    # b 30 % better: pending twice, applied on the third evaluation.
    for streak in (1, 2):
        ev = t.step([pod("a", 100), pod("b", 70)])
        assert ev.active == {"a"} and ev.conditions.pending == {"b"}
        assert ev.conditions.pending_streak == streak
        assert ev.pods["b"] == PodVerdict(PodState.STANDBY, Reason.DAMPENED)
    assert t.step([pod("a", 100), pod("b", 70)]).active == {"b"}


def test_dampening_bypass_for_a_lost_incumbent() -> None:
    policy = SelectionPolicy(mode=Mode.TOP_N, top_n=2)
    t = Timeline(policy)
    assert t.step([pod("a", 10), pod("b", 20), pod("c", 30)]).active == {"a", "b"}
    # a leaves: the vacancy is filled at once, not after three intervals.
    assert t.step([pod("b", 20), pod("c", 30)]).active == {"b", "c"}


def test_backoff_is_forgotten_after_ten_recovery_intervals_of_health() -> None:
    t = Timeline(breaker_policy(recovery_interval_s=10.0, consecutive_violations=1), 1.0)
    healthy = [pod("a", 10), pod("b", 10), pod("c", 10)]
    t.step([*healthy, pod("s", 900)])  # ejected (level 1)
    t.now += 10
    t.step([*healthy, pod("s", 10)])  # halfOpen
    ev = t.step([*healthy, pod("s", 10)])  # readmitted
    assert "s" in ev.active and t.state.breaker["s"].level == 1
    readmitted_at = t.state.breaker["s"].since
    assert readmitted_at is not None
    t.now = readmitted_at + 99.5
    t.step([*healthy, pod("s", 10)])
    assert t.state.breaker["s"].level == 1  # 9.9 intervals: still remembered
    t.step([*healthy, pod("s", 10)])
    assert "s" not in t.state.breaker  # 10 intervals healthy: forgotten entirely


def test_a_new_leader_without_state_applies_the_mode_at_once() -> None:
    policy = SelectionPolicy(mode=Mode.TOP_N, top_n=1)  # dampening on by default
    pods = [pod("a", 100), pod("b", 10)]
    ev = evaluate(pods, frozenset({"a"}), policy, EngineState(), 0.0)
    assert ev.active == {"b"}
    # With the state of a previous evaluation the same change waits.
    ev = evaluate(pods, frozenset({"a"}), policy, EngineState(evaluated=True), 0.0)
    assert ev.active == {"a"} and ev.conditions.pending == {"b"}


def test_a_different_candidate_restarts_the_count() -> None:
    policy = SelectionPolicy(mode=Mode.TOP_N, top_n=1)  # 20 %, 3 intervals
    t = Timeline(policy)
    assert t.step([pod("a", 100), pod("b", 100), pod("c", 100)]).active == {"a"}
    for i in range(8):
        fast, slow = ("b", "c") if i % 2 == 0 else ("c", "b")
        ev = t.step([pod("a", 100), pod(fast, 50), pod(slow, 100)])
        assert ev.active == {"a"}
        assert ev.conditions.pending == {fast} and ev.conditions.pending_streak == 1
