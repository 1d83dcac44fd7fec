"""What a plan reports besides its writes: Events about the policy and the per-pod
rows of its status. Pure.

The status shows at most `status.MAX_POD_ROWS` rows, active pods first, then by name
(`status.row_order`). `status_rows` builds only those: a 5,000-pod policy's status
holds 500 rows, and a row is built again only when its pod object, state, reason or
estimate changed (`fact_row`). What the rows no longer tell once cut (every ejected
pod, how many pods are measured, which measured pods are opaque) it counts from the
states and estimates, so the status is the one all the rows would make.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice

from aviator.api.status import HandOffStatus, PodStatus
from aviator.kube.objects import JSON
from aviator.kube.pods import is_terminating, pod_ips, pod_name
from aviator.reconcilers.evaluation import Outcome
from aviator.reconcilers.podfacts import PodFacts
from aviator.reconcilers.status import MAX_POD_ROWS, pod_status
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


# The status row reason of a terminating pod published because nothing else serves.
REASON_TERMINATING_FALLBACK = "ServingWhileTerminating"


@dataclass(frozen=True)
class Rows:
    """The status rows of one plan: `shown`, the rows the status holds (in its order),
    and what the rows cut off no longer tell."""

    shown: list[PodStatus]
    opaque: list[str]  # measured pods whose protocol is opaque, in name order
    measured: int  # pods with samples
    ejected: list[str]  # every ejected pod, in name order


def status_rows(
    eligible: Sequence[PodFacts],
    outcome: Outcome,
    by_pod: Mapping[str, LatencyEstimate | None],
    pods: Sequence[JSON],
    fallback: Collection[str],
) -> Rows:
    """The rows of the eligible pods (`eligible`: their facts, by name; states and
    reasons from `outcome`, estimates from `by_pod`) and of the Service's other `pods`:
    those in `fallback` serve while terminating, the rest are standby (NotReady or
    Terminating), so `describe` explains them."""
    states, reasons = outcome.states, outcome.reasons
    state_of = states.get
    # Eligible pods' facts, or the other pods' objects; the eligible come by name.
    active: list[PodFacts | JSON] = []
    rest: list[PodFacts | JSON] = []
    opaque: list[str] = []
    ejected: list[str] = []
    measured = 0
    for f in eligible:
        name = f.name
        state = state_of(name, "unknown")
        if state == "active":
            active.append(f)
        else:
            rest.append(f)
            if state == "ejected":
                ejected.append(name)
        lat = by_pod[name]
        if lat is not None and lat.samples:
            measured += 1
            if lat.protocol == "opaque":
                opaque.append(name)
    # `eligible` are some of `pods` (names are unique): the same count, no others.
    if len(pods) > len(eligible):
        names = {f.name for f in eligible}
        others = [p for p in pods if pod_name(p) not in names]
        for p in others:
            (active if pod_name(p) in fallback else rest).append(p)
        if others:
            active.sort(key=_name_of)
            rest.sort(key=_name_of)
    shown: list[PodStatus] = []
    for of in islice(chain(active, rest), MAX_POD_ROWS):
        if isinstance(of, PodFacts):
            name = of.name
            shown.append(fact_row(of, state_of(name, "unknown"), by_pod[name], reasons.get(name)))
        elif pod_name(of) in fallback:
            shown.append(pod_row(of, "active", None, REASON_TERMINATING_FALLBACK))
        else:
            why = "Terminating" if is_terminating(of) else "NotReady"
            shown.append(pod_row(of, "standby", None, why))
    return Rows(shown, opaque, measured, ejected)


def _name_of(of: PodFacts | JSON) -> str:
    return of.name if isinstance(of, PodFacts) else pod_name(of)


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
        load=lat.load if lat else None,
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
