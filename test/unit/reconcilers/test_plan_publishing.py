"""What a plan publishes besides the chosen pods: terminating pods that still serve
when nothing else does, topology hints, hostnames, the headless label. Without a
cluster: caches → View → plan → Plan, as in test_plan.py (whose helpers these are)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from reconciler_objects import make_pod, make_service
from test_plan import (
    T0,
    apply,
    caches_with,
    condition,
    latencies_of,
    later,
    make_policy,
    run,
)

from aviator.informers import Indexer
from aviator.kube import marks
from aviator.reconcilers.memory import memory_for
from aviator.reconcilers.plan import plan
from aviator.reconcilers.slices import LABEL_HEADLESS
from aviator.reconcilers.view import Caches, gather

JSON = dict[str, Any]
TOP1 = {"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 1}}


def endpoints_of(caches: Caches, service: str) -> dict[str, JSON]:
    return {
        ep["targetRef"]["name"]: ep
        for sl in caches.slices.list()
        if sl["metadata"]["labels"].get(marks.LABEL_SERVICE_NAME) == service
        for ep in sl.get("endpoints") or []
    }


def test_a_rollout_with_nothing_ready_publishes_the_old_pod_while_it_serves() -> None:
    # Recreate, or maxUnavailable=1 on one replica: the old pod is terminating (still
    # Ready) and the new one is not ready yet.
    policy = make_policy(spec=TOP1)
    old = make_pod("web-old", "10.0.0.1")
    caches = caches_with(policy, make_service(), old)
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    assert endpoints_of(caches, "web-aviator")["web-old"]["conditions"]["ready"] is True

    caches.pods.upsert(make_pod("web-old", "10.0.0.1", terminating=True))
    caches.pods.upsert(make_pod("web-new", "10.0.0.2", ready=False))
    _, todo = run(caches, "default/p", todo.memory, later(T0, 1))
    apply(caches, todo)
    eps = endpoints_of(caches, "web-aviator")
    assert list(eps) == ["web-old"]
    assert eps["web-old"]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    ready = condition(todo.status, "Ready")
    assert ready["reason"] == "NoEligiblePods" and "terminating" in ready["message"]
    assert todo.status is not None and todo.status["activePods"] == 1
    rows = {r["name"]: r for r in todo.status["pods"]}
    assert rows["web-old"]["state"] == "active" and rows["web-new"]["state"] == "standby"

    # The new pod is ready: it alone serves, at once (not at the next interval).
    caches.pods.upsert(make_pod("web-new", "10.0.0.2"))
    _, todo = run(caches, "default/p", todo.memory, later(T0, 2))
    apply(caches, todo)
    assert list(endpoints_of(caches, "web-aviator")) == ["web-new"]
    assert condition(todo.status, "Ready")["status"] == "True"

    # Once the old pod stops serving as well, nothing is left of it.
    caches.pods.upsert(make_pod("web-old", "10.0.0.1", terminating=True, ready=False))
    _, todo = run(caches, "default/p", todo.memory, later(T0, 3))
    apply(caches, todo)
    assert list(endpoints_of(caches, "web-aviator")) == ["web-new"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=10))
def test_never_an_empty_service_while_a_pod_serves(flags: list[tuple[bool, bool]]) -> None:
    pods = [
        make_pod(f"p{i}", f"10.0.3.{i}", ready=ready, terminating=terminating)
        for i, (ready, terminating) in enumerate(flags)
    ]
    policy = make_policy(spec={"targetRef": {"name": "web"}})
    caches = caches_with(policy, make_service(), *pods)
    view = gather(caches, policy)
    todo = plan(view, memory_for(view, None), T0, latencies_of({}))
    apply(caches, todo)
    published = set(endpoints_of(caches, "web-aviator"))
    eligible = {f"p{i}" for i, (r, t) in enumerate(flags) if r and not t}
    serving = {f"p{i}" for i, (r, _) in enumerate(flags) if r}
    if eligible:
        assert published <= eligible and published
    else:
        assert published == serving  # the terminating ones still serving, or none


def caches_with_nodes(*objs: JSON, nodes: list[JSON]) -> Caches:
    caches = caches_with(*objs)
    caches.nodes = Indexer()
    for node in nodes:
        caches.nodes.upsert(node)
    return caches


def node(name: str, zone: str, cpu: str = "4") -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {marks.LABEL_ZONE: zone}},
        "status": {
            "allocatable": {"cpu": cpu},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_a_taken_over_service_keeps_prefer_close_hints_and_hostnames() -> None:
    policy = make_policy(
        spec={
            "targetRef": {"name": "db"},
            "routing": {"mode": "takeover"},
            "selection": {"mode": "percentage", "percentage": 100},
        }
    )
    svc = make_service("db")
    svc["spec"].update(trafficDistribution="PreferClose", clusterIP="None")
    pods = [make_pod(f"db-{i}", f"10.0.4.{i}", node=f"n{i}") for i in range(2)]
    for i, pod in enumerate(pods):
        pod["spec"].update(hostname=f"db-{i}", subdomain="db")
    caches = caches_with_nodes(
        policy, svc, *pods, nodes=[node("n0", "zone-a"), node("n1", "zone-b")]
    )
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    eps = endpoints_of(caches, "db")
    assert {n: ep["hints"]["forZones"] for n, ep in eps.items()} == {
        "db-0": [{"name": "zone-a"}],
        "db-1": [{"name": "zone-b"}],
    }
    assert {n: ep["hostname"] for n, ep in eps.items()} == {"db-0": "db-0", "db-1": "db-1"}
    (sl,) = caches.slices.list()
    assert sl["metadata"]["labels"][LABEL_HEADLESS] == ""
    # Converged: the same inputs write nothing more.
    _, again = run(caches, "default/p", todo.memory, later(T0, 5))
    assert not [w for w in again.writes if w.resource.kind == "EndpointSlice"]
    # The Service drops trafficDistribution: the hints go.
    svc = copy.deepcopy(caches.services.get("default/db"))  # a new object, as a watch brings
    assert svc is not None
    del svc["spec"]["trafficDistribution"]
    caches.services.upsert(svc)
    _, todo = run(caches, "default/p", again.memory, later(T0, 6))
    apply(caches, todo)
    assert all("hints" not in ep for ep in endpoints_of(caches, "db").values())


def test_topology_mode_auto_allocates_by_zone_cpu() -> None:
    policy = make_policy(
        spec={"targetRef": {"name": "web"}, "selection": {"mode": "percentage", "percentage": 100}}
    )
    svc = make_service(annotations={"service.kubernetes.io/topology-mode": "Auto"})
    pods = [make_pod(f"p{i}", f"10.0.5.{i}", node="na" if i < 3 else "nb") for i in range(4)]
    nodes = [node("na", "zone-a", "2"), node("nb", "zone-b", "2")]
    caches = caches_with_nodes(policy, svc, *pods, nodes=nodes)
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    eps = endpoints_of(caches, "web-aviator")
    hints = {n: ep["hints"]["forZones"][0]["name"] for n, ep in eps.items()}
    # Equal CPU: two endpoints per zone; zone a gives its first endpoint to zone b.
    assert hints == {"p0": "zone-b", "p1": "zone-a", "p2": "zone-a", "p3": "zone-b"}
