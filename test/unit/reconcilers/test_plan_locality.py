"""topology.mode latencyAware through plan(): zone hints on the slices, status.zones,
hysteresis counted in evaluations, writes only when a zone's state changes, and a new
leader continuing the counts from the status."""

from __future__ import annotations

import dataclasses
from typing import Any

from reconciler_objects import make_pod, make_service
from test_plan import T0, apply, caches_with, latencies_of, later, make_policy

from aviator.informers import Indexer
from aviator.reconcilers.memory import Clock, Memory, memory_for
from aviator.reconcilers.plan import Plan, measurement, plan
from aviator.reconcilers.view import Caches, gather
from aviator.selection.locality import PARKED_ZONE

JSON = dict[str, Any]
SPEC: JSON = {
    "targetRef": {"name": "web"},
    "selection": {"mode": "percentage", "percentage": 100},
    "topology": {"mode": "latencyAware", "marginPercent": 50, "spillAfter": 2, "returnAfter": 2},
}


def node(name: str, zone: str | None) -> JSON:
    labels = {"topology.kubernetes.io/zone": zone} if zone else {}
    return {"kind": "Node", "metadata": {"name": name, "labels": labels}}


def zoned_caches(zone_b: str | None = "b", spec: JSON = SPEC) -> Caches:
    pods = [make_pod(f"a-{i}", f"10.0.0.{i}", node="node-a") for i in (1, 2)]
    pods += [make_pod(f"b-{i}", f"10.0.1.{i}", node="node-b") for i in (1, 2)]
    caches = caches_with(make_policy(spec=spec), make_service(), *pods)
    caches.nodes = Indexer({})
    for n in (node("node-a", "a"), node("node-b", zone_b), node("node-c", "c")):
        caches.nodes.upsert(n)
    return caches


def step(caches: Caches, memory: Memory | None, clock: Clock, a_ms: float) -> Plan:
    lat = latencies_of({"a-1": a_ms, "a-2": a_ms, "b-1": 10.0, "b-2": 10.0})
    view = gather(caches, caches.policies.get("default/p") or {})
    mem = memory_for(view, memory)
    assert measurement(view, mem, clock) is not None
    todo = plan(view, mem, clock, lat)
    apply(caches, todo)
    return todo


def hints(caches: Caches) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for sl in caches.slices.list():
        for ep in sl.get("endpoints") or []:
            zones = [z["name"] for z in (ep.get("hints") or {}).get("forZones") or []]
            out[ep["targetRef"]["name"]] = zones
    return out


def zones(todo: Plan, memory_status: JSON | None) -> dict[str, tuple[str, str]]:
    status = todo.status or memory_status or {}
    return {r["zone"]: (r["state"], r["reason"]) for r in status.get("zones") or []}


def remember(todo: Plan, memory: Memory | None) -> Memory:
    assert todo.memory is not None
    status = todo.status if todo.status is not None else (memory.status if memory else None)
    return dataclasses.replace(todo.memory, status=status)


def slice_writes(todo: Plan) -> int:
    return sum(1 for w in todo.writes if w.resource.kind == "EndpointSlice")


def test_a_slow_zone_spills_after_n_evaluations_and_returns_after_m() -> None:
    caches = zoned_caches()
    todo = step(caches, None, T0, 10.0)
    memory = remember(todo, None)
    assert hints(caches) == {
        "a-1": ["a", "c"],
        "a-2": ["a", "c"],
        "b-1": ["b", "c"],
        "b-2": ["b", "c"],
    }
    assert zones(todo, None) == {
        "a": ("local", "WithinMargin"),
        "b": ("local", "WithinMargin"),
        "c": ("spilling", "NoRoutedPods"),
    }
    clock = T0
    writes = []
    for _ in range(3):
        clock = later(clock, 5.0)
        todo = step(caches, memory, clock, 100.0)
        memory = remember(todo, memory)
        writes.append(slice_writes(todo))
    assert writes == [0, 1, 0]  # the second evaluation over the margin spills, once
    assert hints(caches)["a-1"] == [PARKED_ZONE]
    assert hints(caches)["b-1"] == ["b", "a", "c"]
    assert zones(todo, memory.status)["a"] == ("spilling", "SlowerThanMargin")

    # Between evaluations (a pod event) nothing advances.
    todo = step(caches, memory, later(clock, 1.0), 10.0)
    assert slice_writes(todo) == 0

    # A new leader: no memory, the status in the cache carries the states.
    writes = []
    memory = None
    for _ in range(3):
        clock = later(clock, 5.0)
        todo = step(caches, memory, clock, 10.0)
        memory = remember(todo, memory)
        writes.append(slice_writes(todo))
    assert writes == [0, 1, 0]
    assert hints(caches)["a-1"] == ["a", "c"]
    assert zones(todo, memory.status)["a"] == ("local", "WithinMargin")


def test_pods_without_a_zone_mean_no_hints_and_a_problem() -> None:
    caches = zoned_caches(zone_b=None)
    todo = step(caches, None, T0, 10.0)
    assert all(z == [] for z in hints(caches).values())
    assert todo.status is not None
    degraded = next(c for c in todo.status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "TopologyUnavailable"
    assert "b-1" in degraded["message"]


def test_a_zone_turning_slow_between_evaluations_starts_its_count_at_the_look() -> None:
    """Every quarter interval a latency-aware policy is looked at: a local zone newly
    over the margin has its first count taken then (an evaluation like any other), so the
    spill comes spillAfter - 0.75 intervals after the latencies say so, not spillAfter."""
    caches = zoned_caches()
    todo = step(caches, None, T0, 10.0)
    memory = remember(todo, None)
    interval = 5.0  # evaluationInterval's default
    assert todo.requeue_after == interval / 4
    # A look that finds nothing new writes nothing and evaluates nothing.
    todo = step(caches, memory, later(T0, interval / 4), 10.0)
    assert not todo.writes and todo.status_write is None
    assert todo.memory is not None and todo.memory.last_evaluation == T0.store
    assert todo.requeue_after == interval / 4

    look = later(T0, interval / 2)
    todo = step(caches, memory, look, 100.0)
    memory = remember(todo, memory)
    assert slice_writes(todo) == 0
    assert memory.last_evaluation == look.store  # the count started at the look
    rows = {r["zone"]: r for r in (memory.status or {}).get("zones") or []}
    assert (rows["a"]["state"], rows["a"]["streak"]) == ("local", 1)
    assert todo.requeue_after == interval / 4

    # Looked at again: the count has started, nothing is newly over, nothing evaluates.
    todo = step(caches, memory, later(look, interval / 2), 100.0)
    memory = remember(todo, memory)
    assert memory.last_evaluation == look.store
    assert slice_writes(todo) == 0

    todo = step(caches, memory, later(look, interval), 100.0)
    assert slice_writes(todo) == 1
    assert hints(caches)["a-1"] == [PARKED_ZONE]


def test_a_spilling_zones_pods_hand_their_pooled_clients_off_until_it_returns() -> None:
    """Hints steer new connections only: a zone that spills hands its own pods' kept-alive
    clients off (they serve no zone's clients now), and the entries go when it returns."""
    spec = {**SPEC, "routing": {"mode": "takeover", "handoff": {"enabled": True}}}
    caches = zoned_caches(spec=spec)
    todo = step(caches, None, T0, 10.0)
    memory = remember(todo, None)
    clock = T0
    handed: list[list[str]] = []
    for a_ms in (100.0, 100.0, 100.0, 10.0, 10.0):
        clock = later(clock, 5.0)
        todo = step(caches, memory, clock, a_ms)
        memory = remember(todo, memory)
        handed.append([e["pod"] for e in (memory.status or {}).get("handOffs") or []])
    # Spilled at the second slow evaluation; home again at the second fast one.
    assert handed == [[], ["a-1", "a-2"], ["a-1", "a-2"], ["a-1", "a-2"], []]
