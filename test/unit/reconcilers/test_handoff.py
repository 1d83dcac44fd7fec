"""Which pods the controller hands off (routing.handoff), pure and through a plan."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st
from reconciler_objects import make_pod, make_service
from test_plan import (
    T0,
    TAKEOVER,
    apply,
    builtin_slice,
    caches_with,
    four_pods,
    later,
    make_policy,
    run,
)

from aviator.api.durations import Duration
from aviator.api.status import HandOffStatus
from aviator.api.types import HandOffSpec, RoutingMode
from aviator.reconcilers import handoff
from aviator.reconcilers.handoff import LINGER_S, iso, plan_handoffs

NOW = 1_800_000_000.0
NAMES = [f"p{i}" for i in range(6)]
SPEC = HandOffSpec(enabled=True, period=Duration.parse("5s"))


def pods() -> list[dict[str, object]]:
    out = [make_pod(n, f"10.0.0.{i + 1}", node=f"node-{i % 2}") for i, n in enumerate(NAMES)]
    out[4] = make_pod("p4", "10.0.0.5", terminating=True)
    out[5] = make_pod("p5", "10.0.0.6", phase="Pending")
    return out


@given(
    before=st.sets(st.sampled_from([*NAMES, "gone"])),
    after=st.sets(st.sampled_from(NAMES)),
    elsewhere=st.sets(st.sampled_from(NAMES)),
    published=st.booleans(),
    mode=st.sampled_from([RoutingMode.TAKEOVER, RoutingMode.SHADOW]),
    enabled=st.booleans(),
)
def test_only_running_pods_that_left_and_are_routed_nowhere_else(
    before: set[str],
    after: set[str],
    elsewhere: set[str],
    published: bool,
    mode: RoutingMode,
    enabled: bool,
) -> None:
    out = plan_handoffs(
        spec=dataclasses.replace(SPEC, enabled=enabled),
        mode=mode,
        before=before,
        after=after,
        published=published,
        pods=pods(),
        service=make_service(),
        routed_elsewhere=elsewhere,
        previous=[],
        now=NOW,
    )
    names = {e.pod for e in out}
    if not (enabled and mode == RoutingMode.TAKEOVER and published and after):
        assert names == set()
    assert names == (
        (before - after - elsewhere) & {"p0", "p1", "p2", "p3"}
        if enabled and mode == RoutingMode.TAKEOVER and published and after
        else set()
    )
    for e in out:
        assert e.ports == [8080] and e.node in ("node-0", "node-1")
        assert (e.since, e.until) == (iso(NOW), iso(NOW + 5))


def entry(pod: str, until: float) -> HandOffStatus:
    return HandOffStatus(
        pod=pod, node="node-0", ip="10.0.0.1", ports=[8080], since=iso(until - 5), until=iso(until)
    )


def test_entries_last_their_period_and_linger_unless_the_pod_returns() -> None:
    kw = dict(
        spec=SPEC,
        mode=RoutingMode.TAKEOVER,
        before={"p1"},
        after={"p1"},
        published=False,
        pods=pods(),
        service=make_service(),
        routed_elsewhere=set(),
    )
    kept = [entry("p0", NOW + 1), entry("p2", NOW - LINGER_S + 1)]
    dropped = [entry("p3", NOW - LINGER_S - 1)]
    assert plan_handoffs(**kw, previous=kept + dropped, now=NOW) == kept  # type: ignore[arg-type]
    # Routed again (here or by another policy of the Service): dropped at once.
    back = dict(kw, after={"p1", "p0"}, routed_elsewhere={"p2"})
    assert plan_handoffs(**back, previous=kept, now=NOW) == []  # type: ignore[arg-type]
    assert handoff.next_expiry(kept, NOW) == 1.0


def test_a_deselected_pod_is_handed_off_in_takeover_with_an_event() -> None:
    everyone = {**TAKEOVER, "selection": {"mode": "topN", "topN": 4}}
    caches = caches_with(make_policy(spec=everyone), make_service(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    assert todo.status is not None and todo.status["handOffs"] == []
    caches.policies.upsert(make_policy(spec=TAKEOVER, generation=2))  # topN 2: slow go
    memory = dataclasses.replace(todo.memory, status=todo.status)  # type: ignore[arg-type]
    _, again = run(caches, "default/p", memory, later(T0, 1))
    assert again.status is not None
    assert [(e["pod"], e["ip"], e["ports"], e["node"]) for e in again.status["handOffs"]] == [
        ("slow-1", "10.0.1.1", [8080], "node-a"),
        ("slow-2", "10.0.1.2", [8080], "node-a"),
    ]
    assert [e.reason for e in again.events].count("HandOffStarted") == 2
    assert again.requeue_after is not None and again.requeue_after <= 5 + LINGER_S
    apply(caches, again)
    memory = dataclasses.replace(again.memory, status=again.status)  # type: ignore[arg-type]
    # Within the period the entries stay, without new events; after it, they go.
    _, during = run(caches, "default/p", memory, later(T0, 3))
    assert during.status_write is None and "HandOffStarted" not in [e.reason for e in during.events]
    _, after = run(caches, "default/p", memory, later(T0, 1 + 5 + LINGER_S + 1))
    assert after.status is not None and after.status["handOffs"] == []


def test_shadow_mode_hands_nothing_off() -> None:
    everyone = {"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 4}}
    caches = caches_with(make_policy(spec=everyone), make_service(), *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    apply(caches, todo)
    spec = {"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 2}}
    caches.policies.upsert(make_policy(spec=spec, generation=2))
    memory = dataclasses.replace(todo.memory, status=todo.status)  # type: ignore[arg-type]
    _, again = run(caches, "default/p", memory, later(T0, 1))
    assert again.status is not None and again.status["handOffs"] == []


def test_taking_a_service_over_hands_off_the_pods_its_own_slices_routed() -> None:
    builtin = builtin_slice()
    builtin["endpoints"] = [
        {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"name": name}}
        for name, ip in (
            ("fast-1", "10.0.0.1"),
            ("fast-2", "10.0.0.2"),
            ("slow-1", "10.0.1.1"),
            ("slow-2", "10.0.1.2"),
        )
    ]
    caches = caches_with(make_policy(spec=TAKEOVER), make_service(), builtin, *four_pods())
    _, todo = run(caches, "default/p", None, T0)
    assert todo.status is not None
    assert [e["pod"] for e in todo.status["handOffs"]] == ["slow-1", "slow-2"]
