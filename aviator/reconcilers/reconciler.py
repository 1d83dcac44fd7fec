"""The AviatorPolicy reconciler: read, plan, act.

One reconcile of a policy key:

1. read: the policy and everything around it from the informer caches (`view.gather`;
   the last View again while neither the policy nor any cache changed, `view.Views`),
   then the latency of its eligible pods from the latency store
   (`latencies.read_latencies`; probe mode first sends a round of probes into the
   store when an evaluation is due);
2. plan: every decision, pure (`plan.plan`, whose docstring is the reconcile's
   contract); a quiet policy (`quiet.Quiet`: its due evaluation is the last one again,
   told by the marks of its pods' windows) skips reading its latencies and planning,
   and plans what the last reconcile did, evaluated now (`read_and_plan`);
3. act: the plan's writes in order through the metered `Writer`, its Events, its
   status, its gauges; remember what the next reconcile needs.

Reads only from informer caches; writes only what the plan says changed; asks to be
requeued after `evaluationInterval`. Retries, conflicts (`CacheBehind`) and reconcile
metrics belong to the loop (`aviator.runtime.loop`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from aviator.latency.probing import HttpProber
from aviator.latency.store import LatencyStore
from aviator.reconcilers.latencies import (
    PodLatencies,
    controller_prober,
    read_latencies,
    read_marks,
)
from aviator.reconcilers.memory import Clock, Memory, memory_for
from aviator.reconcilers.metrics import PolicyMetrics
from aviator.reconcilers.plan import Plan, measurement, plan
from aviator.reconcilers.quiet import Quiet
from aviator.reconcilers.view import Caches, View, Views
from aviator.runtime.events import EventRecorder
from aviator.runtime.loop import Result
from aviator.runtime.writer import Writer


class PolicyReconciler:
    def __init__(
        self,
        writer: Writer,
        caches: Caches,
        store: LatencyStore,
        recorder: EventRecorder,
        metrics: PolicyMetrics,
        *,
        prober: HttpProber | None = None,
        wall_clock: Callable[[], float] = time.time,
        store_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.caches = caches
        self.store = store
        self.recorder = recorder
        self.metrics = metrics
        self.prober = prober or controller_prober()
        self._wall = wall_clock
        self._store_now = store_clock
        self._memory: dict[str, Memory] = {}
        self._quiet: dict[str, Quiet] = {}
        self._views = Views(caches)

    def forget_all(self) -> None:
        """Drop in-memory state (leadership lost: the next leader starts from status)."""
        self._memory.clear()
        self._quiet.clear()
        self._views.clear()

    def forget(self, key: str) -> None:
        """Drop one policy's in-memory state and gauges (it moved to another shard)."""
        self._forget(key)

    async def reconcile(self, key: str) -> Result | None:
        policy = self.caches.policies.get(key)
        if policy is None:
            self._forget(key)
            return None
        view = self._views.of(key, policy)
        memory = memory_for(view, self._memory.get(key))
        clock = Clock(self._wall(), self._store_now())
        todo, _, quiet = await read_and_plan(
            view, memory, clock, self.store, self.prober, self._quiet.pop(key, None)
        )
        if quiet is not None:
            self._quiet[key] = quiet
        return await self._act(key, todo)

    async def _act(self, key: str, todo: Plan) -> Result | None:
        # Memory.absent: what the plan's deletes found gone, for the next plan. In the
        # steady state (no write, nothing absent) the plan's memory is kept as it is.
        settled = todo.memory is not None and not todo.writes and not todo.memory.absent
        if todo.memory is None:
            self._forget(key)
        else:
            self._memory[key] = (
                todo.memory if settled else dataclasses.replace(todo.memory, absent=frozenset())
            )
        absent: set[tuple[str, str]] = set()
        for write in todo.writes:
            answer = await self.writer.apply(write)
            if write.verb == "delete" and answer is None:
                absent.add((write.resource.kind, write.name))
        if todo.memory is not None and not settled:
            self._memory[key] = dataclasses.replace(todo.memory, absent=frozenset(absent))
        policy = self.caches.policies.get(key)
        for ev in todo.events:
            if policy is not None:
                await self.recorder.record(
                    policy,
                    ev.reason,
                    ev.message,
                    action=ev.action,
                    event_type=ev.type,
                    related=ev.related,
                )
        if todo.status_write is not None:
            if todo.memory is not None:
                # Until this write is known to have landed, what the server holds is
                # the cache's to say (a lost answer may hide a landed write).
                self._memory[key] = dataclasses.replace(self._memory[key], status=None)
            await self.writer.apply(todo.status_write)
            if todo.memory is not None:
                self._memory[key] = dataclasses.replace(self._memory[key], status=todo.status)
        if todo.gauges is not None:
            namespace, _, name = key.partition("/")
            g = todo.gauges
            self.metrics.set(namespace, name, g.active, g.total, g.p99_ms)
            self.metrics.ejected(namespace, name, g.ejections)
        return None if todo.requeue_after is None else Result(requeue_after=todo.requeue_after)

    def _forget(self, key: str) -> None:
        self._memory.pop(key, None)
        self._quiet.pop(key, None)
        self._views.forget(key)
        namespace, _, name = key.partition("/")
        self.metrics.forget(namespace, name)


async def read_and_plan(
    view: View,
    memory: Memory,
    clock: Clock,
    store: LatencyStore,
    prober: HttpProber,
    quiet: Quiet | None,
) -> tuple[Plan, PodLatencies | None, Quiet | None]:
    """Read what the plan needs and plan, or, while `quiet` holds, plan what it planned
    (reading only its windows' marks). Returns the plan, the latencies read (None when
    none were), and what the next reconcile may repeat (None: nothing), which holds only
    while the caller keeps the plan's memory as it is."""
    parsed = view.parsed
    if quiet is not None and parsed is not None and quiet.may_hold(view, memory, clock):
        marks = read_marks(
            parsed,
            view.eligible,
            store,
            clock.store,
            memory.last_evaluation or 0.0,
            service=view.target,
            facts=view.facts,
        )
        if quiet.holds(marks):
            todo = quiet.plan(clock)
            assert todo.memory is not None
            return todo, None, dataclasses.replace(quiet, view=view, memory=todo.memory)
    needs = measurement(view, memory, clock)
    latencies = None
    if needs is not None and parsed is not None:
        pods, due = needs
        latencies = await read_latencies(
            parsed,
            pods,
            store,
            prober,
            clock.store,
            probe=due,
            service=view.target,
            facts=view.facts,
        )
    todo = plan(view, memory, clock, latencies)
    if parsed is None or todo.memory is None or not Quiet.candidate(view, memory, clock, todo):
        return todo, latencies, None
    assert memory.last_evaluation is not None  # Quiet.candidate
    marks = read_marks(
        parsed,
        view.eligible,
        store,
        clock.store,
        memory.last_evaluation,
        service=view.target,
        facts=view.facts,
    )
    return todo, latencies, None if marks is None else Quiet(view, todo.memory, marks)
