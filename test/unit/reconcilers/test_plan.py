"""The policy reconciler's decisions, without a cluster: caches → View → plan → Plan.

Each test fills real informer indexers with raw objects, gathers a View, plans with
fixed latencies, and checks the writes, status and memory. `apply` plays the API
server for steady-state checks: it applies a plan's writes back to the caches.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from reconciler_objects import make_pod, make_service, merge_patch

from aviator.informers import Indexer
from aviator.kube import marks
from aviator.latency.histogram import Histogram
from aviator.reconcilers.latencies import PodLatencies
from aviator.reconcilers.memory import Clock, Memory, memory_for
from aviator.reconcilers.plan import Plan, measurement, plan
from aviator.reconcilers.view import (
    Caches,
    View,
    gather,
)
from aviator.runtime.writer import Write
from aviator.selection.types import LatencyEstimate

JSON = dict[str, Any]
NS = "default"
FAST, SLOW = 10.0, 500.0


def make_policy(
    name: str = "p",
    spec: JSON | None = None,
    *,
    created: str = "2026-01-01T00:00:00Z",
    finalizers: Sequence[str] = (marks.FINALIZER,),
    generation: int = 1,
    deleting: bool = False,
    status: JSON | None = None,
) -> JSON:
    meta: JSON = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "generation": generation,
        "creationTimestamp": created,
        "resourceVersion": "1",
        "finalizers": list(finalizers),
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    obj: JSON = {
        "apiVersion": "aviator.example.com/v1alpha1",
        "kind": "AviatorPolicy",
        "metadata": meta,
        "spec": spec if spec is not None else {"targetRef": {"name": "web"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def caches_with(*objs: JSON) -> Caches:
    caches = Caches.standalone()
    for obj in objs:
        store_of(caches, obj).upsert(obj)
    return caches


def store_of(caches: Caches, obj: JSON) -> Indexer:
    kind = obj["kind"]
    if kind == "EndpointSlice":
        managed = (obj["metadata"].get("labels") or {}).get(marks.LABEL_MANAGED_BY)
        target = caches.slices if managed == marks.MANAGER else caches.builtin_slices
        assert target is not None
        return target
    return {
        "AviatorPolicy": caches.policies,
        "Service": caches.services,
        "Pod": caches.pods,
    }[kind]


def apply(caches: Caches, todo: Plan) -> None:
    """Apply the plan's writes (status included) as the API server would."""
    writes = [*todo.writes, *([todo.status_write] if todo.status_write else [])]
    for w in writes:
        kinds = {
            "AviatorPolicy": caches.policies,
            "Service": caches.services,
            "EndpointSlice": caches.slices,
            "Endpoints": None,
        }
        store = kinds[w.resource.kind]
        if w.resource.kind == "EndpointSlice" and w.verb == "delete":
            stores = [caches.slices, caches.builtin_slices]
        else:
            stores = [store]
        key = f"{w.namespace}/{w.name}"
        for s in stores:
            if s is None:
                continue
            if w.verb == "delete":
                s.delete(key)
            elif w.verb in ("create", "replace"):
                assert w.body is not None
                s.upsert(copy.deepcopy(w.body))
            else:
                current = s.get(key)
                assert current is not None, w.describe()
                s.upsert(merge_patch(current, w.body))


def latencies_of(ms: Mapping[str, float | None], samples: int = 100) -> PodLatencies:
    by_pod = {
        name: None
        if v is None
        else LatencyEstimate(v, v, samples=samples, age_s=0.1, p90_ms=v, source="ebpf")
        for name, v in ms.items()
    }

    def merged(pods: Sequence[JSON]) -> Histogram:
        h = Histogram()
        for p in pods:
            v = ms.get(p["metadata"]["name"])
            if v is not None:
                h.record(int(v * 1000))
        return h

    return PodLatencies(by_pod, merged)


def four_pods() -> list[JSON]:
    return [make_pod(f"fast-{i}", f"10.0.0.{i}") for i in (1, 2)] + [
        make_pod(f"slow-{i}", f"10.0.1.{i}") for i in (1, 2)
    ]


LAT = latencies_of({"fast-1": FAST, "fast-2": FAST, "slow-1": SLOW, "slow-2": SLOW})


def run(caches: Caches, key: str, memory: Memory | None, clock: Clock) -> tuple[View, Plan]:
    view = gather(caches, caches.policies.get(key) or {})
    mem = memory_for(view, memory)
    needs = measurement(view, mem, clock)
    return view, plan(view, mem, clock, LAT if needs is not None else None)


def slice_pods(caches: Caches, service: str) -> set[str]:
    out: set[str] = set()
    for sl in caches.slices.list():
        if sl["metadata"]["labels"].get(marks.LABEL_SERVICE_NAME) == service:
            out |= {ep["targetRef"]["name"] for ep in sl.get("endpoints") or []}
    return out


def verbs(writes: Sequence[Write]) -> list[tuple[str, str, str]]:
    return [(w.verb, w.resource.kind, w.name) for w in writes]


def condition(status: JSON | None, ctype: str) -> JSON:
    assert status is not None
    return next(c for c in status["conditions"] if c["type"] == ctype)


T0 = Clock(wall=1_800_000_000.0, store=100.0)


def later(clock: Clock, s: float) -> Clock:
    return Clock(clock.wall + s, clock.store + s)


# --- shadow mode and steady state ---------------------------------------------------


def test_shadow_publishes_the_fast_pods_then_steady_state_writes_nothing() -> None:
    policy = make_policy(
        spec={"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 2}}
    )
    caches = caches_with(policy, make_service(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    assert verbs(todo.writes)[0] == ("create", "Service", "web-aviator")
    assert [v for v in verbs(todo.writes) if v[1] == "EndpointSlice"] == [
        ("create", "EndpointSlice", "web-aviator-aviator-ipv4-0")
    ]
    assert todo.status is not None and todo.status["activePods"] == 2
    assert todo.status["totalPods"] == 4 and todo.requeue_after == 5.0
    assert [e.reason for e in todo.events] == ["EndpointsUpdated"]
    apply(caches, todo)
    assert slice_pods(caches, "web-aviator") == {"fast-1", "fast-2"}
    assert todo.memory is not None
    memory = dataclasses.replace(todo.memory, status=todo.status)
    for step in range(1, 4):
        _, again = run(caches, "default/p", memory, later(T0, 5.0 * step))
        assert again.writes == [] and again.status_write is None and again.events == []
        assert again.memory is not None
        memory = again.memory


def test_pods_whose_agent_went_silent_keep_their_place_in_the_slices() -> None:
    """Their node's agent restarting (no reports past the staleness bound) does not
    put the slow pods back; pods never measured would serve (fail open)."""
    policy = make_policy(
        spec={"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 2}}
    )
    caches = caches_with(policy, make_service(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    assert todo.memory is not None
    memory = dataclasses.replace(todo.memory, status=todo.status)
    names = ("fast-1", "fast-2", "slow-1", "slow-2")
    unknown = latencies_of(dict.fromkeys(names))

    def evaluate_with(latencies: PodLatencies, at: float) -> Plan:
        view = gather(caches, caches.policies.get("default/p") or {})
        return plan(view, memory_for(view, memory), later(T0, at), latencies)

    silent = evaluate_with(dataclasses.replace(unknown, silent=frozenset(names)), 5.0)
    assert [w for w in silent.writes if w.resource.kind == "EndpointSlice"] == []
    assert silent.status is not None
    rows = {r["name"]: r for r in silent.status["pods"]}
    assert (rows["slow-1"]["state"], rows["slow-1"]["reason"]) == ("standby", "LatencyStale")
    never_measured = evaluate_with(unknown, 5.0)
    apply(caches, never_measured)
    assert slice_pods(caches, "web-aviator") == set(names)


def test_a_new_leader_that_cannot_tell_its_pods_apart_yet_keeps_the_published_set() -> None:
    """A replica that just took over, with no data yet for pods its predecessor
    judged (PodLatencies.warming; a row in the status), keeps the slices its
    predecessor published: the slow pods stay out. Pods its predecessor never judged
    (a rollout replaced them all meanwhile), and the pods of a policy never
    published, fail open."""
    policy = make_policy(
        spec={"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 2}}
    )
    caches = caches_with(policy, make_service(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    assert slice_pods(caches, "web-aviator") == {"fast-1", "fast-2"}
    names = ("fast-1", "fast-2", "slow-1", "slow-2")
    warming = dataclasses.replace(latencies_of(dict.fromkeys(names)), warming=frozenset(names))

    def new_leader_with(latencies: PodLatencies) -> Plan:
        view = gather(caches, caches.policies.get("default/p") or {})
        return plan(view, memory_for(view, None), later(T0, 5.0), latencies)

    kept = new_leader_with(warming)
    assert [w for w in kept.writes if w.resource.kind == "EndpointSlice"] == []
    assert kept.status is not None
    rows = {r["name"]: r for r in kept.status["pods"]}
    assert (rows["slow-1"]["state"], rows["slow-1"]["reason"]) == ("standby", "LatencyStale")
    assert rows["fast-1"]["state"] == "unknown"
    assert "keep their place (2 kept out)" in condition(kept.status, "Degraded")["message"]

    replaced = [make_pod(f"new-{i}", f"10.0.1.{i}") for i in range(1, 7)]
    for pod in four_pods():
        caches.pods.delete(f"default/{pod['metadata']['name']}")
    for pod in replaced:
        caches.pods.upsert(pod)
    new_names = [p["metadata"]["name"] for p in replaced]
    all_new = dataclasses.replace(
        latencies_of(dict.fromkeys(new_names)), warming=frozenset(new_names)
    )
    apply(caches, new_leader_with(all_new))
    assert slice_pods(caches, "web-aviator") == set(new_names)

    fresh = caches_with(policy, make_service(), *four_pods())
    view = gather(fresh, fresh.policies.get("default/p") or {})
    apply(fresh, plan(view, memory_for(view, None), T0, warming))
    assert slice_pods(fresh, "web-aviator") == set(names)


def test_a_missing_finalizer_is_added_first() -> None:
    policy = make_policy(finalizers=())
    caches = caches_with(policy, make_service(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    first = todo.writes[0]
    assert (first.verb, first.resource.kind) == ("patch", "AviatorPolicy")
    assert first.body is not None and first.body["metadata"]["finalizers"] == [marks.FINALIZER]


# --- invalid spec, missing things, conflict -----------------------------------------


def test_invalid_spec_reports_and_leaves_routing_as_it_is() -> None:
    state = {"version": 1, "breaker": {"fast-1": {"violations": 2}}}
    policy = make_policy(
        spec={"targetRef": {"name": "web"}, "selection": {"mode": "fastest"}},
        status={"engineState": state},
    )
    caches = caches_with(policy, make_service(), *four_pods())
    view, todo = run(caches, "default/p", None, T0)
    assert view.parsed is None and "selection.mode" in (view.invalid or "")
    assert todo.writes == [] and todo.requeue_after is None
    ready = condition(todo.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert todo.status is not None and todo.status["engineState"] == state  # carried


def test_missing_service_and_selectorless_service_block() -> None:
    policy = make_policy()
    _, todo = run(caches_with(policy, *four_pods()), "default/p", None, T0)
    assert condition(todo.status, "Ready")["reason"] == "ServiceNotFound"
    assert not any(w.resource.kind == "EndpointSlice" for w in todo.writes)
    _, todo = run(caches_with(policy, make_service(selector={})), "default/p", None, T0)
    assert condition(todo.status, "Ready")["reason"] == "ServiceHasNoSelector"


def test_conflict_the_older_policy_wins_and_the_younger_releases_everything() -> None:
    older = make_policy("a", created="2026-01-01T00:00:00Z")
    younger = make_policy("b", created="2026-01-01T00:00:01Z")
    caches = caches_with(older, younger, make_service(), *four_pods())
    _, todo_a = run(caches, "default/a", None, T0)
    apply(caches, todo_a)
    # b once published slices of its own (e.g. before a was created): they go.
    leftover = copy.deepcopy(caches.slices.list()[0])
    leftover["metadata"]["name"] = "b-leftover"
    leftover["metadata"]["labels"][marks.LABEL_POLICY] = "b"
    caches.slices.upsert(leftover)
    view, todo_b = run(caches, "default/b", None, T0)
    assert measurement(view, memory_for(view, None), T0) is None  # no probes for a loser
    assert verbs(todo_b.writes) == [("delete", "EndpointSlice", "b-leftover")]
    ready = condition(todo_b.status, "Ready")
    assert ready["reason"] == "Conflict" and "AviatorPolicy a" in ready["message"]
    # The winner is unaffected by the loser.
    _, again = run(caches, "default/a", todo_a.memory, later(T0, 5))
    assert not [w for w in again.writes if w.resource.kind == "EndpointSlice"]


def test_a_shadow_name_taken_by_someone_else_blocks() -> None:
    policy = make_policy()
    foreign = make_service("web-aviator")
    _, todo = run(caches_with(policy, make_service(), foreign, *four_pods()), "default/p", None, T0)
    assert condition(todo.status, "Ready")["reason"] == "Conflict"
    assert not any(w.resource.kind in ("Service", "EndpointSlice") for w in todo.writes)


# --- takeover and restore -----------------------------------------------------------


TAKEOVER = {
    "targetRef": {"name": "web"},
    "routing": {"mode": "takeover"},
    "selection": {"mode": "topN", "topN": 2},
}


def builtin_slice() -> JSON:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abcde",
            "namespace": NS,
            "labels": {
                marks.LABEL_SERVICE_NAME: "web",
                marks.LABEL_MANAGED_BY: "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [],
    }


def test_takeover_publishes_slices_before_it_removes_the_selector() -> None:
    policy = make_policy(spec=TAKEOVER)
    caches = caches_with(policy, make_service(), builtin_slice(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    order = verbs(todo.writes)
    create = order.index(("create", "EndpointSlice", "web-aviator-ipv4-0"))
    record = order.index(("patch", "AviatorPolicy", "p"), 1)
    takeover = order.index(("patch", "Service", "web"))
    # Slices first, then the record of the selector in the policy's status, then the
    # Service: a crash at any step leaves the selector somewhere.
    assert create < record < takeover
    pending = todo.writes[record]
    assert pending.subresource == "status" and pending.body is not None
    assert pending.body["status"]["takeover"]["phase"] == "Pending"
    assert pending.body["status"]["takeover"]["originalSelector"] == {"app": "web"}
    assert order[takeover + 1 :] == [
        ("delete", "EndpointSlice", "web-abcde"),
        ("delete", "Endpoints", "web"),
    ]
    patch = todo.writes[takeover].body
    assert patch is not None and patch["spec"] == {"selector": None}
    saved = patch["metadata"]["annotations"][marks.ANNOTATION_ORIGINAL_SELECTOR]
    assert json.loads(saved) == {"app": "web"}
    assert todo.writes[takeover + 2].forbidden_ok  # RBAC may forbid Endpoints deletes
    assert todo.status is not None and todo.status["takeover"]["phase"] == "TakenOver"
    apply(caches, todo)
    assert todo.memory is not None
    memory = dataclasses.replace(todo.memory, status=todo.status)
    _, again = run(caches, "default/p", memory, later(T0, 5))
    # The Endpoints delete is repeated until one finds it gone (it may come back).
    assert verbs(again.writes) == [("delete", "Endpoints", "web")]
    assert again.memory is not None
    gone = dataclasses.replace(again.memory, absent=frozenset({("Endpoints", "web")}))
    _, settled = run(caches, "default/p", gone, later(T0, 6))
    assert settled.writes == []
    assert settled.status is not None and settled.status["takeover"]["endpointsGone"] is True
    apply(caches, settled)
    assert settled.memory is not None
    memory = dataclasses.replace(settled.memory, status=settled.status)
    _, quiet = run(caches, "default/p", memory, later(T0, 10))
    assert quiet.writes == [] and quiet.status_write is None  # taken over: nothing to do


def test_deleting_a_takeover_policy_restores_the_selector_first() -> None:
    policy = make_policy(spec=TAKEOVER)
    caches = caches_with(policy, make_service(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    deleting = make_policy(spec=TAKEOVER, deleting=True)
    caches.policies.upsert(deleting)
    _, final = run(caches, "default/p", todo.memory, later(T0, 1))
    order = verbs(final.writes)
    assert order[0] == ("patch", "Service", "web")
    body = final.writes[0].body
    assert body is not None and body["spec"] == {"selector": {"app": "web"}}
    assert ("delete", "EndpointSlice", "web-aviator-ipv4-0") in order
    assert order[-1] == ("patch", "AviatorPolicy", "p")  # the finalizer goes last
    assert final.memory is None and final.status_write is None


def test_a_restored_selector_is_reported_not_fought() -> None:
    policy = make_policy(spec=TAKEOVER)
    svc = make_service(
        annotations={
            marks.ANNOTATION_TAKEN_OVER_BY: "p",
            marks.ANNOTATION_ORIGINAL_SELECTOR: json.dumps({"app": "web"}),
        }
    )  # has its selector again
    _, todo = run(caches_with(policy, svc, *four_pods()), "default/p", None, T0)
    assert not [w for w in todo.writes if w.resource.kind == "Service"]
    degraded = condition(todo.status, "Degraded")
    assert degraded["reason"] == "SelectorRestored"


def test_a_service_taken_over_by_a_gone_policy_is_adopted() -> None:
    policy = make_policy(spec=TAKEOVER)
    svc = make_service(
        selector={},
        annotations={
            marks.ANNOTATION_TAKEN_OVER_BY: "gone",
            marks.ANNOTATION_ORIGINAL_SELECTOR: json.dumps({"app": "web"}),
        },
    )
    caches = caches_with(policy, svc, *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    adopt = next(w for w in todo.writes if w.resource.kind == "Service")
    assert adopt.body == {"metadata": {"annotations": {marks.ANNOTATION_TAKEN_OVER_BY: "p"}}}
    holder = make_policy("gone", created="2025-01-01T00:00:00Z", spec=TAKEOVER)
    caches.policies.upsert(holder)
    _, blocked = run(caches, "default/p", None, T0)
    assert condition(blocked.status, "Ready")["reason"] == "Conflict"


# --- engine state: evaluations count intervals, state carries over -------------------


BREAKER = {
    "targetRef": {"name": "web"},
    "selection": {"mode": "percentage", "percentage": 100},
    "circuitBreaker": {"enabled": True, "p99Threshold": "100ms", "consecutiveViolations": 3},
}


def test_breaker_counts_evaluations_not_reconciles() -> None:
    caches = caches_with(make_policy(spec=BREAKER), make_service(), *four_pods())
    memory = None
    clock = T0
    ejected_at = None
    for i in range(12):
        # Four reconciles per interval (our own writes and pod churn wake us up).
        clock = later(T0, 1.25 * i)
        _, todo = run(caches, "default/p", memory, clock)
        apply(caches, todo)
        assert todo.memory is not None
        if todo.status is not None:
            memory = dataclasses.replace(todo.memory, status=todo.status)
        else:
            memory = dataclasses.replace(todo.memory, status=memory.status if memory else None)
        if ejected_at is None and any(e.reason == "PodEjected" for e in todo.events):
            ejected_at = i
    # Evaluations at 0, 5, 10 s (i = 0, 4, 8): ejected at the third, not the third reconcile.
    assert ejected_at == 8
    assert slice_pods(caches, "web-aviator") == {"fast-1", "fast-2"}


def test_a_new_leader_continues_from_the_persisted_engine_state() -> None:
    caches = caches_with(make_policy(spec=BREAKER), make_service(), *four_pods())
    memory = None
    for i in range(2):  # two violations counted by the first leader
        _, todo = run(caches, "default/p", memory, later(T0, 5.0 * i))
        apply(caches, todo)
        memory = todo.memory
    # Leadership moves: the new leader has no memory, only the policy's status.
    persisted = caches.policies.get("default/p")
    assert persisted is not None and persisted["status"]["engineState"]
    _, todo = run(caches, "default/p", None, later(T0, 10.0))
    # The third violation in a row, counted across the change of leader.
    assert sorted(
        (e.related or {}).get("metadata", {}).get("name", "")
        for e in todo.events
        if e.reason == "PodEjected"
    ) == [
        "slow-1",
        "slow-2",
    ]
    # ... and inherits the published set rather than starting from nothing.
    assert todo.status is not None and todo.status["activePods"] == 2


def test_between_evaluations_a_pod_that_stops_serving_is_replaced_at_once() -> None:
    policy = make_policy(
        spec={"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 2}}
    )
    caches = caches_with(policy, make_service(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    caches.pods.upsert(make_pod("fast-1", "10.0.0.1", ready=False))
    _, again = run(caches, "default/p", todo.memory, later(T0, 1.0))  # not due
    apply(caches, again)
    assert "fast-1" not in slice_pods(caches, "web-aviator")
    assert len(slice_pods(caches, "web-aviator")) == 2


# --- properties ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(1, 5000)), min_size=1, max_size=12),
    st.sampled_from(["topN", "percentage", "threshold", "prequal"]),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_published_pods_are_eligible_and_never_none_while_one_is(
    ms: list[float | None], mode: str, ready: list[bool]
) -> None:
    pods = [make_pod(f"p{i}", f"10.0.2.{i}", ready=ready[i]) for i in range(len(ms))]
    policy = make_policy(spec={"targetRef": {"name": "web"}, "selection": {"mode": mode}})
    caches = caches_with(policy, make_service(), *pods)
    view = gather(caches, policy)
    latencies = latencies_of({f"p{i}": v for i, v in enumerate(ms)})
    todo = plan(view, memory_for(view, None), T0, latencies)
    apply(caches, todo)
    published = slice_pods(caches, "web-aviator")
    eligible = {p["metadata"]["name"] for p in pods if ready[int(p["metadata"]["name"][1:])]}
    assert published <= eligible
    assert bool(published) == bool(eligible)
