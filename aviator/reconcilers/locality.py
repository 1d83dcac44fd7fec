"""Latency-aware locality in one reconcile (`topology.mode: latencyAware`), pure: the
routed pods' zones and latencies → the zone decision (`aviator.selection.locality`)
→ the `forZones` our endpoints carry (`hints.assign_zones`) and `status.zones`.

The zones' states carry between evaluations in `status.zones` (what we last wrote,
else what the cache holds), so a new leader continues the counts where the previous
one stopped. The decision advances only when the selection engine evaluates (its
counts count evaluations, like the engine's); in between, the states carry over and
only the hints follow pods that come and go. Between evaluations a reconcile still
looks at the zones' figures (`spill_starting`): a local zone newly over the margin
has its first count taken at once, by an evaluation like any other, so a spill does
not wait a whole interval for the evaluation that starts its count. Routed pods on a
node without a zone make locality impossible: no hints at all, and the problem says
why.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aviator.api.status import ZoneStatus
from aviator.api.topology import TopologyMode, TopologySpec
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_name
from aviator.reconcilers.podfacts import PodFacts
from aviator.reconcilers.status import Problem
from aviator.selection import LatencyEstimate
from aviator.selection.locality import (
    LOCAL,
    LocalityPolicy,
    ZoneInput,
    ZoneState,
    decide,
    newly_over,
    zone_hints,
    zone_inputs,
)

REASON_TOPOLOGY_UNAVAILABLE = "TopologyUnavailable"


@dataclass(frozen=True)
class ZonePlan:
    """`hints` None: not latency-aware (the Service's own hints apply); empty: no hints."""

    hints: Mapping[str, Sequence[str]] | None = None
    rows: Sequence[ZoneStatus] = ()
    problems: Sequence[Problem] = field(default_factory=tuple)


def policy_of(spec: TopologySpec) -> LocalityPolicy | None:
    if spec.mode != TopologyMode.LATENCY_AWARE:
        return None
    return LocalityPolicy(
        margin_percent=float(spec.margin_percent),
        max_rif=None if spec.max_requests_in_flight is None else float(spec.max_requests_in_flight),
        spill_after=spec.spill_after,
        return_after=spec.return_after,
    )


def previous_states(status: JSON | None) -> dict[str, ZoneState]:
    """The zones' states as status.zones last said them."""
    out: dict[str, ZoneState] = {}
    for row in (status or {}).get("zones") or []:
        if isinstance(row, dict) and row.get("zone"):
            out[str(row["zone"])] = ZoneState.from_json(row)
    return out


def _figures(
    routed: Sequence[JSON],
    estimate: Callable[[str], LatencyEstimate | None],
    zone_of: Callable[[str], str | None],
) -> tuple[dict[str, ZoneInput], list[str]]:
    """The routed pods' figures per zone, and the pods on nodes without a zone."""
    figures: list[tuple[str, float | None, float | None]] = []
    zoneless: list[str] = []
    for pod in routed:
        node = pod.get("spec", {}).get("nodeName")
        zone = zone_of(node) if node else None
        name = pod_name(pod)
        if zone is None:
            zoneless.append(name)
            continue
        est = estimate(name)
        figures.append(
            (zone, None if est is None else est.p99_ms, None if est is None else float(est.rif))
        )
    return zone_inputs(figures), zoneless


def spill_starting(
    spec: TopologySpec,
    facts: Sequence[PodFacts],
    active: Collection[str],
    estimate: Callable[[str], LatencyEstimate | None],
    zone_of: Callable[[str], str | None],
    previous_status: JSON | None,
) -> list[str]:
    """Zones whose routed pods (`active`: the last evaluation's) are newly over the
    margin, as the latest latencies say between evaluations: the evaluation that starts
    their count runs at once (aviator.reconcilers.cadence)."""
    policy = policy_of(spec)
    if policy is None:
        return []
    zones, zoneless = _figures([f.pod for f in facts if f.name in active], estimate, zone_of)
    if zoneless:
        return []
    return newly_over(zones, previous_states(previous_status), policy)


def plan_zones(
    spec: TopologySpec,
    routed: Sequence[JSON],
    estimate: Callable[[str], LatencyEstimate | None],
    zone_of: Callable[[str], str | None],
    client_zones: Iterable[str],
    previous_status: JSON | None,
    evaluated: bool,
) -> ZonePlan:
    policy = policy_of(spec)
    if policy is None:
        return ZonePlan()
    zones, zoneless = _figures(routed, estimate, zone_of)
    if zoneless:
        shown = ", ".join(sorted(zoneless)[:10]) + (", ..." if len(zoneless) > 10 else "")
        message = (
            f"topology.mode latencyAware: routed pods on nodes without a zone label ({shown}); "
            "no zone hints are published, every client uses every routed pod"
        )
        return ZonePlan({}, (), (Problem(REASON_TOPOLOGY_UNAVAILABLE, message),))
    previous = previous_states(previous_status)
    if evaluated:
        states = decide(zones, client_zones, previous, policy)
    else:
        states = {z: previous.get(z, ZoneState()) for z in zones}
        states.update({z: s for z, s in previous.items() if z not in zones})
    hints = zone_hints(states, [z for z, i in zones.items() if i.pods])
    rows = [_row(zone, state, zones.get(zone)) for zone, state in sorted(states.items())]
    return ZonePlan(hints, rows)


def _row(zone: str, state: ZoneState, figures: ZoneInput | None) -> ZoneStatus:
    return ZoneStatus(
        zone=zone,
        state=state.state,
        reason=state.reason,
        streak=state.streak,
        pods=0 if figures is None else figures.pods,
        p99_ms=None if figures is None or figures.p99_ms is None else round(figures.p99_ms, 3),
    )


def spilling(rows: Iterable[ZoneStatus]) -> list[str]:
    """Zones whose clients use other zones' pods."""
    return [r.zone for r in rows if r.state != LOCAL]


def serving_zones(
    before: Collection[str],
    after: Collection[str],
    facts: Sequence[PodFacts],
    zone_of: Callable[[str], str | None],
    previous_status: JSON | None,
    zone_plan: ZonePlan,
) -> tuple[set[str], set[str]]:
    """The routed sets before and after this reconcile without the pods of zones then
    spilling: those are hinted for no zone's clients (`PARKED_ZONE`), so for hand-off
    they have left the routed set (their kept-alive clients move to the pods their
    zone now uses) and rejoin it when their zone returns."""
    if not zone_plan.hints:
        return set(before), set(after)
    zone_by_name = {f.name: zone_of(f.node) if f.node else None for f in facts}
    was = {z for z, s in previous_states(previous_status).items() if s.state != LOCAL}
    now = set(spilling(zone_plan.rows))
    return (
        {n for n in before if zone_by_name.get(n) not in was},
        {n for n in after if zone_by_name.get(n) not in now},
    )
