"""Topology hints on our endpoints, as kube-controller-manager's EndpointSlice
controller sets them for the same Service (pure).

kube-proxy routes by hints alone: when every ready endpoint carries a zone hint (or a
node hint) it keeps traffic in the client's zone (or node), whatever Service object
asked for it. A taken-over Service keeps its topology routing only if our slices
carry the hints the built-in slices carried, so the rules here are the built-in ones,
read from the Service whose intent the user wrote (the target):

- the annotation `service.kubernetes.io/topology-aware-hints` (deprecated; it wins
  when both are set) or `service.kubernetes.io/topology-mode` set to `Auto`/`auto`:
  zone hints allocated in proportion to each zone's allocatable CPU (`auto_hints`).
  The annotation wins over `trafficDistribution`; when the allocation is not possible
  (fewer than two zones with ready nodes, a node without zone or CPU, fewer ready
  endpoints than zones, an endpoint without zone, a zone that cannot get its minimum
  share without overload) there are no hints at all;
- else `spec.trafficDistribution` `PreferClose` or `PreferSameZone`: every ready
  endpoint with a zone gets its own zone as hint; `PreferSameNode` adds its node;
- else no hints.

Under the policy's `topology.mode: latencyAware` the zones come from the locality
decision instead (`assign_zones`; aviator.reconcilers.locality): each ready endpoint
gets the `forZones` its zone is given, all or nothing as above.

Hints are computed per address family over the endpoints we publish (the routed set),
endpoints in name order. Only ready endpoints get hints (terminating fallbacks do not).
Where the built-in controller's choice depends on Go map order (which zone gives or
receives first), zones are taken in name order, so equal inputs give equal hints.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence

from aviator.kube import nodes as node_facts
from aviator.kube.objects import JSON, annotations_of

ANNOTATION_TOPOLOGY_MODE = "service.kubernetes.io/topology-mode"
ANNOTATION_TOPOLOGY_AWARE_HINTS = "service.kubernetes.io/topology-aware-hints"  # deprecated
PREFER_CLOSE = "PreferClose"
PREFER_SAME_ZONE = "PreferSameZone"
PREFER_SAME_NODE = "PreferSameNode"

# The most any zone's endpoints may be overloaded by its share of clients (20 %).
OVERLOAD_THRESHOLD = 0.2


class HintMode(enum.Enum):
    NONE = "none"
    ZONE = "zone"  # PreferClose / PreferSameZone
    ZONE_AND_NODE = "zone+node"  # PreferSameNode
    AUTO = "auto"  # topology-mode: Auto (CPU-proportional zone allocation)


def hint_mode(service: JSON | None) -> HintMode:
    """Which hints the built-in controller would put on this Service's endpoints."""
    if service is None:
        return HintMode.NONE
    ann = annotations_of(service)
    value = ann.get(ANNOTATION_TOPOLOGY_AWARE_HINTS, ann.get(ANNOTATION_TOPOLOGY_MODE))
    if value in ("Auto", "auto"):
        return HintMode.AUTO
    distribution = (service.get("spec") or {}).get("trafficDistribution")
    if distribution in (PREFER_CLOSE, PREFER_SAME_ZONE):
        return HintMode.ZONE
    if distribution == PREFER_SAME_NODE:
        return HintMode.ZONE_AND_NODE
    return HintMode.NONE


def zone_cpu_ratios(nodes: Iterable[JSON]) -> dict[str, float] | None:
    """Each zone's share of the allocatable CPU of ready, non-control-plane nodes;
    None when Auto hints cannot be allocated (a counted node without zone or CPU,
    fewer than two zones, no CPU at all)."""
    by_zone: dict[str, int] = {}
    for node in nodes:
        if node_facts.is_control_plane(node) or not node_facts.is_ready(node):
            continue
        zone = node_facts.zone_of(node)
        cpu = node_facts.allocatable_cpu_millis(node)
        if zone is None or cpu <= 0:
            return None
        by_zone[zone] = by_zone.get(zone, 0) + cpu
    total = sum(by_zone.values())
    if total <= 0 or len(by_zone) < 2:
        return None
    return {zone: cpu / total for zone, cpu in by_zone.items()}


def _ready(ep: JSON) -> bool:
    return bool((ep.get("conditions") or {}).get("ready"))


def _zone_hint(zone: str) -> JSON:
    return {"forZones": [{"name": zone}]}


def assign(endpoints: Sequence[JSON], mode: HintMode, ratios: Mapping[str, float] | None) -> None:
    """Set (or leave out) `hints` on `endpoints`, one address family in name order."""
    for ep in endpoints:
        ep.pop("hints", None)
    if mode is HintMode.NONE:
        return
    ready = [ep for ep in endpoints if _ready(ep)]
    if mode is HintMode.AUTO:
        zones = auto_hints([ep.get("zone") for ep in ready], ratios)
        if zones is not None:
            for ep, zone in zip(ready, zones, strict=True):
                ep["hints"] = _zone_hint(zone)
        return
    for ep in ready:
        hint: JSON = {}
        if ep.get("zone"):
            hint["forZones"] = [{"name": ep["zone"]}]
        if mode is HintMode.ZONE_AND_NODE and ep.get("nodeName"):
            hint["forNodes"] = [{"name": ep["nodeName"]}]
        if hint:
            ep["hints"] = hint


def assign_zones(endpoints: Sequence[JSON], for_zones: Mapping[str, Sequence[str]]) -> None:
    """Set `hints.forZones` on the ready `endpoints` from their zone's entry in
    `for_zones`; none at all when some ready endpoint has no zone or no entry (a
    partial set of hints makes kube-proxy ignore them all anyway)."""
    for ep in endpoints:
        ep.pop("hints", None)
    ready = [ep for ep in endpoints if _ready(ep)]
    if any(not for_zones.get(str(ep.get("zone") or "")) for ep in ready):
        return
    for ep in ready:
        ep["hints"] = {"forZones": [{"name": z} for z in for_zones[str(ep["zone"])]]}


def auto_hints(zones: Sequence[str | None], ratios: Mapping[str, float] | None) -> list[str] | None:
    """The zone hint of each ready endpoint (given by its zone, in order) under
    topology-mode Auto, or None when no hints may be given."""
    n = len(zones)
    if not ratios or len(ratios) < 2 or len(ratios) > n:
        return None
    desired: dict[str, float] = {}
    remaining = n
    for zone in sorted(ratios):
        want = ratios[zone] * n
        minimum = math.ceil(want * (1 / (1 + OVERLOAD_THRESHOLD)))
        desired[zone] = max(want, float(minimum))
        remaining -= minimum
        if remaining < 0:
            return None
    if any(not z for z in zones):
        return None
    hints = [str(z) for z in zones]
    allocated: dict[str, int] = {}
    for z in hints:
        allocated[z] = allocated.get(z, 0) + 1
    giving, receiving = _giving_and_receiving(desired, allocated)
    for i, zone in enumerate(hints):
        if not giving or not receiving:
            break
        if giving.get(zone, 0) <= 0:
            continue
        to = min(receiving)
        hints[i] = to
        giving[zone] -= 1
        if not giving[zone]:
            del giving[zone]
        receiving[to] -= 1
        if not receiving[to]:
            del receiving[to]
    return hints


def _giving_and_receiving(
    desired: Mapping[str, float], allocated: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """How many endpoints each zone gives away and receives (whole endpoints, from the
    fractional differences between its share and its own endpoints)."""
    give_f: dict[str, float] = {}
    receive_f: dict[str, float] = {}
    for zone, target in desired.items():
        have = float(allocated.get(zone, 0))
        if have > target:
            give_f[zone] = have - target
        elif have < target:
            receive_f[zone] = target - have
    giving: dict[str, int] = {}
    receiving: dict[str, int] = {}
    while True:
        g, num_give = _most(give_f)
        r, num_receive = _most(receive_f)
        if (
            g is None
            or r is None
            or (num_give < 1.0 and num_receive < 1.0)
            or num_give < 0.5
            or num_receive < 0.5
        ):
            break
        giving[g] = giving.get(g, 0) + 1
        give_f[g] -= 1
        receiving[r] = receiving.get(r, 0) + 1
        receive_f[r] -= 1
    return giving, receiving


def _most(values: Mapping[str, float]) -> tuple[str | None, float]:
    best: str | None = None
    most = 0.0
    for zone in sorted(values):
        if values[zone] > most:
            best, most = zone, values[zone]
    return best, most
