"""Incremental evaluation: a reconcile that reuses what it built before (pod facts, each
window's estimate, each pod's engine input and status row, the memo of up-to-date
slices and status, a settled reconcile, a quiet policy's repeat of it) decides exactly
what a reconcile from scratch decides, over random sequences of changes (and a quiet
one is the very evaluation the kept path would have found); a memo whose key leaves
out something it depends on is caught; and what is remembered of pods and endpoints
that are gone is dropped."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reconciler_objects import make_pod, make_service
from test_plan import T0, apply, caches_with, later, make_policy

from aviator.informers import Indexer
from aviator.kube import marks
from aviator.kube.objects import JSON
from aviator.latency import histogram, window
from aviator.latency.histogram import Histogram, bucket_index
from aviator.latency.schema import EndpointWindow, Snapshot
from aviator.latency.store import LatencyStore
from aviator.reconcilers import evaluation, fixedpoint, reconciler, settled
from aviator.reconcilers import plan as plan_module
from aviator.reconcilers.latencies import PodLatencies, controller_prober, read_latencies
from aviator.reconcilers.memory import Clock, Memory, memory_for
from aviator.reconcilers.plan import Plan, measurement, plan
from aviator.reconcilers.podfacts import PodFacts
from aviator.reconcilers.quiet import Quiet
from aviator.reconcilers.reconciler import read_and_plan
from aviator.reconcilers.view import Caches, View, Views, gather
from aviator.selection.types import LatencyEstimate, PodInput

KEY = "default/p"
PODS = 4
# A window of one second over reports every half second: a pod that sends the same
# report again holds the same window (a steady pod), which is when estimates are reused.
WINDOW_S = 1.0
REPORT_S = 0.5
BREAKER = {"enabled": True, "p99Threshold": "40ms", "consecutiveViolations": 2}
SPECS: list[dict[str, Any]] = [
    {"selection": {"mode": "topN", "topN": 2}, "circuitBreaker": BREAKER},
    {"selection": {"mode": "percentage", "percentage": 50}, "circuitBreaker": BREAKER},
    # Evaluated every second: steady reports every second make it a quiet policy.
    {
        "selection": {"mode": "percentage", "percentage": 50},
        "evaluationInterval": "1s",
        "circuitBreaker": BREAKER,
    },
    {
        "selection": {"mode": "threshold"},
        "latencyThreshold": "30ms",
        "dampening": {"enabled": False},
        "circuitBreaker": {**BREAKER, "errorRatePercent": 20, "errorRateMinResponses": 5},
    },
]

# One report of a pod: (p99-ish latency in ms, requests in flight, errors of 20).
reports = st.tuples(st.sampled_from([5.0, 60.0, 20.0]), st.integers(0, 2), st.sampled_from([0, 10]))
report_steps = st.tuples(st.just("report"), st.dictionaries(st.integers(0, PODS - 1), reports))
changes = st.one_of(
    st.tuples(st.just("add"), st.integers(0, PODS - 1)),
    st.tuples(st.just("remove"), st.integers(0, PODS - 1)),
    st.tuples(st.just("ready"), st.integers(0, PODS - 1), st.booleans()),
    st.tuples(st.just("spec"), st.integers(0, len(SPECS) - 1)),
    st.tuples(st.just("tamper")),  # someone empties our slices
    st.tuples(st.just("elsewhere")),  # a pod no Service of ours selects changes
    st.tuples(st.just("zone"), st.booleans()),  # the pods' node moves to another zone
)
steps = st.one_of(
    report_steps,
    report_steps,  # reports twice as often as any other change
    st.tuples(st.just("repeat")),  # every pod sends what it sent last (a steady window)
    st.tuples(st.just("repeat")),
    changes,
    # A change the next reports come with: a reconcile that finds the pods' windows
    # saying what they said, but the cluster changed (a quiet policy no longer is).
    st.tuples(st.just("and-repeat"), changes),
)
# Each step, then a reconcile this many seconds later (0: at the same instant; 40: past
# the staleness bound, 30 s).
sequences = st.lists(st.tuples(steps, st.sampled_from([0.5, 0.0, 1.0, 3.0, 40.0])), max_size=12)


def pod(i: int, ready: bool = True) -> dict[str, Any]:
    return make_pod(f"p{i}", f"10.0.0.{i + 1}", ready=ready)


def node(moved: bool) -> JSON:
    """The pods' node, in zone-a (or zone-b once `moved`)."""
    zone = "zone-b" if moved else "zone-a"
    return {"kind": "Node", "metadata": {"name": "node-a", "labels": {marks.LABEL_ZONE: zone}}}


def policy(spec: int, generation: int) -> dict[str, Any]:
    return make_policy(spec={"targetRef": {"name": "web"}, **SPECS[spec]}, generation=generation)


def report_of(i: int, ms: float, rif: int, errors: int) -> EndpointWindow:
    us = int(ms * 1000)
    hist = Histogram.from_sparse({bucket_index(us): 20})
    ip = f"10.0.0.{i + 1}"
    return EndpointWindow(
        ip, 8080, "server", None, hist, 20, 20 * us, us, rif, 0, "http1", 20, errors
    )


async def reconcile(
    caches: Caches, store: LatencyStore, memory: Memory, clock: Clock, views: Views | None = None
) -> Any:
    """A reconcile from scratch: every latency read, every decision planned."""
    policy = caches.policies.get(KEY) or {}
    view = gather(caches, policy) if views is None else views.of(KEY, policy)
    needs = measurement(view, memory, clock)
    lat: PodLatencies | None = None
    if needs is not None and view.parsed is not None:
        lat = await read_latencies(
            view.parsed,
            needs[0],
            store,
            controller_prober(),
            clock.store,
            probe=needs[1],
            service=view.target,
            facts=view.facts,
        )
    return plan(view, memory, clock, lat), lat


def reconcile_kept(
    caches: Caches, store: LatencyStore, memory: Memory, clock: Clock, views: Views, quiet: Any
) -> Any:
    """A reconcile as the controller's: a quiet policy plans what it planned last."""
    view = views.of(KEY, caches.policies.get(KEY) or {})
    prober = controller_prober()
    return asyncio.run(read_and_plan(view, memory, clock, store, prober, quiet))


def decided(todo: Plan) -> object:
    """Everything a plan decides (writes, Events, status, gauges, what to remember)."""
    mem = todo.memory
    outcome = None if mem is None or mem.outcome is None else mem.outcome
    return (
        [(w.verb, w.resource.kind, w.name, w.body) for w in todo.writes],
        [(e.reason, e.message, e.type) for e in todo.events],
        todo.status,
        None if todo.status_write is None else todo.status_write.body,
        todo.gauges,
        todo.requeue_after,
        None
        if outcome is None
        else (outcome.active, outcome.states, outcome.reasons, outcome.engine_state),
        None if mem is None else (mem.engine_state, mem.stalled, mem.next_evaluation),
    )


def estimates(lat: PodLatencies | None) -> object:
    """The estimates and when each was reported (equality leaves out times)."""
    if lat is None:
        return None
    return {n: (e, lat.reported.get(n)) for n, e in lat.by_pod.items()}


def disagreement(sequence: list[tuple[tuple[Any, ...], float]]) -> str | None:
    """Runs `sequence` twice side by side: kept caches, store and memos (the
    controller), and everything from scratch before each reconcile (new pod objects,
    a store that replays every report into new windows, no memo of slices or status).
    What the first step where they differ differs in, or None."""
    present = {0, 1, 2}
    spec, generation = 0, 1
    kept = caches_with(policy(spec, generation), make_service(), *(pod(i) for i in present))
    kept.nodes = nodes = Indexer()
    nodes.upsert(node(False))
    store = LatencyStore(WINDOW_S, 30.0)
    log: list[tuple[Snapshot, float]] = []
    last: dict[int, EndpointWindow] = {}
    memory: Memory | None = None
    quiet: Quiet | None = None
    views = Views(kept)
    clock = T0

    def ingest(windows: list[EndpointWindow]) -> None:
        if windows:
            snap = Snapshot("node-a", "ebpf", clock.store, REPORT_S, tuple(windows))
            store.ingest_snapshot(snap, clock.store)
            log.append((snap, clock.store))

    def take(step: tuple[Any, ...]) -> None:
        nonlocal spec, generation
        kind = step[0]
        if kind == "and-repeat":  # a change, and every pod reports what it last did
            take(step[1])
            take(("repeat",))
        elif kind == "report":
            last.update({i: report_of(i, *r) for i, r in step[1].items()})
            ingest([last[i] for i in step[1]])
        elif kind == "repeat":
            ingest(list(last.values()))
        elif kind == "add":
            present.add(step[1])
            kept.pods.upsert(pod(step[1]))
        elif kind == "remove":
            present.discard(step[1])
            kept.pods.delete(f"default/p{step[1]}")
        elif kind == "ready" and step[1] in present:
            kept.pods.upsert(pod(step[1], step[2]))
        elif kind == "tamper":
            for sl in kept.slices.list():
                kept.slices.upsert({**sl, "endpoints": []})
        elif kind == "zone":
            nodes.upsert(node(step[1]))
        elif kind == "elsewhere":
            kept.pods.upsert(make_pod("other", "10.0.9.1", labels={"app": "other"}))
        elif kind == "spec":
            spec, generation = step[1], generation + 1
            current = kept.policies.get(KEY) or {}
            new = policy(spec, generation)
            new["status"] = copy.deepcopy(current.get("status"))
            kept.policies.upsert(new)

    ingest([report_of(i, 10.0 + i, 0, 0) for i in present])
    for n, (step, dt) in enumerate(sequence):
        # Halfway to the reconcile: a report comes between two evaluations (at the
        # instant of the last one when `dt` is 0).
        clock = later(clock, dt / 2)
        take(step)
        clock = later(clock, dt - dt / 2)

        fresh = caches_with(
            *(
                copy.deepcopy(o)
                for o in (
                    *kept.policies.list(),
                    *kept.services.list(),
                    *kept.pods.list(),
                    *kept.slices.list(),
                )
            )
        )
        fresh.nodes = Indexer()
        for n_obj in nodes.list():
            fresh.nodes.upsert(copy.deepcopy(n_obj))
        replayed = LatencyStore(WINDOW_S, 30.0)
        for snap, at in log:
            replayed.ingest_snapshot(snap, at)
        view = views.of(KEY, kept.policies.get(KEY) or {})
        mem = memory_for(view, memory)
        scratch = mem.without_memos()
        got, got_lat, quiet = reconcile_kept(kept, store, mem, clock, views, quiet)
        want, want_lat = asyncio.run(reconcile(fresh, replayed, scratch, clock))
        if got_lat is None and measurement(view, mem, clock) is not None:
            # A quiet policy's reconcile (it read no latencies): the very evaluation
            # the kept path would have found, its fixed point's outcome.
            full, _ = asyncio.run(reconcile(kept, store, mem, clock, views))
            assert full.memory is not None and got.memory is not None
            if full.memory.outcome is not got.memory.outcome:
                return f"step {n} {step}: quiet, but not the same evaluation"
        elif estimates(got_lat) != estimates(want_lat):
            return f"step {n} {step}: estimates"
        if decided(got) != decided(want):
            return f"step {n} {step}: decisions"
        apply(kept, got)
        memory = got.memory
        if memory is not None and got.status is not None:  # as the reconciler keeps it
            memory = dataclasses.replace(memory, status=got.status)
    return None


# Sequences where a memo whose key left out one dependency would reuse what it must
# not: a steady window whose requests in flight changed (estimate), an evaluation at
# the same instant, forced by a spec change, where the same estimate is no longer
# fresh (engine input). The property runs them first, every time.
SAME_WINDOW_OTHER_RIF = [
    *[(("report", {0: (5.0, 0, 0)}), 0.5)] * 3,
    (("report", {0: (5.0, 1, 0)}), 0.5),
]
SAME_ESTIMATE_NO_LONGER_FRESH = [(("report", {0: (60.0, 0, 0)}), 0.5), (("spec", 1), 0.0)]
# A pod ejected for its p99 keeps reporting the same (within the 1 s window): the
# evaluations change nothing until its recovery wait (30 s) is over and the breaker
# reads the clock (half-open).
EJECTED_THEN_UNCHANGED = [
    (("report", {0: (60.0, 0, 0), 1: (5.0, 0, 0), 2: (5.0, 0, 0)}), 0.5),
    *[(("repeat",), 0.5)] * 80,
]
# Settled reconciles (nothing to do), then a pod that does not serve reports
# other figures (its status row changes, nothing else); then someone empties our slices
# (nothing else changes: only the cluster read tells).
ONE = {0: (5.0, 0, 0), 1: (5.0, 0, 0)}
SETTLED_THEN_ONE_ROW = [
    (("report", {**ONE, 2: (60.0, 0, 0)}), 0.5),
    *[(("repeat",), 0.5)] * 4,
    (("report", {**ONE, 2: (20.0, 0, 0)}), 0.5),
    (("report", {**ONE, 2: (20.0, 0, 0)}), 0.5),
]
# Steady reports at every other evaluation (pod 3 is not there: making it ready does
# nothing): fresh data, then none, in turn; an ejection along the way.
FRESH_EVERY_OTHER_EVALUATION = [
    (("report", {**ONE, 2: (60.0, 0, 0)}), 0.5),
    *[(("repeat",), 0.5), (("ready", 3, True), 0.5)] * 6,
]
SETTLED_THEN_TAMPERED = [
    (("report", {**ONE, 2: (60.0, 0, 0)}), 0.5),
    *[(("repeat",), 0.5)] * 4,
    (("tamper",), 0.0),
]
# A policy evaluated every second whose pods report the same every second: quiet
# (aviator.reconcilers.quiet). Then what ends it, one at a time, quiet again between:
# a pod no longer ready and our slices emptied, each with the same reports (only the
# cluster read tells); an evaluation with no report since the last (not fresh); one
# before the interval is over (not due); an estimate that changed; data gone stale.
QUIET_THEN_EACH_CHANGE = [
    (("spec", 2), 0.0),
    (("report", {**ONE, 2: (20.0, 0, 0)}), 1.0),
    *[(("repeat",), 1.0)] * 3,
    (("and-repeat", ("elsewhere",)), 1.0),  # a new View, the same objects: quiet
    *[(("repeat",), 1.0)] * 3,
    (("and-repeat", ("zone", True)), 1.0),  # the same objects, another zone
    *[(("repeat",), 1.0)] * 3,
    (("and-repeat", ("ready", 2, False)), 1.0),
    *[(("repeat",), 1.0)] * 3,
    (("and-repeat", ("tamper",)), 1.0),
    *[(("repeat",), 1.0)] * 3,
    (("ready", 3, True), 1.0),  # pod 3 is not there: nothing changes, nothing reported
    *[(("repeat",), 1.0)] * 3,
    (("repeat",), 0.5),
    *[(("repeat",), 1.0)] * 3,
    (("report", {0: (5.0, 1, 0)}), 1.0),
    *[(("repeat",), 1.0)] * 3,
    (("repeat",), 40.0),
    *[(("repeat",), 1.0)] * 3,
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@example(SAME_WINDOW_OTHER_RIF)
@example(SAME_ESTIMATE_NO_LONGER_FRESH)
@example(EJECTED_THEN_UNCHANGED)
@example(SETTLED_THEN_ONE_ROW)
@example(SETTLED_THEN_TAMPERED)
@example(FRESH_EVERY_OTHER_EVALUATION)
@example(QUIET_THEN_EACH_CHANGE)
@given(sequences)
def test_the_incremental_path_decides_what_a_reconcile_from_scratch_decides(
    sequence: list[tuple[tuple[Any, ...], float]],
) -> None:
    assert disagreement(sequence) is None


# --- a memo whose key leaves out a dependency is caught -----------------------------


@contextmanager
def mutant(target: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, replacement)
    try:
        yield
    finally:
        setattr(target, name, original)


def latest_without_rif(self: window.Window) -> LatencyEstimate | None:
    """Window.latest with a key that leaves out the requests in flight."""
    qs = self.quantiles_us()
    key = (qs, self.total.count, self.oldest_open_us, self.source, self.statuses)
    key += (self.errors, self.protocol, self.keepwarm)
    held = self.memo
    if held is not None and held[0] == key:
        return held[1]
    built = window._estimate(qs, self.total.count, self.oldest_open_us, self)
    self.memo = (key, built)
    return built


def input_without_freshness(
    pod: PodFacts,
    latency: LatencyEstimate | None,
    fresh: bool,
    silent: bool = False,
    stale_after_s: float = 0.0,
) -> PodInput:
    """evaluation.pod_input with a key that leaves out whether the data is fresh."""
    for held in pod.inputs:
        if held[0] is latency and held[2] is silent:
            return held[3]
    built = evaluation.engine_input(pod, latency, fresh, silent)
    pod.inputs = ((latency, fresh, silent, built), *pod.inputs[:1])
    return built


def holds_without_estimates(
    self: settled.Settled, values: tuple[object, ...], estimates: object, p99_ms: float | None
) -> bool:
    """Settled.holds with a key that leaves out the estimates."""
    return self.p99_ms == p99_ms and self.values == values


ORIGINAL_CLUSTER_OF = settled.Cluster.of


def cluster_without_slices(view: View, status: JSON | None) -> settled.Cluster:
    """Cluster.of with a key that leaves out our slices."""
    return ORIGINAL_CLUSTER_OF(dataclasses.replace(view, slices=()), status)


ORIGINAL_MAY_HOLD = Quiet.may_hold


def may_hold_in_another_cluster(self: Quiet, view: View, memory: Memory, clock: Clock) -> bool:
    """Quiet.may_hold that leaves out the View (the cluster read)."""
    return ORIGINAL_MAY_HOLD(dataclasses.replace(self, view=view), view, memory, clock)


def same_cluster_whatever_the_zones(self: Quiet, view: View) -> bool:
    """Quiet.same_cluster that leaves out the zones (compares the objects only)."""
    return settled.Cluster(self.view, None).same(settled.Cluster(view, None))


def may_hold_before_due(self: Quiet, view: View, memory: Memory, clock: Clock) -> bool:
    """Quiet.may_hold that leaves out whether the engine is due."""
    return view is self.view and memory is self.memory


ORIGINAL_READ_MARKS = reconciler.read_marks


def marks_fresh_or_not(*args: Any, **kwargs: Any) -> tuple[int, ...] | None:
    """latencies.read_marks that leaves out whether each pod reported since `since`."""
    return ORIGINAL_READ_MARKS(*(args[:4]), -math.inf, *(args[5:]), **kwargs)


@pytest.mark.parametrize(
    ("target", "name", "replacement", "sequence"),
    [
        (window.Window, "latest", latest_without_rif, SAME_WINDOW_OTHER_RIF),
        (evaluation, "pod_input", input_without_freshness, SAME_ESTIMATE_NO_LONGER_FRESH),
        (fixedpoint, "timeless", lambda state: True, EJECTED_THEN_UNCHANGED),
        (settled.Settled, "holds", holds_without_estimates, SETTLED_THEN_ONE_ROW),
        (settled.Cluster, "of", staticmethod(cluster_without_slices), SETTLED_THEN_TAMPERED),
        (Caches, "mutations", lambda self: (), SETTLED_THEN_TAMPERED),
        (Quiet, "may_hold", may_hold_in_another_cluster, QUIET_THEN_EACH_CHANGE),
        (Quiet, "same_cluster", same_cluster_whatever_the_zones, QUIET_THEN_EACH_CHANGE),
        (Quiet, "may_hold", may_hold_before_due, QUIET_THEN_EACH_CHANGE),
        (reconciler, "read_marks", marks_fresh_or_not, QUIET_THEN_EACH_CHANGE),
    ],
    ids=[
        "estimate-key-without-rif",
        "input-key-without-freshness",
        "fixed-point-with-a-clock",
        "settled-without-estimates",
        "cluster-without-slices",
        "views-without-cache-changes",
        "quiet-in-another-cluster",
        "quiet-whatever-the-zones",
        "quiet-before-due",
        "quiet-without-freshness",
    ],
)
def test_a_memo_key_that_leaves_out_a_dependency_fails_the_property(
    target: Any,
    name: str,
    replacement: Callable[..., Any],
    sequence: list[tuple[tuple[Any, ...], float]],
) -> None:
    assert disagreement(sequence) is None
    with mutant(target, name, replacement):
        assert disagreement(sequence) is not None


# --- what a steady policy costs -------------------------------------------------------


def steady_run(reports_every: int, reconciles: int) -> tuple[int, int]:
    """A policy whose pods report the same every `reports_every` evaluations (its spec
    evaluates every 5 s): how often the engine ran, and how often a reconcile built
    status rows, over `reconciles` evaluations after the first few."""
    caches = caches_with(policy(0, 1), make_service(), *(pod(i) for i in range(3)))
    store = LatencyStore(15.0, 30.0)
    memory: Memory | None = None
    clock = T0
    counts = {"engine": 0, "rows": 0}
    engine, rows = evaluation.evaluate, plan_module.status_rows

    def counted_engine(*args: Any, **kwargs: Any) -> Any:
        counts["engine"] += 1
        return engine(*args, **kwargs)

    def counted_rows(*args: Any, **kwargs: Any) -> Any:
        counts["rows"] += 1
        return rows(*args, **kwargs)

    with (
        mutant(evaluation, "evaluate", counted_engine),
        mutant(plan_module, "status_rows", counted_rows),
    ):
        for n in range(reconciles + 4):
            if n == 4:
                counts.update(engine=0, rows=0)
            if n % reports_every == 0:
                windows = tuple(report_of(i, 10.0 + i, 0, 0) for i in range(3))
                snap = Snapshot("node-a", "ebpf", clock.store, 5.0, windows)
                store.ingest_snapshot(snap, clock.store)
            view = gather(caches, caches.policies.get(KEY) or {})
            todo, _ = asyncio.run(reconcile(caches, store, memory_for(view, memory), clock))
            apply(caches, todo)
            memory = todo.memory
            if memory is not None and todo.status is not None:
                memory = dataclasses.replace(memory, status=todo.status)
            clock = later(clock, 5.0)
    return counts["engine"], counts["rows"]


def test_a_steady_policy_neither_runs_the_engine_nor_builds_its_status_again() -> None:
    # Fresh data at every evaluation, or at every other one (reports a little slower
    # than the evaluations): the engine's fixed points hold, and nothing is rebuilt.
    assert steady_run(reports_every=1, reconciles=12) == (0, 0)
    assert steady_run(reports_every=2, reconciles=12) == (0, 0)


def test_a_steady_policy_due_every_second_is_quiet() -> None:
    # Pods that report the same every second to a policy evaluated every second: after
    # the evaluations that settle it, reconciles read only their windows' marks, and
    # a change elsewhere in the caches does not end it.
    caches = caches_with(policy(2, 1), make_service(), *(pod(i) for i in range(3)))
    store = LatencyStore(1.0, 30.0)
    views = Views(caches)
    memory: Memory | None = None
    quiet: Quiet | None = None
    clock = T0
    reads = {"latencies": 0}
    original = reconciler.read_latencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        reads["latencies"] += 1
        return await original(*args, **kwargs)

    with mutant(reconciler, "read_latencies", counted):
        for n in range(20):
            if n == 5:
                reads["latencies"] = 0
            clock = later(clock, 0.5)  # a report between two evaluations
            windows = tuple(report_of(i, 10.0 + i, 0, 0) for i in range(3))
            store.ingest_snapshot(
                Snapshot("node-a", "ebpf", clock.store, 1.0, windows), clock.store
            )
            clock = later(clock, 0.5)
            # A cache changes elsewhere: a new View, holding the same objects.
            caches.pods.upsert(make_pod("other", "10.0.9.1", labels={"app": f"other-{n}"}))
            view = views.of(KEY, caches.policies.get(KEY) or {})
            todo, _, quiet = reconcile_kept(
                caches, store, memory_for(view, memory), clock, views, quiet
            )
            apply(caches, todo)
            memory = todo.memory
            if memory is not None and todo.status is not None:
                memory = dataclasses.replace(memory, status=todo.status)
    assert reads["latencies"] == 0


def test_a_dual_stack_pods_other_address_measured_ends_its_policys_quiet() -> None:
    # The active set's p99 merges every address's windows, the marks only the first's:
    # a policy is quiet only while its pods' other addresses have none. Each reconcile
    # is held to the full path's from the same memory.
    pods = [make_pod(f"p{i}", [f"10.0.0.{i + 1}", f"fd00::{i + 1}"]) for i in range(3)]
    caches = caches_with(policy(2, 1), make_service(), *pods)
    store = LatencyStore(1.0, 30.0)
    views = Views(caches)
    memory: Memory | None = None
    quiet: Quiet | None = None
    clock = T0
    kinds = []
    for n in range(16):
        clock = later(clock, 0.5)
        windows = [report_of(i, 10.0 + i, 0, 0) for i in range(3)]
        if n >= 8:  # the pods' IPv6 addresses start to be measured, slow
            windows += [
                dataclasses.replace(report_of(i, 900.0, 0, 0), ip=f"fd00::{i + 1}")
                for i in range(3)
            ]
        store.ingest_snapshot(
            Snapshot("node-a", "ebpf", clock.store, 1.0, tuple(windows)), clock.store
        )
        clock = later(clock, 0.5)
        view = views.of(KEY, caches.policies.get(KEY) or {})
        mem = memory_for(view, memory)
        full, _ = asyncio.run(reconcile(caches, store, mem, clock, views))
        todo, lat, quiet = reconcile_kept(caches, store, mem, clock, views, quiet)
        kinds.append("full" if lat is not None else "quiet")
        assert decided(todo) == decided(full), n
        apply(caches, todo)
        memory = todo.memory
        if memory is not None and todo.status is not None:
            memory = dataclasses.replace(memory, status=todo.status)
    assert "quiet" in kinds[:8] and kinds[8] == "full"


# --- memory stays bounded ------------------------------------------------------------


def test_what_is_remembered_of_removed_pods_goes_with_them() -> None:
    pods = [pod(i) for i in range(4)]
    caches = caches_with(policy(0, 1), make_service(), *pods)
    store = LatencyStore(10.0, 30.0, forget_after_s=60.0)
    now = T0.store
    snap = Snapshot("node-a", "ebpf", now, 1.0, tuple(report_of(i, 10.0, 0, 0) for i in range(4)))
    store.ingest_snapshot(snap, now)
    view = gather(caches, policy(0, 1))
    asyncio.run(reconcile(caches, store, memory_for(view, None), T0))
    assert all(caches.facts.of(p).inputs for p in pods)  # inputs remembered
    for i in range(2, 4):
        caches.pods.delete(f"default/p{i}")
    caches.facts.prune()
    assert len(caches.facts) == 2  # the removed pods' facts, inputs and rows went
    # The windows (and the estimates they remember) of endpoints unheard of go.
    store.ingest_snapshot(
        Snapshot("node-a", "ebpf", now + 61, 1.0, (report_of(0, 10.0, 0, 0),)), now + 61
    )
    store.prune(now + 61)
    assert store.ips() == ["10.0.0.1"]


def test_the_quantile_ranks_remembered_are_bounded() -> None:
    for count in range(1, 3 * histogram._MAX_RANKS):
        Histogram.from_sparse({1: count, 2: 1}).quantiles((0.5, 0.9, 0.99))
        assert len(histogram._RANKS) <= histogram._MAX_RANKS
    h = Histogram.from_sparse({1: 5, 40: 5})
    assert h.quantiles((0.5, 0.99)) == h.quantiles([0.5, 0.99])  # remembered or not
