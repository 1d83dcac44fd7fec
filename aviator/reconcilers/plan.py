"""Every decision of one AviatorPolicy reconcile, as pure functions of what was read.

`plan(view, memory, clock, latencies) -> Plan`. The `Plan` lists, in order, the API
writes to make, the Events to record, the status to write (if it changed in a way a
reader cares about), the gauges to set, what to remember until the next reconcile and
when to look again. `PolicyReconciler` gathers the inputs and executes the plan;
nothing here does I/O, so every branch below has a unit test without a cluster.

One reconcile decides, in this order:

1. policy deleting → release everything (a taken-over selector restored FIRST, then
   our slices and shadow Service deleted), then drop the finalizer;
2. finalizer added if missing; invalid spec → `InvalidSpec`, routing left as it is
   (an invalid spec must not take traffic away);
3. conflict: an older live policy routing the same Service wins; this one releases
   everything and reports `Conflict`;
4. leftovers of a previous targetRef or routing mode are released;
5. target Service missing → `ServiceNotFound`; no selector → `ServiceHasNoSelector`;
   routing (`routing.decide`, with the takeover record of `status.takeover`, see
   `takeover`) may block with a problem of its own;
6. the selection engine runs once per `evaluationInterval`, sooner only for what
   cannot wait (`decision`: a serving pod no longer eligible, a hung pod, a zone
   newly over its margin); in between, the last outcome carries over;
7. slices are published BEFORE a takeover records the selector in the status and then
   removes it (the Service never has zero endpoints, the selector is always kept
   somewhere); never an empty set while an eligible pod exists, nor while a
   terminating pod still serves (`endpoints.routed_pods`).

A reconcile that reads the very cache objects the last one read, when that one changed
nothing, reuses its verdicts of steps 2 to 5; with the same decision and latencies too,
it skips step 7 and what follows (`settled`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import field

from aviator.kube import marks
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_name, pod_node
from aviator.kube.resources import AVIATORPOLICIES
from aviator.kube.services import is_headless
from aviator.reconcilers import (
    endpoints,
    evaluation,
    handoff,
    locality,
    routing,
    slices,
    takeover,
)
from aviator.reconcilers.decision import decide, engine_due, persisted_state
from aviator.reconcilers.latencies import PodLatencies
from aviator.reconcilers.memory import Clock, Memory
from aviator.reconcilers.reporting import (
    EventSpec,
    handoff_events,
    policy_events,
    status_rows,
)
from aviator.reconcilers.routing import ENDPOINTS
from aviator.reconcilers.settled import Cluster, Settled
from aviator.reconcilers.status import (
    REASON_AGENT_MAPS_FULL,
    REASON_CONFLICT,
    REASON_INVALID_SPEC,
    REASON_NO_ELIGIBLE_PODS,
    REASON_NO_LATENCY_DATA,
    REASON_NO_SELECTOR,
    REASON_OVERLOAD,
    REASON_SERVICE_NOT_FOUND,
    Observation,
    Problem,
    effective_source,
    status_patch,
    unmeasurable_message,
)
from aviator.reconcilers.view import View
from aviator.runtime.records import record
from aviator.runtime.writer import Write
from aviator.selection.types import Reason


@record
class Gauges:
    active: int
    total: int
    p99_ms: float | None
    ejections: int = 0


@record
class Plan:
    """What to do, in order: `writes`, then `events`, then `status_write` (after which
    `status` is what we last wrote). `memory` None = forget the policy (and its
    gauges)."""

    writes: list[Write] = field(default_factory=list)
    events: list[EventSpec] = field(default_factory=list)
    status: JSON | None = None
    status_write: Write | None = None
    memory: Memory | None = None
    gauges: Gauges | None = None
    requeue_after: float | None = None


def _now_iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finalizers(policy: JSON) -> list[str]:
    return list(policy["metadata"].get("finalizers") or [])


def _policy_patch(view: View, finalizers: list[str]) -> Write:
    meta = view.policy["metadata"]
    body = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
    return Write("patch", AVIATORPOLICIES, view.namespace, view.name, body, missing_ok=True)


def status_write(view: View, memory: Memory, obs: Observation) -> tuple[JSON | None, Write | None]:
    """The new status and the patch that writes it, or (None, None) when what the
    server holds already says it (see `status.status_changed`)."""
    exact = memory.status is not None  # our own last write, as the server took it
    change = status_patch(memory.status or view.policy.get("status") or {}, obs, exact=exact)
    if change is None:
        return None, None
    new, body = change
    write = Write(
        "patch",
        AVIATORPOLICIES,
        view.namespace,
        view.name,
        {"status": body},
        subresource="status",
        missing_ok=True,
    )
    return new, write


def _status_once(
    view: View, memory: Memory, seen: Observation, wall: float
) -> tuple[JSON | None, Write | None, Memory]:
    """`status_write` of `seen` (an observation without its time, `now_iso` "") at
    `wall`, skipped when the status it was last found up to date against (or wrote) is
    still the one we hold and the observation says the same."""
    previous = memory.status or view.policy.get("status")
    held = memory.status_current
    if held is not None and previous is not None and held[0] is previous and held[1] == seen:
        return None, None, memory
    status, write = status_write(view, memory, dataclasses.replace(seen, now_iso=_now_iso(wall)))
    after = status if status is not None else previous
    current = None if after is None else (after, seen)
    return status, write, dataclasses.replace(memory, status_current=current)


def measurement(view: View, memory: Memory, clock: Clock) -> tuple[list[JSON], bool] | None:
    """The pods whose latency the plan needs, and whether an evaluation is due (probe
    mode sends probes only then); None when this reconcile will not select."""
    if view.policy["metadata"].get("deletionTimestamp") or view.parsed is None:
        return None
    if view.target is None or not view.selector:
        return None
    if routing.conflicting_policy(view.policy, view.rivals) is not None:
        return None
    return view.eligible, engine_due(view, memory, clock)


def plan(view: View, memory: Memory, clock: Clock, latencies: PodLatencies | None) -> Plan:
    """Every decision of one reconcile (see the module docstring for the order)."""
    if view.policy["metadata"].get("deletionTimestamp"):
        return _finalize(view, memory.record(view))
    generation = int(view.policy["metadata"].get("generation") or 0)
    cluster = Cluster.of(view, memory.status or view.policy.get("status"))
    held = memory.settled
    if held is not None and latencies is not None and held.cluster.same(cluster):
        # The cluster the last reconcile read, which wrote nothing: the same finalizer,
        # conflict, leftovers and routing (settled.py).
        assert view.target is not None
        return _select(
            view, memory, clock, latencies, held.route, view.target, [], generation, cluster, held
        )
    writes: list[Write] = []
    if marks.FINALIZER not in _finalizers(view.policy):
        writes.append(_policy_patch(view, [*_finalizers(view.policy), marks.FINALIZER]))
    carried_state = memory.engine_state or persisted_state(view.policy)
    record = memory.record(view)
    parsed = view.parsed
    # The record stays while its Service stays taken over (nothing below releases it).
    kept = record
    if parsed is not None and record is not None and not _takes_over(parsed, record.service):
        kept = None

    def stop(problems: list[Problem], *, routed: str | None, state: JSON | None) -> Plan:
        obs = Observation(
            generation=generation,
            now_iso=_now_iso(clock.wall),
            routed_service=routed,
            problems=problems,
            engine_state=state,
            takeover=None if kept is None else kept.to_json(),
        )
        status, write = status_write(view, memory, obs)
        requeue = view.parsed.interval_s if view.parsed is not None else None
        return Plan(writes, [], status, write, memory, None, requeue)

    if parsed is None:
        problem = Problem(REASON_INVALID_SPEC, f"invalid spec: {view.invalid}")
        return stop([problem], routed=None, state=carried_state)
    routed = parsed.routed_service

    winner = routing.conflicting_policy(view.policy, view.rivals)
    if winner is not None:
        writes += routing.release(view, record)
        kept = None
        message = (
            f"Service {routed} is already routed by AviatorPolicy {winner}; "
            "this policy does nothing until that one is gone"
        )
        return stop([Problem(REASON_CONFLICT, message)], routed=routed, state=None)

    writes += routing.release(view, record, keep_routed=routed)
    target = view.target
    if target is None:
        problem = Problem(
            REASON_SERVICE_NOT_FOUND, f"Service {view.namespace}/{parsed.target} not found"
        )
        return stop([problem], routed=routed, state=carried_state)
    if not view.selector:
        problem = Problem(
            REASON_NO_SELECTOR,
            f"Service {view.namespace}/{parsed.target} has no selector; Aviator needs one "
            "to find its pods (an empty selector never means every pod)",
        )
        return stop([problem], routed=routed, state=carried_state)
    gone = (ENDPOINTS.kind, parsed.target) in memory.absent
    route = routing.decide(view, target, record, endpoints_gone=gone)
    writes += route.prepare
    if route.blocked:
        return stop(route.problems, routed=routed, state=carried_state)
    assert latencies is not None, "a selecting plan needs latencies (see measurement())"
    return _select(view, memory, clock, latencies, route, target, writes, generation, cluster, None)


def _select(
    view: View,
    memory: Memory,
    clock: Clock,
    latencies: PodLatencies,
    route: routing.Routing,
    target: JSON,
    writes: list[Write],
    generation: int,
    cluster: Cluster,
    same_cluster: Settled | None,
) -> Plan:
    """`same_cluster`: the last reconcile, settled, when this one read the same cluster
    (`route` is then its routing)."""
    assert view.parsed is not None
    parsed, ns, name = view.parsed, view.namespace, view.name
    eligible = view.eligible
    eligible_facts = view.eligible_facts
    decision = decide(view, memory, clock, latencies, generation)
    outcome, memory, by_pod = decision.outcome, decision.memory, decision.by_pod
    current_active, requeue_after = decision.current_active, decision.requeue_after
    # Names once: thousands of pods, and every step below is keyed by name.
    names = list(by_pod)  # the eligible pods', in order
    active_pods = [p for n, p in zip(names, eligible, strict=True) if n in outcome.active]
    p99 = latencies.active_p99_ms(active_pods)

    # The last reconcile changed nothing and this one reads what it read: nor does this.
    zoned = locality.policy_of(parsed.spec.topology) is not None  # reads `evaluated`
    values = (
        view.pod_zones,
        view.zone_cpu,
        view.client_zones,
        outcome,
        current_active,
        zoned and decision.evaluated,
        latencies.unmeasurable,
    )
    held = same_cluster
    if held is not None and held.holds(values, latencies.by_pod, p99):
        return Plan(memory=memory, gauges=held.gauges, requeue_after=requeue_after)

    problems = list(route.problems)
    if eligible and not active_pods:
        # Never publish an empty set while a ready pod exists.
        raise RuntimeError(f"policy {ns}/{name}: selection returned no pod of {len(eligible)}")
    # With no pod eligible, terminating pods that still serve are published (kube-proxy
    # falls back to them), so the Service keeps its endpoints through a rollout.
    routed, fallback = endpoints.routed_pods(active_pods, view.pods)
    if not eligible:
        message = f"no ready pod matches the selector of Service {ns}/{parsed.target}"
        if fallback:
            message += (
                f"; {len(routed)} terminating pods that still serve are published "
                "(serving, terminating), as Kubernetes does, until a pod is ready"
            )
        problems.append(Problem(REASON_NO_ELIGIBLE_PODS, message))
    if outcome.overload:
        problems.append(Problem(REASON_OVERLOAD, outcome.overload))
    if eligible and not any(latencies.estimate(n) for n in names):
        kept_out = sum(1 for n in names if outcome.reasons.get(n) == Reason.LATENCY_STALE)
        kept = (
            f"the pods judged before keep their place ({kept_out} kept out)"
            if kept_out
            else "all are kept"
        )
        problems.append(
            Problem(
                REASON_NO_LATENCY_DATA,
                f"no {parsed.latency_source} latency data for any pod yet; {kept}",
            )
        )
    unmeasurable = {n: latencies.unmeasurable[n] for n in names if n in latencies.unmeasurable}
    if unmeasurable:
        problems.append(Problem(REASON_AGENT_MAPS_FULL, unmeasurable_message(unmeasurable)))

    owner = slices.SliceOwner(
        ns, parsed.routed_service, name, memory.uid, headless=is_headless(target)
    )
    zones = locality.plan_zones(
        parsed.spec.topology,
        routed,
        by_pod.get,
        view.zone_of,
        view.client_zones,
        memory.status or view.policy.get("status"),
        decision.evaluated,
    )
    problems += zones.problems
    publishing = endpoints.Publishing(
        target, parsed.routed_service, view.zone_of, view.zone_cpu, zones.hints
    )
    # The slices were up to date for exactly these inputs last time: they still are.
    slice_inputs = (
        owner,
        publishing,
        tuple(routed),
        tuple(view.zone_of(node) if node else None for node in map(pod_node, routed)),
        tuple(view.slices),
    )
    if memory.slices_current == slice_inputs:
        slice_plan = slices.SlicePlan()
    else:
        desired = endpoints.desired_endpoints(publishing, routed)
        slice_plan = slices.plan_slices(owner, desired, view.slices)
    memory = dataclasses.replace(memory, slices_current=slice_inputs if slice_plan.empty else None)
    writes += slices.writes_for(ns, slice_plan)
    writes += routing.after_slices(view, target, route)

    previous_status = memory.status or view.policy.get("status")
    previous_handoffs = handoff.previous_handoffs(previous_status)
    served_before, served_after = locality.serving_zones(
        current_active, outcome.active, eligible_facts, view.zone_of, previous_status, zones
    )
    hand_offs = handoff.for_view(
        view, served_before, served_after, not slice_plan.empty, previous_handoffs, clock.wall
    )
    requeue_after = min(requeue_after, handoff.next_expiry(hand_offs, clock.wall))

    events = policy_events(outcome, current_active, not slice_plan.empty, eligible)
    events += handoff_events(hand_offs, previous_handoffs, view.pods)
    fallback_names = {pod_name(p) for p in routed} if fallback else set()
    rows = status_rows(eligible_facts, outcome, by_pod, view.pods, fallback_names)
    seen = Observation(
        generation=generation,
        now_iso="",  # the time is `_status_once`'s to add, when it writes
        active=len(routed),
        total=len(eligible),
        p99_ms=p99,
        source=effective_source(latencies.sources()),
        problems=problems,
        pods=rows.shown,
        routed_service=parsed.routed_service,
        engine_state=outcome.engine_state,
        takeover=None if route.record is None else route.record.to_json(),
        hand_offs=hand_offs,
        opaque=rows.opaque,
        zones=zones.rows,
        ejected=rows.ejected,
        measured=rows.measured,
    )
    status, write, memory = _status_once(view, memory, seen, clock.wall)
    ejections = sum(1 for e in events if e.reason == "PodEjected")
    gauges = Gauges(len(routed), len(eligible), p99, ejections)
    nothing = not writes and not events and write is None
    settled = (
        Settled(cluster, route, values, latencies.by_pod, p99, gauges)
        if nothing and not hand_offs
        else None
    )
    if settled is not None or memory.settled is not None:
        memory = dataclasses.replace(memory, settled=settled)
    return Plan(writes, events, status, write, memory, gauges, requeue_after)


def _takes_over(parsed: evaluation.ParsedPolicy, service: str) -> bool:
    return parsed.mode == "takeover" and parsed.target == service


def _finalize(view: View, record: takeover.Record | None) -> Plan:
    if marks.FINALIZER not in _finalizers(view.policy):
        return Plan()
    remaining = [f for f in _finalizers(view.policy) if f != marks.FINALIZER]
    return Plan(writes=[*routing.release(view, record), _policy_patch(view, remaining)])
