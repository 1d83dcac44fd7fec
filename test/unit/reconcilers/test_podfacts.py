"""Pod facts read once per object version, and reused only while nothing they depend on
changed (aviator.reconcilers.podfacts, reporting.fact_row)."""

from __future__ import annotations

import copy
import dataclasses

from hypothesis import example, given, settings
from hypothesis import strategies as st
from reconciler_objects import make_pod, make_service
from test_plan import T0, apply, caches_with, latencies_of, later, make_policy

from aviator.informers import Indexer
from aviator.reconcilers.memory import memory_for
from aviator.reconcilers.plan import plan
from aviator.reconcilers.podfacts import PRUNE_SLACK, PodFactsMemo, pod_facts
from aviator.reconcilers.podindex import POD_INDEXERS
from aviator.reconcilers.reporting import fact_row, pod_row
from aviator.reconcilers.view import gather
from aviator.selection.types import LatencyEstimate


def memo_over(indexer: Indexer) -> PodFactsMemo:
    return PodFactsMemo(indexer.get, lambda: len(indexer))


def test_an_object_is_read_once_and_a_replaced_one_again() -> None:
    pods = Indexer(POD_INDEXERS)
    pod = make_pod("a", "10.0.0.1")
    pods.upsert(pod)
    memo = memo_over(pods)
    first = memo.of(pod)
    assert memo.of(pod) is first and memo.reads == 1
    assert (first.name, first.ips, first.node, first.eligible) == (
        "a",
        ("10.0.0.1",),
        "node-a",
        True,
    )

    updated = make_pod("a", "10.0.0.1", ready=False)  # the informer replaces the object
    pods.upsert(updated)
    again = memo.of(updated)
    assert again is not first and not again.eligible and memo.reads == 2


def test_entries_of_objects_the_cache_no_longer_holds_are_pruned() -> None:
    pods = Indexer(POD_INDEXERS)
    memo = memo_over(pods)
    live = make_pod("live", "10.0.0.1")
    pods.upsert(live)
    memo.of(live)
    for i in range(PRUNE_SLACK + 10):  # versions of a pod that churns, each replaced
        version = make_pod("churn", "10.0.0.2", labels={"v": str(i)})
        pods.upsert(version)
        memo.of(version)
    # Never more than twice the live pods plus the slack, and the live ones stay.
    assert len(memo) <= 2 * len(pods) + PRUNE_SLACK
    assert (
        memo.of(live) is memo.of(live) and memo.of(pods.get("default/churn") or {}).name == "churn"
    )


def test_ports_are_remembered_per_service_object() -> None:
    facts = pod_facts(make_pod("a", container_ports=[{"name": "web", "containerPort": 8080}]))
    calls: list[str] = []

    def compute(service: dict[str, object], pod: dict[str, object]) -> str:
        calls.append("x")
        return "answer"

    svc = make_service(ports=[{"port": 80, "targetPort": "web"}])
    assert facts.per_service("ports", svc, compute) == "answer"
    assert facts.per_service("ports", svc, compute) == "answer"
    assert len(calls) == 1
    facts.per_service("ports", copy.deepcopy(svc), compute)  # the Service changed: again
    assert len(calls) == 2


ESTIMATE = LatencyEstimate(10.0, 20.0, samples=50, age_s=0.1, p90_ms=15.0, source="ebpf")


def test_a_row_is_reused_while_only_the_estimates_age_changes() -> None:
    facts = pod_facts(make_pod("a", "10.0.0.1"))
    row = fact_row(facts, "active", ESTIMATE, "Selected")
    older = dataclasses.replace(ESTIMATE, age_s=3.0)
    assert fact_row(facts, "active", older, "Selected") is row
    assert fact_row(facts, "standby", older, "Selected") is not row
    slower = dataclasses.replace(ESTIMATE, p99_ms=25.0)
    assert fact_row(facts, "active", slower, "Selected").p99_ms == 25.0


estimates = st.one_of(
    st.none(),
    st.builds(
        LatencyEstimate,
        p50_ms=st.floats(0, 1e4),
        p99_ms=st.floats(0, 1e4),
        rif=st.integers(0, 100),
        samples=st.integers(0, 1000),
        age_s=st.floats(0, 100),
        statuses=st.integers(0, 1000),
        errors=st.integers(0, 1000),
        protocol=st.sampled_from(["", "http1", "h2", "grpc", "opaque"]),
    ),
)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["active", "standby", "ejected"]),
            st.none() | st.text(max_size=3),
            estimates,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_reused_row_is_the_row_built_afresh(
    steps: list[tuple[str, str | None, LatencyEstimate | None]],
) -> None:
    facts = pod_facts(make_pod("a", "10.0.0.1"))
    for state, reason, lat in steps:
        assert fact_row(facts, state, lat, reason) == pod_row(facts.pod, state, lat, reason)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["p0", "p1", "p2", "p3"]), st.sampled_from([5.0, 50.0, 500.0])
        ),
        min_size=1,
        max_size=5,
    ),
    st.sets(st.sampled_from(["p0", "p1", "p2", "p3"])),
)
# A pod that left the eligible ones still has an estimate, then none: the status's
# source changes, nothing else does.
@example(rounds=[{}, {}, {"p0": 5.0}, {"p0": 5.0}, {}], not_ready={"p0"})
def test_a_plan_with_remembered_facts_is_the_plan_read_afresh(
    rounds: list[dict[str, float]], not_ready: set[str]
) -> None:
    """Across reconciles, what the controller remembers (one Caches, and the memory's
    memo of up-to-date slices) plans exactly what fresh objects and no memo plan."""
    policy = make_policy(
        spec={"targetRef": {"name": "web"}, "selection": {"mode": "topN", "topN": 2}}
    )
    pods = [make_pod(f"p{i}", f"10.0.0.{i + 1}") for i in range(4)]
    kept = caches_with(policy, make_service(), *pods)
    memory = None
    clock = T0
    for i, ms in enumerate(rounds):
        if i == len(rounds) // 2:  # some pods change half way: their objects are replaced
            for name in not_ready:
                kept.pods.upsert(make_pod(name, f"10.0.0.{int(name[1]) + 1}", ready=False))
        objects = (
            *kept.policies.list(),
            *kept.services.list(),
            *kept.pods.list(),
            *kept.slices.list(),
        )
        fresh = caches_with(*(copy.deepcopy(o) for o in objects))
        lat = latencies_of(ms)
        view = gather(kept, kept.policies.get("default/p") or {})
        view_fresh = gather(fresh, fresh.policies.get("default/p") or {})
        got = plan(view, memory_for(view, memory), clock, lat)
        no_memo = memory_for(view_fresh, memory)
        no_memo = no_memo.without_memos()
        want = plan(view_fresh, no_memo, clock, lat)
        assert got.status == want.status
        assert [(w.verb, w.name, w.body) for w in got.writes] == [
            (w.verb, w.name, w.body) for w in want.writes
        ]
        apply(kept, got)
        memory = got.memory
        if memory is not None and got.status is not None:  # as the reconciler remembers it
            memory = dataclasses.replace(memory, status=got.status)
        clock = later(clock, 1.0)
