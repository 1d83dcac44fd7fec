"""The engine driven over a random timeline: latency changes, pod churn, spec edits.

After every evaluation the invariants hold, equal inputs give equal outputs, a stored
and reloaded state continues identically, and the circuit breaker never acts early.
"""

from __future__ import annotations

import dataclasses
import json

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from selection_strategies import check_invariants, policies

from aviator.selection import (
    BreakerPolicy,
    BreakerStatus,
    DecisionKind,
    EngineState,
    Evaluation,
    LatencyEstimate,
    PodInput,
    SelectionPolicy,
    evaluate,
    known_latency,
)

# Mostly healthy pods with some outliers, around the usual 100 ms breaker threshold.
p99_levels = st.sampled_from([5.0, 10.0, 10.0, 20.0, 50.0, 99.0, 100.0, 101.0, 400.0, 3000.0])
estimates = st.none() | st.builds(
    LatencyEstimate,
    p50_ms=st.just(1.0),
    p99_ms=p99_levels,
    rif=st.integers(0, 6),
    samples=st.integers(0, 50),
    age_s=st.sampled_from([0.0, 0.0, 5.0, 45.0]),
)
freshness = st.sampled_from([True, True, False])


class SelectionTimeline(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pods: dict[str, PodInput] = {}
        self.created = 0
        self.policy = SelectionPolicy(
            breaker=BreakerPolicy(enabled=True, p99_threshold_ms=100.0, recovery_interval_s=10.0)
        )
        self.state = EngineState()
        self.active: frozenset[str] = frozenset()
        self.now = 1000.0
        # Consecutive fresh violations per pod while its breaker is closed (the model).
        self.streak: dict[str, int] = {}

    @initialize(healthy=st.integers(2, 7), slow=st.lists(p99_levels, min_size=1, max_size=3))
    def start_with_a_few_outliers(self, healthy: int, slow: list[float]) -> None:
        self.add_pods(
            [LatencyEstimate(1.0, 10.0)] * healthy + [LatencyEstimate(1.0, p) for p in slow],
            ready=True,
        )

    # --- the world changes ---------------------------------------------------------

    @rule(
        latencies=st.lists(estimates, min_size=1, max_size=4),
        ready=st.booleans(),
        fresh=freshness,
    )
    def add_pods(
        self, latencies: list[LatencyEstimate | None], ready: bool, fresh: bool = True
    ) -> None:
        for latency in latencies:
            name = f"pod-{self.created:03d}"
            self.created += 1
            self.pods[name] = PodInput(
                name, f"10.1.0.{self.created}", ready=ready, latency=latency, fresh=fresh
            )

    @precondition(lambda self: bool(self.pods))
    @rule(data=st.data())
    def remove_pod(self, data: st.DataObject) -> None:
        del self.pods[data.draw(st.sampled_from(sorted(self.pods)))]

    @precondition(lambda self: bool(self.pods))
    @rule(data=st.data(), latency=estimates, fresh=freshness)
    def change_latency(
        self, data: st.DataObject, latency: LatencyEstimate | None, fresh: bool
    ) -> None:
        name = data.draw(st.sampled_from(sorted(self.pods)))
        self.pods[name] = dataclasses.replace(self.pods[name], latency=latency, fresh=fresh)

    @precondition(lambda self: any(r.out_of_traffic for r in self.state.breaker.values()))
    @rule(p99=st.sampled_from([10.0, 10.0, 150.0]))
    def ejected_pods_are_probed_through_their_recovery(self, p99: float) -> None:
        # Keep-warm probes measure ejected pods; let the longest backoff pass.
        for name, rec in self.state.breaker.items():
            if rec.out_of_traffic and name in self.pods:
                self.pods[name] = dataclasses.replace(
                    self.pods[name], latency=LatencyEstimate(1.0, p99), fresh=True
                )
        wait = 10 * self.policy.breaker.recovery_interval_s + 1
        self.evaluate_once(wait)
        self.evaluate_once(1.0)

    @precondition(lambda self: bool(self.pods))
    @rule(data=st.data(), ready=st.booleans(), terminating=st.booleans())
    def change_readiness(self, data: st.DataObject, ready: bool, terminating: bool) -> None:
        name = data.draw(st.sampled_from(sorted(self.pods)))
        self.pods[name] = dataclasses.replace(self.pods[name], ready=ready, terminating=terminating)

    @rule(
        policy=policies(breaker=True) | policies(),
        threshold=st.sampled_from([None, 100.0, 100.0, 10.0]),
    )
    def edit_spec(self, policy: SelectionPolicy, threshold: float | None) -> None:
        if threshold is not None:
            policy = dataclasses.replace(
                policy, breaker=dataclasses.replace(policy.breaker, p99_threshold_ms=threshold)
            )
        self.policy = policy

    # --- the controller evaluates ----------------------------------------------------

    @rule(dt=st.sampled_from([1.0, 5.0, 5.0, 10.0, 40.0]), times=st.integers(1, 6))
    def evaluate(self, dt: float, times: int) -> None:
        # Several evaluations of the same world, as a steady state between changes.
        for _ in range(times):
            self.evaluate_once(dt)

    def evaluate_once(self, dt: float) -> None:
        self.now += dt
        pods = list(self.pods.values())
        ev = evaluate(pods, self.active, self.policy, self.state, self.now)
        check_invariants(pods, self.policy, ev)
        # Equal inputs, equal outputs; a reloaded state continues the same way.
        assert evaluate(pods, self.active, self.policy, self.state, self.now) == ev
        stored = json.loads(json.dumps(self.state.to_dict()))
        assert (
            evaluate(pods, self.active, self.policy, EngineState.from_dict(stored), self.now) == ev
        )
        if not self.policy.breaker.enabled and not self.policy.dampening.enabled:
            # Nothing remembered matters once both are off: the spec edit applies at once.
            # (What serves now still does, for pods whose data went stale: they keep
            # their place.)
            fresh_start = evaluate(pods, self.active, self.policy, EngineState(), 0)
            assert ev.active == fresh_start.active
        self.check_breaker(pods, ev)
        for d in ev.decisions:
            event(f"decision {d.kind.value}")
        if ev.conditions.pending is not None:
            event("dampening pending")
        self.state, self.active = ev.state, ev.active

    def check_breaker(self, pods: list[PodInput], ev: Evaluation) -> None:
        cfg = self.policy.breaker
        ejected = {d.pod for d in ev.decisions if d.kind is DecisionKind.EJECTED}
        released = {
            d.pod for d in ev.decisions if d.kind is DecisionKind.READMITTED and "cap" in d.message
        }
        for pod in pods:
            before = self.state.breaker.get(pod.name)
            after = ev.state.breaker.get(pod.name)
            was = before.status if before else BreakerStatus.CLOSED
            now = after.status if after else BreakerStatus.CLOSED
            lat = known_latency(pod, self.policy.stale_after_s)
            fresh = lat is not None and pod.fresh
            if not cfg.enabled or not pod.eligible:
                assert after == (before if cfg.enabled else None)
                if not cfg.enabled:
                    self.streak.pop(pod.name, None)
                continue
            if was is BreakerStatus.CLOSED:
                if fresh and lat is not None:
                    slow = lat.p99_ms > cfg.p99_threshold_ms
                    self.streak[pod.name] = self.streak.get(pod.name, 0) + 1 if slow else 0
                if now is not BreakerStatus.CLOSED:
                    # Never ejected before N consecutive fresh violations, never in overload.
                    assert self.streak.get(pod.name, 0) >= cfg.consecutive_violations
                    assert not ev.conditions.overload
                    assert pod.name in ejected
                    self.streak[pod.name] = 0
            elif was is BreakerStatus.HALF_OPEN and now is BreakerStatus.CLOSED:
                # Readmitted only on fresh samples under the threshold (or by the cap).
                assert pod.name in released or (
                    fresh and lat is not None and lat.p99_ms <= cfg.p99_threshold_ms
                )
            elif was is BreakerStatus.OPEN and now is not BreakerStatus.OPEN:
                assert before is not None and before.since is not None
                assert pod.name in released or self.now - before.since >= cfg.recovery_interval_s
        for name in list(self.streak):
            if name not in self.pods:
                del self.streak[name]


SelectionTimeline.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
test_selection_timeline = SelectionTimeline.TestCase
