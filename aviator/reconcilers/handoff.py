"""Which pods hand their idle connections off, as the policy's status says (pure).

Slices decide where *new* connections go; kept-alive pools never re-dial, so a pod
that leaves the routed set keeps its pooled clients. `plan_handoffs` decides, at each
reconcile, which pods are being handed off: the status lists them (`handOffs`), and
that list is how the decision reaches the agents. Each agent watches the policies
and acts only on entries of its own node, for pods its node-local Pod cache confirms
(name and IP): the controller's word alone never makes an agent touch a pod.

A pod is handed off when, in this reconcile:

- `routing.handoff.enabled` and the policy routes in takeover mode (in shadow mode the
  target Service still routes every pod: its clients would only re-dial to the same
  pods, and clients of the untouched Service must stay untouched);
- the published routed set changed and the pod left it (deselected, ejected, replaced
  by another, no longer ready, or its zone spilled under `topology.mode: latencyAware`,
  which hints it for no zone's clients: `locality.serving_zones`): it was in the
  previous set and is not in the new one.
  When the policy takes the Service over, the previous set is what Kubernetes' own
  slices of the Service routed (every ready pod), so the pods the first selection
  leaves out are handed off too;
- the pod still runs with an address on a node, is not terminating (its own shutdown
  closes its connections) and not on the host network (its address is the node's);
- another pod stays routed (never the last routed pod), and no other policy of the
  same target Service routes it (their clients may be on those connections).

An entry names the end of the period (`until`) and stays listed `LINGER_S` longer,
while the agent ends connections that were busy all period as they become idle; it is
dropped earlier when the pod is routed again, by this or another policy of the
Service, or is gone. An agent stops acting on a pod when its entry is dropped.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence

from aviator.api.status import HandOffStatus
from aviator.api.types import HandOffSpec, RoutingMode
from aviator.kube.objects import JSON
from aviator.kube.pods import is_terminating, pod_ips, pod_name
from aviator.reconcilers.endpoints import resolve_ports
from aviator.reconcilers.view import View

LINGER_S = 10.0


def iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float | None:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def previous_handoffs(status: JSON | None) -> list[HandOffStatus]:
    """The hand-offs a status lists (entries that do not parse are dropped)."""
    out: list[HandOffStatus] = []
    for raw in (status or {}).get("handOffs") or []:
        if not isinstance(raw, dict) or not raw.get("pod") or not raw.get("until"):
            continue
        ports = [p for p in raw.get("ports") or [] if isinstance(p, int)]
        out.append(
            HandOffStatus(
                pod=str(raw["pod"]),
                node=str(raw.get("node") or ""),
                ip=str(raw.get("ip") or ""),
                ports=ports,
                since=str(raw.get("since") or raw["until"]),
                until=str(raw["until"]),
            )
        )
    return out


def _handed_off(pod: JSON) -> bool:
    """A pod whose connections may be ended: running on a node, addressed, not on the
    host network, not terminating."""
    spec = pod.get("spec") or {}
    return (
        bool(spec.get("nodeName"))
        and not spec.get("hostNetwork")
        and not is_terminating(pod)
        and (pod.get("status") or {}).get("phase") == "Running"
        and bool(pod_ips(pod))
    )


def plan_handoffs(
    *,
    spec: HandOffSpec,
    mode: RoutingMode,
    before: Iterable[str],
    after: Iterable[str],
    published: bool,
    pods: Sequence[JSON],
    service: JSON,
    routed_elsewhere: Iterable[str],
    previous: Sequence[HandOffStatus],
    now: float,
) -> list[HandOffStatus]:
    """The hand-offs in progress after this reconcile (see the module docstring).

    `before`/`after`: pod names routed before and after it; `published`: whether the
    new set was written; `pods`: the target's pods; `routed_elsewhere`: pods other
    policies of the same target Service route; `previous`: the entries the status
    held."""
    if not (spec.enabled and mode == RoutingMode.TAKEOVER):
        return []
    after_set, elsewhere = set(after), set(routed_elsewhere)
    leaving = set(before) - after_set - elsewhere if published and after_set else set()
    if not previous and not leaving:
        return []  # the steady state: nothing to look up
    by_name = {pod_name(p): p for p in pods}
    out: dict[str, HandOffStatus] = {}
    for entry in previous:
        until = parse_iso(entry.until)
        pod = by_name.get(entry.pod)
        if until is None or until + LINGER_S <= now or pod is None or not _handed_off(pod):
            continue
        if entry.pod in after_set or entry.pod in elsewhere:
            continue
        out[entry.pod] = entry
    for name in sorted(leaving - set(out)):
        pod = by_name.get(name)
        if pod is None or not _handed_off(pod):
            continue
        ports = sorted({p[2] for p in resolve_ports(service, pod) if p[1] == "TCP"})
        if not ports:
            continue
        out[name] = HandOffStatus(
            pod=name,
            node=str(pod["spec"]["nodeName"]),
            ip=pod_ips(pod)[0],
            ports=ports,
            since=iso(now),
            until=iso(now + spec.period.seconds),
        )
    return sorted(out.values(), key=lambda e: e.pod)


def for_view(
    view: View,
    before: Iterable[str],
    after: Iterable[str],
    published: bool,
    previous: Sequence[HandOffStatus],
    now: float,
) -> list[HandOffStatus]:
    """`plan_handoffs` for a selecting reconcile of `view` (a valid spec, its target
    found). Taking a Service over, its own slices routed it until now: their pods count
    as routed before."""
    assert view.parsed is not None and view.target is not None
    return plan_handoffs(
        spec=view.parsed.spec.routing.handoff,
        mode=view.parsed.spec.routing.mode,
        before=set(before) | routed_by(view.builtin_slices),
        after=after,
        published=published,
        pods=view.pods,
        service=view.target,
        routed_elsewhere=routed_by(view.sibling_slices),
        previous=previous,
        now=now,
    )


def next_expiry(entries: Sequence[HandOffStatus], now: float) -> float:
    """Seconds until the first entry is to be dropped from the status (inf: none)."""
    ends = [t + LINGER_S for t in (parse_iso(e.until) for e in entries) if t is not None]
    return max(0.0, min(ends) - now) if ends else math.inf


def routed_by(slices: Iterable[JSON]) -> set[str]:
    """Pods the given EndpointSlices publish as ready (by targetRef name)."""
    out: set[str] = set()
    for sl in slices:
        for ep in sl.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if ref.get("name") and (ep.get("conditions") or {}).get("ready") is not False:
                out.add(str(ref["name"]))
    return out
