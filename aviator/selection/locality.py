"""Latency-aware locality: whether each zone's traffic stays on its own zone's routed
pods or spills to other zones' pods, and the zone hints that say so (pure).

Inputs, per evaluation: for each zone, the figures of its routed pods (`ZoneInput`:
the median of their p99s, their mean requests in flight), every zone that has nodes
(clients), and each zone's `ZoneState` from the previous evaluation. A zone is
*over* when its figure is above the best figure of any other zone by more than
`margin_percent`, or its pods are overloaded (mean requests in flight above
`max_rif`); *under* when it is within the margin and not overloaded; neither when it
has no figure (no latency data: nothing is concluded, counts are kept).

Invariants (test/unit/selection/test_selection_locality.py proves them with hypothesis):

- a zone never spills while its pods are within the margin and not overloaded: a
  local zone turns spilling only after `spill_after` consecutive evaluations over;
  a spilling zone returns only after `return_after` consecutive evaluations under
  (hysteresis; anything else restarts the count, so jitter around the margin never
  flaps); a zone without routed pods spills at once and one that gets routed pods
  back returns at once (nothing to measure, nothing to wait for);
- at least one zone with routed pods is local: when every one would spill, the one
  with the best figure stays (`NoZoneToSpillTo`);
- every zone (with nodes or pods) always has at least one hinted endpoint:
  `zone_hints` gives each local zone's pods their own zone plus the spilling zones
  it receives, and no real zone to a spilling zone's pods (`PARKED_ZONE`: kube-proxy
  sends a zone's clients only to endpoints hinted for their zone, so those pods are
  used only by clients on nodes without a zone, which use every endpoint);
- the hints are a function of the zones' states alone: no change of hints without a
  change of some zone's state (figures moving inside a state write nothing);
- deterministic: zones in name order, ties by name.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LOCAL = "local"
SPILLING = "spilling"

# Why a zone is in its state (status.zones[].reason).
WITHIN_MARGIN = "WithinMargin"
SLOWER_THAN_MARGIN = "SlowerThanMargin"
OVERLOADED = "Overloaded"
NO_ROUTED_PODS = "NoRoutedPods"
NO_ZONE_TO_SPILL_TO = "NoZoneToSpillTo"
NO_LATENCY_DATA = "NoLatencyData"
ONLY_ZONE = "OnlyZone"

# The hint of a spilling zone's pods: a valid zone name that no node carries.
PARKED_ZONE = "aviator-parked"
# The API server refuses an endpoint hinted for more zones than this.
MAX_FOR_ZONES = 8


@dataclass(frozen=True, slots=True)
class LocalityPolicy:
    margin_percent: float = 50.0
    max_rif: float | None = None
    spill_after: int = 2
    return_after: int = 3


@dataclass(frozen=True, slots=True)
class ZoneInput:
    """A zone's routed pods: how many, the median of their p99s (None: none measured),
    their mean requests in flight (None: unknown)."""

    pods: int
    p99_ms: float | None = None
    rif: float | None = None


@dataclass(frozen=True, slots=True)
class ZoneState:
    """A zone's state; `streak` counts consecutive evaluations against it (over while
    local, under while spilling)."""

    state: str = LOCAL
    reason: str = WITHIN_MARGIN
    streak: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "streak": self.streak}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ZoneState:
        state = data.get("state")
        streak = data.get("streak")
        return cls(
            state=SPILLING if state == SPILLING else LOCAL,
            reason=str(data.get("reason") or WITHIN_MARGIN),
            streak=streak if isinstance(streak, int) and streak >= 0 else 0,
        )


def zone_inputs(pods: Iterable[tuple[str, float | None, float | None]]) -> dict[str, ZoneInput]:
    """(zone, p99 ms or None, requests in flight or None) of each routed pod → per zone."""
    p99s: dict[str, list[float]] = {}
    rifs: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for zone, p99, rif in pods:
        counts[zone] = counts.get(zone, 0) + 1
        if p99 is not None:
            p99s.setdefault(zone, []).append(p99)
        if rif is not None:
            rifs.setdefault(zone, []).append(rif)
    return {
        zone: ZoneInput(
            pods=n,
            p99_ms=statistics.median(p99s[zone]) if zone in p99s else None,
            rif=statistics.fmean(rifs[zone]) if zone in rifs else None,
        )
        for zone, n in counts.items()
    }


def _verdict(
    zone: str, zones: Mapping[str, ZoneInput], policy: LocalityPolicy
) -> tuple[bool | None, str]:
    """(over?, why): True over, False under, None unknown."""
    me = zones[zone]
    if policy.max_rif is not None and me.rif is not None and me.rif > policy.max_rif:
        return True, OVERLOADED
    others = [z.p99_ms for n, z in zones.items() if n != zone and z.pods and z.p99_ms is not None]
    if not others:
        return False, ONLY_ZONE
    if me.p99_ms is None:
        return None, NO_LATENCY_DATA
    if me.p99_ms > min(others) * (1 + policy.margin_percent / 100):
        return True, SLOWER_THAN_MARGIN
    return False, WITHIN_MARGIN


def _step(previous: ZoneState, over: bool | None, why: str, policy: LocalityPolicy) -> ZoneState:
    if previous.reason == NO_ROUTED_PODS and previous.state == SPILLING:
        previous = ZoneState()  # routed pods again: local at once, counted from here
    if over is None:
        return ZoneState(previous.state, previous.reason, previous.streak)
    if previous.state == LOCAL:
        if not over:
            return ZoneState(LOCAL, why, 0)
        streak = previous.streak + 1
        if streak >= policy.spill_after:
            return ZoneState(SPILLING, why, 0)
        return ZoneState(LOCAL, previous.reason, streak)
    if over:
        return ZoneState(SPILLING, why, 0)
    streak = previous.streak + 1
    if streak >= policy.return_after:
        return ZoneState(LOCAL, why, 0)
    return ZoneState(SPILLING, previous.reason, streak)


def newly_over(
    zones: Mapping[str, ZoneInput], previous: Mapping[str, ZoneState], policy: LocalityPolicy
) -> list[str]:
    """Zones with routed pods that were local with nothing counted against them and are
    over now: the first evaluation over the margin (the start of a spill's count) need
    not wait for the interval (aviator.reconcilers.cadence). Exactly the zones whose
    count `decide` would start (or, with `spill_after` 1, spill). A zone kept local
    because no other could take its clients (`NO_ZONE_TO_SPILL_TO`) is not newly over:
    it stays over, and would otherwise ask for an evaluation at every look."""
    out = []
    for zone in sorted(z for z, i in zones.items() if i.pods > 0):
        was = previous.get(zone, ZoneState())
        if was.state == SPILLING and was.reason == NO_ROUTED_PODS:
            was = ZoneState()  # routed pods again: local, counted from here (as `_step`)
        if was.state != LOCAL or was.streak or was.reason == NO_ZONE_TO_SPILL_TO:
            continue
        if _verdict(zone, zones, policy)[0]:
            out.append(zone)
    return out


def _rank(zone: str, zones: Mapping[str, ZoneInput]) -> tuple[bool, float, str]:
    p99 = zones[zone].p99_ms
    return p99 is None, p99 if p99 is not None else 0.0, zone


def decide(
    zones: Mapping[str, ZoneInput],
    client_zones: Iterable[str],
    previous: Mapping[str, ZoneState],
    policy: LocalityPolicy,
) -> dict[str, ZoneState]:
    """Each zone's next state (zones with routed pods and zones with clients)."""
    served = {z for z, i in zones.items() if i.pods > 0}
    out: dict[str, ZoneState] = {}
    for zone in sorted(served | set(client_zones)):
        if zone not in served:
            out[zone] = ZoneState(SPILLING, NO_ROUTED_PODS, 0)
            continue
        over, why = _verdict(zone, zones, policy)
        out[zone] = _step(previous.get(zone, ZoneState()), over, why, policy)
    if served and not any(out[z].state == LOCAL for z in served):
        best = min(served, key=lambda z: _rank(z, zones))
        was = previous.get(best, ZoneState())
        streak = max(0, policy.spill_after - 1) if was.state == LOCAL else 0
        out[best] = ZoneState(LOCAL, NO_ZONE_TO_SPILL_TO, streak)
    return out


def zone_hints(
    states: Mapping[str, ZoneState], served: Iterable[str]
) -> dict[str, tuple[str, ...]]:
    """The `forZones` of the routed pods of each zone in `served` (zones with routed
    pods): a local zone's pods serve their own zone and the spilling zones it
    receives; a spilling zone's pods are parked. Spilling zones (and zones in
    `states` without routed pods) go to every local zone, or, when that would hint
    more than `MAX_FOR_ZONES` zones on one endpoint, round robin over the local zones
    (beyond eight zones per local zone, the rest fall back to every endpoint, as
    kube-proxy does for a zone without hints)."""
    with_pods = sorted(set(served))
    local = [z for z in with_pods if states.get(z, ZoneState()).state == LOCAL]
    if not local:  # decide() never leaves this; hint every zone for its own pods
        return {z: (z,) for z in with_pods}
    spilling = sorted(z for z in set(states) | set(with_pods) if z not in local)
    received: dict[str, list[str]] = {z: [] for z in local}
    if len(spilling) < MAX_FOR_ZONES:
        for z in local:
            received[z] = list(spilling)
    else:
        for i, z in enumerate(spilling):
            received[local[i % len(local)]].append(z)
    out: dict[str, tuple[str, ...]] = {}
    for zone in with_pods:
        if zone in received:
            out[zone] = (zone, *received[zone])[:MAX_FOR_ZONES]
        else:
            out[zone] = (PARKED_ZONE,)
    return out


def states_to_json(states: Mapping[str, ZoneState]) -> dict[str, Any]:
    return {zone: s.to_json() for zone, s in sorted(states.items())}


def states_from_json(data: Any) -> dict[str, ZoneState]:
    if not isinstance(data, Mapping):
        return {}
    return {
        str(zone): ZoneState.from_json(value)
        for zone, value in data.items()
        if isinstance(value, Mapping)
    }
