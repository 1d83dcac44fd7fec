"""Whether the selection engine runs in this reconcile, what it decides, and when to
look again (pure).

`decide(view, memory, clock, latencies, generation) -> Decision`. The engine runs once
per `evaluationInterval`: its counters (consecutive violations, dampening, backoff)
count evaluations, and our own writes or pod churn must not make them run faster. In
between, the last outcome carries over (`evaluation.carry_over`), except that the
engine runs at once

- when a serving pod stopped being eligible (the carried-over outcome cannot hold);
- when a serving pod is newly seen with a request open longer than
  circuitBreaker.p99Threshold (`cadence.urgent_wait`): a hung pod leaves the slices
  without waiting for the interval;
- when a local zone is newly over the latency-aware margin
  (`locality.spill_starting`): its count starts now, not at the next interval.

`requeue_after` is the earliest of the next evaluation, an urgent wait, and (for
latency-aware policies) the next look between evaluations (`cadence.look_wait`).
"""

from __future__ import annotations

from aviator.kube.objects import JSON
from aviator.reconcilers import evaluation, locality, slices
from aviator.reconcilers.cadence import evaluation_due, gap_wait, look_wait, urgent_wait
from aviator.reconcilers.evaluation import Outcome
from aviator.reconcilers.latencies import PodLatencies
from aviator.reconcilers.memory import Clock, Memory
from aviator.reconcilers.view import View
from aviator.runtime.records import record
from aviator.selection.types import LatencyEstimate


@record
class Decision:
    outcome: Outcome
    memory: Memory  # with the evaluation recorded when `evaluated`
    evaluated: bool  # the engine ran (else the last outcome carried over)
    requeue_after: float
    # Every eligible pod's latency estimate, by name, in the view's order of pods.
    by_pod: dict[str, LatencyEstimate | None]
    # What served before this decision.
    current_active: set[str]


def persisted_state(policy: JSON) -> JSON | None:
    """The engine state the policy's status holds (what a new leader starts from)."""
    state = (policy.get("status") or {}).get("engineState")
    return state if isinstance(state, dict) else None


def judged_pods(status: JSON | None) -> frozenset[str]:
    """The pods a status has a row for: its writer judged them (at most the rows it
    shows)."""
    rows = (status or {}).get("pods")
    if not isinstance(rows, list):
        return frozenset()
    return frozenset(str(r["name"]) for r in rows if isinstance(r, dict) and r.get("name"))


def engine_due(view: View, memory: Memory, clock: Clock) -> bool:
    """Whether the engine's interval has come (or it has not run for this spec)."""
    assert view.parsed is not None
    generation = int(view.policy["metadata"].get("generation") or 0)
    return evaluation_due(
        evaluated=memory.outcome is not None and memory.generation == generation,
        next_evaluation=memory.next_evaluation,
        interval_s=view.parsed.interval_s,
        now=clock.store,
    )


def decide(
    view: View, memory: Memory, clock: Clock, latencies: PodLatencies, generation: int
) -> Decision:
    assert view.parsed is not None
    parsed = view.parsed
    eligible_facts = view.eligible_facts
    # What serves now: our last decision while we lead (the slice cache may not show
    # our own latest write yet), else what the slices say (a new leader inherits its
    # predecessor's published set).
    current_active = (
        set(memory.outcome.active)
        if memory.outcome is not None
        else slices.published_pods(view.slices, parsed.routed_service)
    )
    estimate = latencies.by_pod.get  # (PodLatencies.estimate, without a call per pod)
    by_pod = {f.name: estimate(f.name) for f in eligible_facts}
    stalled = evaluation.stalled_pods(parsed, by_pod)
    urgent = urgent_wait(
        serving=None if memory.outcome is None else memory.outcome.active,
        last_evaluation=memory.last_evaluation,
        seen=memory.stalled,
        stalled=stalled,
        now=clock.store,
    )
    aware = locality.policy_of(parsed.spec.topology) is not None
    last, previous = memory.last_evaluation, memory.outcome
    if urgent is None and aware and previous is not None and last is not None:
        status = memory.status or view.policy.get("status")
        if locality.spill_starting(
            parsed.spec.topology, eligible_facts, previous.active, by_pod.get, view.zone_of, status
        ):
            urgent = gap_wait(last_evaluation=last, now=clock.store)
    outcome = None
    if urgent != 0.0 and not engine_due(view, memory, clock) and memory.outcome is not None:
        outcome = evaluation.carry_over(
            memory.outcome, set(by_pod), min(parsed.selection.min_endpoints, len(by_pod))
        )
    evaluated = outcome is None
    if outcome is None:
        # A new replica keeps what its predecessor published while it cannot tell its
        # pods apart (PodLatencies.warming): the pods its predecessor judged (a row in
        # the status) keep their place; others, and all with nothing published, fail
        # open as new pods do.
        silent = latencies.silent
        if latencies.warming and current_active:
            judged = judged_pods(memory.status or view.policy.get("status"))
            silent = silent | (latencies.warming & judged)
        outcome, fixed = evaluation.select(
            parsed,
            eligible_facts,
            by_pod,
            evaluation.freshness(by_pod, latencies.reported, memory.last_evaluation),
            current_active,
            memory.engine_state or persisted_state(view.policy),
            clock.wall,
            silent,
            memory.fixed_points,
        )
        memory = memory.evaluated(
            outcome, generation, clock.store, clock.store + parsed.interval_s, stalled, fixed
        )
        urgent = None
    assert memory.next_evaluation is not None
    requeue_after = max(0.0, memory.next_evaluation - clock.store)
    if urgent is not None:
        requeue_after = min(requeue_after, urgent)
    if aware and memory.last_evaluation is not None:
        look = look_wait(
            last_evaluation=memory.last_evaluation, interval_s=parsed.interval_s, now=clock.store
        )
        requeue_after = requeue_after if look is None else min(requeue_after, look)
    return Decision(outcome, memory, evaluated, requeue_after, by_pod, current_active)
