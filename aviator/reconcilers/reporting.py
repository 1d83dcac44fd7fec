"""What a plan reports besides its writes: Events about the policy and the per-pod
rows of its status. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aviator.api.status import HandOffStatus, PodStatus
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_ips, pod_name
from aviator.reconcilers.evaluation import Outcome
from aviator.reconcilers.podfacts import PodFacts
from aviator.reconcilers.status import pod_status
from aviator.selection.types import LatencyEstimate

NORMAL = "Normal"
WARNING = "Warning"


@dataclass(frozen=True)
class EventSpec:
    """An Event about the policy (`related`: the pod it concerns, if any)."""

    reason: str
    message: str
    action: str
    type: str = NORMAL
    related: JSON | None = None


def policy_events(
    outcome: Outcome, before: set[str], changed: bool, eligible: Sequence[JSON]
) -> list[EventSpec]:
    """PodEjected (Warning) and PodReadmitted from the engine, and EndpointsUpdated
    naming the pods that came and went when the published set changed."""
    by_name = {pod_name(p): p for p in eligible} if outcome.events else {}
    out = [
        EventSpec(
            ev.reason,
            ev.message,
            ev.action,
            WARNING if ev.reason == "PodEjected" else NORMAL,
            by_name.get(ev.pod) if ev.pod else None,
        )
        for ev in outcome.events
    ]
    if changed and outcome.active != before:
        added = sorted(outcome.active - before)
        removed = sorted(before - outcome.active)
        note = f"{len(outcome.active)} pods active"
        if added:
            note += f"; added {', '.join(added[:10])}"
        if removed:
            note += f"; removed {', '.join(removed[:10])}"
        out.append(EventSpec("EndpointsUpdated", note, "UpdateEndpoints"))
    return out


def handoff_events(
    now: Sequence[HandOffStatus], before: Sequence[HandOffStatus], pods: Sequence[JSON]
) -> list[EventSpec]:
    """HandOffStarted for each pod that began handing its connections off."""
    started = {e.pod for e in before}
    if all(e.pod in started for e in now):
        return []
    by_name = {pod_name(p): p for p in pods}
    return [
        EventSpec(
            "HandOffStarted",
            f"pod {e.pod} left the routed set: its node's agent ends its idle client "
            f"connections on port(s) {', '.join(map(str, e.ports))} until {e.until}",
            "HandOff",
            NORMAL,
            by_name.get(e.pod),
        )
        for e in now
        if e.pod not in started
    ]


def fact_row(
    pod: PodFacts, state: str, lat: LatencyEstimate | None, reason: str | None
) -> PodStatus:
    """`pod_row` of a pod object's facts, built again only when the object, its state,
    reason or estimate (at any age) changed since this object's last row."""
    key = (state, reason, lat)
    held = pod.row
    if held is not None and held[0] == key:
        return held[1]
    row = pod_row(pod.pod, state, lat, reason, pod.name)
    pod.row = (key, row)
    return row


def pod_row(
    pod: JSON,
    state: str,
    lat: LatencyEstimate | None,
    reason: str | None = None,
    name: str | None = None,
) -> PodStatus:
    """The pod's status row (`name`: the pod's name, when the caller has it already)."""
    ips = pod_ips(pod)
    return pod_status(
        name if name is not None else pod_name(pod),
        ips[0] if ips else "",
        str(pod.get("spec", {}).get("nodeName") or ""),
        state,
        p50_ms=lat.p50_ms if lat else None,
        p99_ms=lat.p99_ms if lat else None,
        rif=lat.rif if lat else None,
        samples=lat.samples if lat else 0,
        reason=reason,
        protocol=lat.protocol if lat else None,
        # Opaque pods have no status read: no responses, no error rate (not "0 %").
        responses=lat.statuses if lat and lat.protocol != "opaque" else None,
        error_rate_percent=lat.error_percent if lat else None,
        oldest_open_ms=lat.oldest_open_ms if lat else None,
        keep_warm_samples=lat.keepwarm if lat else None,
        probe_samples=lat.probe_samples if lat else None,
        probe_p50_ms=lat.probe_p50_ms if lat else None,
        probe_p99_ms=lat.probe_p99_ms if lat else None,
    )
