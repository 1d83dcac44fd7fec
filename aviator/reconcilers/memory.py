"""What a reconcile knows besides the cluster: the clocks it reads, and what the leader
remembers about a policy from one reconcile to the next (pure data).

`Memory` is the leader's and only the leader's: a new leader starts from
`memory_for(view, None)` and reads what it needs back from the policy's status and the
slices. A policy recreated under the same name (a new uid) starts afresh.
"""

from __future__ import annotations

from dataclasses import field, replace

from aviator.kube.objects import JSON
from aviator.reconcilers import takeover
from aviator.reconcilers.evaluation import Outcome
from aviator.reconcilers.fixedpoint import FixedPoint
from aviator.reconcilers.settled import Settled
from aviator.reconcilers.status import Observation
from aviator.reconcilers.view import View
from aviator.runtime.records import record


@record
class Clock:
    """Now, on the wall clock (status times, the engine) and on the latency store's
    monotonic clock (freshness, when the next evaluation is due)."""

    wall: float
    store: float


@record
class Memory:
    """What the leader remembers about a policy between reconciles."""

    uid: str
    engine_state: JSON | None = None
    status: JSON | None = None  # last status we wrote (the cache may lag behind it)
    last_evaluation: float | None = None  # store clock, for "fresh samples since"
    next_evaluation: float | None = None  # store clock: when the engine may run again
    generation: int | None = None  # spec generation of `outcome`
    outcome: Outcome | None = None  # the last engine result
    # (kind, name) of objects the last reconcile's deletes found already gone (or
    # were not allowed to delete): a delete that must hold is repeated until then.
    absent: frozenset[tuple[str, str]] = frozenset()
    # Pods with a request open longer than p99Threshold at the last evaluation.
    stalled: frozenset[str] = frozenset()
    # What the slices were last found up to date for (the publishing inputs, the routed
    # pod objects and their zones, the slice objects): the same inputs need no look.
    # Objects compare by identity first, so an unchanged cache costs one pass.
    slices_current: tuple[object, ...] | None = field(default=None, compare=False)
    # (the status held, what it was found up to date with): while both are the same,
    # the status needs no look (`status_write` would find it unchanged).
    status_current: tuple[JSON, Observation] | None = field(default=None, compare=False)
    # The last evaluations that were fixed points (reconcilers/fixedpoint.py).
    fixed_points: tuple[FixedPoint, ...] = field(default=(), compare=False)
    # The last reconcile, if it changed nothing (reconcilers/settled.py).
    settled: Settled | None = field(default=None, compare=False)

    def without_memos(self) -> Memory:
        """This memory without what only saves work (the memos above): a reconcile from
        it decides what one from this memory decides, from scratch."""
        return replace(
            self, slices_current=None, status_current=None, fixed_points=(), settled=None
        )

    def evaluated(
        self,
        outcome: Outcome,
        generation: int,
        at: float,
        next_at: float,
        stalled: frozenset[str],
        fixed_points: tuple[FixedPoint, ...],
    ) -> Memory:
        """This memory after an evaluation at `at` (the store's clock): `replace` with
        those fields, made directly (every evaluation makes one; `replace` costs
        several times a constructor). `test_memory.py` holds it to carrying every
        other field."""
        return Memory(
            uid=self.uid,
            engine_state=outcome.engine_state,
            status=self.status,
            last_evaluation=at,
            next_evaluation=next_at,
            generation=generation,
            outcome=outcome,
            absent=self.absent,
            stalled=stalled,
            slices_current=self.slices_current,
            status_current=self.status_current,
            fixed_points=fixed_points,
            settled=self.settled,
        )

    def record(self, view: View) -> takeover.Record | None:
        """The takeover record: what we last wrote, else what the cache holds."""
        return takeover.record_of(self.status) if self.status is not None else view.record


def memory_for(view: View, remembered: Memory | None) -> Memory:
    uid = str(view.policy["metadata"].get("uid", ""))
    return remembered if remembered is not None and remembered.uid == uid else Memory(uid=uid)
