"""A reconcile that changed nothing, and when the next one is the same (pure).

A reconcile reads the cluster, decides routing, runs (or carries over) the engine's
decision and turns it into slices, hand-offs, Events and status rows
(aviator.reconcilers.plan). In a steady fleet nearly every reconcile finds nothing to
do, and most of its cost is in finding that out. `Settled` remembers a reconcile that
wrote nothing, recorded no Event, wrote no status and holds no hand-off, by everything
it read; the next reconcile skips what it would find the same:

- `Cluster`: every cache object of the `View` (by identity: an unchanged cache hands
  out the same object, an update is a new one; the same View object, which
  aviator.reconcilers.view `Views` hands out while no cache changed, holds the same
  ones) and the status the leader holds (by identity). The same cluster: the same finalizer, conflict, leftovers and routing as
  last time (`Settled.route`, which wrote nothing), so a reconcile reuses them.
- `Settled.holds(...)`: also the same decision (outcome, what served before, whether
  the engine ran where the zones read it), the same zones (of every selected pod's
  node, the zones' CPU shares, the client zones), the same pods no agent can measure,
  the same estimates (every one read, equal, which is at any age: none of this reads
  an age; their sources name the status's) and the same p99 of the active set (merged
  windows, read afresh by the caller). Then slices, hand-offs, Events and status are what they were: nothing to
  do, and the same gauges.

The clock: after the decision a reconcile reads it only for hand-offs (none while
settled) and for the time of a status it writes (none while settled).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aviator.kube.objects import JSON
from aviator.reconcilers.routing import Routing
from aviator.reconcilers.view import View
from aviator.selection.types import LatencyEstimate

if TYPE_CHECKING:  # plan imports this module
    from aviator.reconcilers.plan import Gauges


class Cluster:
    """What a reconcile read of the cluster, by identity (module docstring): one View
    (the same View object is the same cluster, aviator.reconcilers.view `Views`; two
    Views are compared object by object, `View.objects`, which each View works out
    once) and the status it started from."""

    __slots__ = ("status", "view")

    def __init__(self, view: View, status: JSON | None) -> None:
        self.view = view
        self.status = status  # the leader's last write, or the cache's

    @staticmethod
    def of(view: View, status: JSON | None) -> Cluster:
        return Cluster(view, status)

    def same(self, other: Cluster) -> bool:
        if self.status is not other.status:
            return False
        if self.view is other.view:
            return True
        mine, theirs = self.view.objects, other.view.objects
        return len(mine) == len(theirs) and all(map(operator.is_, mine, theirs))


@dataclass(frozen=True, slots=True, eq=False)
class Settled:
    """A reconcile that changed nothing (module docstring), what routing decided in
    it and the gauges it set."""

    cluster: Cluster
    route: Routing
    values: tuple[object, ...]  # zones and the decision, by value
    estimates: Mapping[str, LatencyEstimate | None]  # by value
    p99_ms: float | None
    gauges: Gauges

    def holds(
        self,
        values: tuple[object, ...],
        estimates: Mapping[str, LatencyEstimate | None],
        p99_ms: float | None,
    ) -> bool:
        """Whether a reconcile of the same cluster that read these is this one again."""
        return self.p99_ms == p99_ms and self.values == values and self.estimates == estimates
