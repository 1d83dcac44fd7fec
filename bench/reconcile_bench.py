"""One reconcile of a large policy, in process: what an evaluation interval costs the
controller's CPU, with and without what it remembers between reconciles.

The real reconcile path (`view.Views` → `reconciler.read_and_plan`: the latencies and
the plan, or a quiet policy's marks) on
real informer indexers and a real latency store, fed one snapshot per node per second
as agents report; the plan's writes are applied back to the caches as the API server
would, so steady state is what the controller sees. No API server, no network: the
rows isolate evaluation from ingest and I/O (`controller_scale` measures the whole
process against a real API server).

Rows (one policy over 5,000 pods, percentage 50; quick: 500):

- steady: latencies stable (each pod's window adds the delta it expires);
- changing: every pod's latency moves every interval (new quantiles for every pod);
- the same two with nothing remembered (fresh caches and memory each reconcile: every
  pod object read afresh, no memo of slices or status), measured in the same run: the
  ratio is what incremental evaluation saves.

CPU time of the reconciling thread (`time.thread_time`), median of the measured
reconciles, so other load on the machine inflates it less than wall time. The
collector runs with the controller's settings (`runtime.gctune`), as in the process
the figures stand for.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import statistics
import time
from typing import Any

from aviator.kube import marks, mergepatch
from aviator.latency.histogram import Histogram, bucket_index
from aviator.latency.schema import EndpointWindow, Snapshot
from aviator.latency.store import LatencyStore
from aviator.reconcilers.latencies import controller_prober
from aviator.reconcilers.memory import Clock, Memory, memory_for
from aviator.reconcilers.plan import Plan
from aviator.reconcilers.quiet import Quiet
from aviator.reconcilers.reconciler import read_and_plan
from aviator.reconcilers.view import Caches, Views, gather
from aviator.runtime.gctune import tune_for_caches
from bench.common import pod_ip, row

JSON = dict[str, Any]
Row = dict[str, object]
NS = "bench"
KEY = f"{NS}/p"
PODS_PER_NODE = 100
SAMPLES = 50  # per pod per report
GOAL_MS = 100.0


def _pod(i: int) -> JSON:
    ip = pod_ip(i)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"web-{i:05d}",
            "namespace": NS,
            "uid": f"uid-{i}",
            "resourceVersion": str(i + 1),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "web"},
        },
        "spec": {
            "nodeName": f"node-{i // PODS_PER_NODE}",
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _objects(n: int) -> list[JSON]:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": NS, "uid": "uid-svc"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "clusterIP": "None",
        },
    }
    policy = {
        "apiVersion": "aviator.example.com/v1alpha1",
        "kind": "AviatorPolicy",
        "metadata": {
            "name": "p",
            "namespace": NS,
            "uid": "uid-p",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "finalizers": [marks.FINALIZER],
        },
        "spec": {
            "targetRef": {"name": "web"},
            "selection": {"mode": "percentage", "percentage": 50},
            "evaluationInterval": "1s",
        },
    }
    return [policy, service, *(_pod(i) for i in range(n))]


def _caches(objects: list[JSON]) -> Caches:
    caches = Caches.standalone()
    stores = {"AviatorPolicy": caches.policies, "Service": caches.services, "Pod": caches.pods}
    for obj in objects:
        stores[obj["kind"]].upsert(copy.deepcopy(obj))
    return caches


def _apply(caches: Caches, todo: Plan) -> None:
    """The plan's writes, as the API server would take them, into the caches (new
    objects, as a watch brings them)."""
    for w in [*todo.writes, *([todo.status_write] if todo.status_write else [])]:
        store = {
            "AviatorPolicy": caches.policies,
            "Service": caches.services,
            "EndpointSlice": caches.slices,
        }.get(w.resource.kind)
        if store is None:
            continue
        key = f"{w.namespace}/{w.name}"
        if w.verb == "delete":
            store.delete(key)
        elif w.verb in ("create", "replace"):
            assert w.body is not None
            store.upsert(copy.deepcopy(w.body))
        else:
            store.upsert(mergepatch.apply(store.get(key), w.body))


class Fleet:
    """One policy over `n` pods, their latency store, and the controller's memory."""

    def __init__(self, n: int, *, changing: bool, remember: bool, seed: int = 1) -> None:
        self.n = n
        self.changing = changing
        self.remember = remember
        self.rng = random.Random(seed)
        self.objects = _objects(n)
        self.caches = _caches(self.objects)
        self.views = Views(self.caches)  # as the controller keeps them
        self.store = LatencyStore(10.0, 30.0)
        self.base_ms = [self.rng.uniform(5.0, 50.0) for _ in range(n)]
        self.memory: Memory | None = None
        self.quiet: Quiet | None = None  # kept only when remembering
        self.now = 100.0
        self.prober = controller_prober()

    def report(self) -> None:
        """One second of agent reports: a snapshot per node."""
        self.now += 1.0
        by_node: dict[str, list[EndpointWindow]] = {}
        for i, ms in enumerate(self.base_ms):
            if self.changing:
                ms *= self.rng.uniform(0.7, 1.3)
            us = max(1, int(ms * 1000))
            hist = Histogram.from_sparse({bucket_index(us): SAMPLES})
            ip = pod_ip(i)
            window = EndpointWindow(ip, 8080, "server", None, hist, SAMPLES, us * SAMPLES, us, 0, 0)
            by_node.setdefault(f"node-{i // PODS_PER_NODE}", []).append(window)
        for node, windows in by_node.items():
            snap = Snapshot(node, "ebpf", self.now, 1.0, tuple(windows))
            self.store.ingest_snapshot(snap, self.now)

    def inputs(self) -> tuple[Caches, Memory | None]:
        """What the next reconcile reads: the kept caches and memory, or (nothing
        remembered) every object afresh and no memo."""
        if self.remember:
            return self.caches, self.memory
        caches = _caches([*self.caches.policies.list(), *self.caches.services.list()])
        for pod in self.caches.pods.list():
            caches.pods.upsert(copy.deepcopy(pod))
        for sl in self.caches.slices.list():
            caches.slices.upsert(copy.deepcopy(sl))
        memory = self.memory
        if memory is not None:
            memory = memory.without_memos()
        return caches, memory

    async def reconcile(self, caches: Caches, memory: Memory | None) -> Plan:
        policy = caches.policies.get(KEY)
        assert policy is not None
        view = self.views.of(KEY, policy) if caches is self.caches else gather(caches, policy)
        mem = memory_for(view, memory)
        # A reconcile comes at another moment of the agents' report second each time,
        # as in the controller: every estimate's age differs from the last one's.
        at = self.now + self.rng.uniform(0.0, 0.9)
        clock = Clock(1_800_000_000.0 + at, at)
        quiet = self.quiet if self.remember else None
        todo, _, self.quiet = await read_and_plan(view, mem, clock, self.store, self.prober, quiet)
        return todo

    def settle(self, todo: Plan) -> None:
        _apply(self.caches, todo)
        if todo.memory is not None and todo.status is not None:
            todo = dataclasses.replace(
                todo, memory=dataclasses.replace(todo.memory, status=todo.status)
            )
        self.memory = todo.memory


def cpu_ms_per_reconcile(n: int, *, changing: bool, remember: bool, runs: int) -> float:
    """Median CPU time of `runs` reconciles after the windows filled (a reconcile per
    second of reports)."""
    tune_for_caches()  # as the controller runs
    fleet = Fleet(n, changing=changing, remember=remember)

    async def go() -> float:
        for _ in range(12):  # the window (10 s) fills, the first writes land
            fleet.report()
            fleet.settle(await fleet.reconcile(*fleet.inputs()))
        times = []
        for _ in range(runs):
            fleet.report()
            caches, memory = fleet.inputs()  # outside the measured part
            start = time.thread_time()
            todo = await fleet.reconcile(caches, memory)
            times.append(time.thread_time() - start)
            fleet.settle(todo)
        return statistics.median(times) * 1000.0

    return asyncio.run(go())


def run(quick: bool) -> list[Row]:
    n, runs = (500, 5) if quick else (5_000, 9)
    rows: list[Row] = []
    for changing in (False, True):
        kind = "changing latencies" if changing else "steady latencies"
        kept = cpu_ms_per_reconcile(n, changing=changing, remember=True, runs=runs)
        fresh = cpu_ms_per_reconcile(n, changing=changing, remember=False, runs=runs)
        rows.append(
            row(
                "reconcile",
                f"1 policy x {n} pods, {kind}: CPU per reconcile",
                kept,
                "ms",
                goal=f"<= {GOAL_MS:.0f} ms (ratio <= 1)",
                ratio=kept / GOAL_MS,
                note=f"median of {runs}; nothing remembered: {fresh:.0f} ms "
                f"({kept / fresh:.2f} x of it)",
            )
        )
    return rows
