"""A policy whose due evaluation is the last one again, told without reading it all (pure).

In a steady fleet most evaluations change nothing: the engine's fixed point holds
(aviator.reconcilers.fixedpoint) and the reconcile is settled (aviator.reconcilers
.settled). Each still reads every pod's estimate, builds the engine's inputs, merges the
active set's windows for its p99 and compares it all with what it read last time, to
find that out. A quiet policy skips the finding out.

`Quiet` remembers such a reconcile: one that ran the engine when it was due, whose
outcome is a fixed point's, that wrote nothing and is settled, for a policy reading
agents' data without loads or latency-aware zones, every pod of which had an estimate
from one window (its first address's) reported since the evaluation before, and no
window on its other addresses (the active set's p99 merges them too). With it,
the window marks it read (aviator.latency.window `Window.mark`, via
`latencies.read_marks`). The next reconcile is that one again, and `Quiet.plan` is what
it plans, when (`Quiet.may_hold`, then `Quiet.holds` of the marks read):

- the View holds the same cache objects (the same View, or a new one after a change
  elsewhere) with the same zones, and the memory is the one that reconcile left (no
  write, nothing remembered since);
- the engine is due again;
- every pod's window has the same mark (the same estimate object, an equal total: the
  same engine input, the same p99 of the active set) and reported since the last
  evaluation (fresh, as every pod was at that evaluation), and none has gone stale.

Then the reconcile decides what the remembered one decided: the fixed point holds
(the same input objects, the same state, the same serving set, the same selection),
the routing and zones are the same (the same View), the estimates and the p99 are the
same (the settled reconcile holds again), and the only change is the evaluation's time.
Nothing else is read: not the clock (a fixed point leaves no record holding a time),
not the store's marks for pods without data (every pod has data), not loads, not probes.
"""

from __future__ import annotations

from aviator.reconcilers import locality
from aviator.reconcilers.decision import engine_due
from aviator.reconcilers.latencies import origin_of
from aviator.reconcilers.memory import Clock, Memory
from aviator.reconcilers.plan import Plan
from aviator.reconcilers.settled import Cluster
from aviator.reconcilers.view import View
from aviator.runtime.records import record


@record
class Quiet:
    """A reconcile that the next one may repeat (module docstring): its View, the memory
    it left, and the marks of the windows it read, one per eligible pod in order."""

    view: View
    memory: Memory
    marks: tuple[int, ...]

    @staticmethod
    def candidate(view: View, before: Memory, clock: Clock, todo: Plan) -> bool:
        """Whether the reconcile that planned `todo` from `before` may be remembered, the
        store aside (`latencies.read_marks` says the rest)."""
        parsed, after = view.parsed, todo.memory
        if parsed is None or after is None or todo.writes or todo.events:
            return False
        if todo.status_write is not None or todo.gauges is None:
            return False
        if origin_of(parsed) != "agent" or parsed.spec.selection.prequal.load is not None:
            return False
        if locality.policy_of(parsed.spec.topology) is not None:
            return False
        settled, outcome = after.settled, after.outcome
        return (
            settled is not None
            and outcome is not None
            and before.last_evaluation is not None
            and after.last_evaluation == clock.store  # the engine ran now
            and not after.absent
            and any(point.result is outcome for point in after.fixed_points)
            and settled.gauges is todo.gauges
            and settled.cluster.same(Cluster.of(view, after.status or view.policy.get("status")))
        )

    def may_hold(self, view: View, memory: Memory, clock: Clock) -> bool:
        """Whether `holds` may, before the marks are read."""
        return memory is self.memory and self.same_cluster(view) and engine_due(view, memory, clock)

    def same_cluster(self, view: View) -> bool:
        """Whether `view` reads what the remembered View read: the same object, or one
        holding the same cache objects (a cache changed elsewhere) whose zones, which
        the settled reconcile compares by value, are the same."""
        held = self.view
        if view is held:
            return True
        return (
            Cluster(held, None).same(Cluster(view, None))
            and view.pod_zones == held.pod_zones
            and view.zone_cpu == held.zone_cpu
            and view.client_zones == held.client_zones
        )

    def holds(self, marks: tuple[int, ...] | None) -> bool:
        """Whether a reconcile that `may_hold`, whose windows read `marks` (read since
        the last evaluation), is the remembered one again."""
        return marks == self.marks

    def plan(self, clock: Clock) -> Plan:
        """What the remembered reconcile, repeated at `clock`, plans: the same outcome,
        evaluated now (as `decision.decide` records it), the same gauges."""
        memory = self.memory
        assert memory.outcome is not None and memory.settled is not None
        parsed = self.view.parsed
        assert parsed is not None
        after = memory.evaluated(
            memory.outcome,
            int(memory.generation or 0),
            clock.store,
            clock.store + parsed.interval_s,
            memory.stalled,
            memory.fixed_points,
        )
        assert after.next_evaluation is not None
        requeue_after = max(0.0, after.next_evaluation - clock.store)
        return Plan(memory=after, gauges=memory.settled.gauges, requeue_after=requeue_after)
