"""EndpointSlice planning: which slices the routed Service should have, and the
smallest set of writes that gets the observed slices there. Pure: no I/O.

What each endpoint says is decided in `aviator.reconcilers.endpoints`; here they are
placed. Like the built-in EndpointSlice controller, endpoints are grouped by address
family and by their resolved port list (a named targetPort can resolve to different
numbers on different pods), at most `MAX_ENDPOINTS` per slice. Unlike a from-scratch
re-chunking, planning keeps every surviving endpoint in the slice it already sits in
and fills gaps before creating slices, so one pod leaving touches one slice.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aviator.kube import marks
from aviator.kube.objects import JSON
from aviator.kube.resources import ENDPOINTSLICES
from aviator.reconcilers.endpoints import GroupKey, PortTuple
from aviator.runtime.writer import Write

MAX_ENDPOINTS = 100
# The label the built-in controller puts on the slices of a headless Service.
LABEL_HEADLESS = "service.kubernetes.io/headless"


@dataclass(frozen=True)
class SliceOwner:
    """Who the slices belong to and which Service they route for."""

    namespace: str
    service: str  # the routed Service (kubernetes.io/service-name)
    policy: str
    policy_uid: str
    headless: bool = False  # the routed Service has clusterIP None


@dataclass
class SlicePlan:
    """Writes to apply: full objects to create, full objects (with resourceVersion)
    to replace, and names to delete."""

    create: list[JSON] = field(default_factory=list)
    update: list[JSON] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def slice_labels(owner: SliceOwner) -> dict[str, str]:
    labels = {
        marks.LABEL_SERVICE_NAME: owner.service,
        marks.LABEL_MANAGED_BY: marks.MANAGER,
        marks.LABEL_POLICY: owner.policy,
    }
    if owner.headless:
        labels[LABEL_HEADLESS] = ""
    return labels


def slice_name(service: str, family: str, n: int) -> str:
    return f"{service}-aviator-{family.lower()}-{n}"


def _ports_json(ports: tuple[PortTuple, ...]) -> list[JSON]:
    out: list[JSON] = []
    for name, protocol, port, app in ports:
        p: JSON = {"name": name, "protocol": protocol, "port": port}
        if app:
            p["appProtocol"] = app
        out.append(p)
    return out


def group_of(slice_obj: JSON) -> GroupKey:
    ports: list[PortTuple] = []
    for p in slice_obj.get("ports") or []:
        app = p.get("appProtocol")
        ports.append(
            (
                str(p.get("name") or ""),
                str(p.get("protocol") or "TCP"),
                int(p.get("port") or 0),
                str(app) if app else None,
            )
        )
    return str(slice_obj.get("addressType", "")), tuple(ports)


def _endpoint_key(ep: JSON) -> str:
    ref = ep.get("targetRef") or {}
    return str(ref.get("name") or (ep.get("addresses") or [""])[0])


def _sorted_endpoints(endpoints: Iterable[JSON]) -> list[JSON]:
    return sorted(endpoints, key=lambda e: (_endpoint_key(e), e.get("addresses")))


def _normal_endpoint(ep: JSON) -> JSON:
    """The fields we set, with API defaults filled, for semantic comparison."""
    cond = ep.get("conditions") or {}
    ref = ep.get("targetRef") or {}
    return {
        "addresses": list(ep.get("addresses") or []),
        "conditions": {k: bool(cond.get(k)) for k in ("ready", "serving", "terminating")},
        "targetRef": {k: ref.get(k, "") for k in ("kind", "namespace", "name", "uid")},
        "nodeName": ep.get("nodeName"),
        "zone": ep.get("zone"),
        "hostname": ep.get("hostname"),
        "hints": _normal_hints(ep.get("hints")),
    }


def _normal_hints(hints: JSON | None) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if not hints:
        return None
    zones = tuple(str(z.get("name", "")) for z in hints.get("forZones") or [])
    nodes = tuple(str(n.get("name", "")) for n in hints.get("forNodes") or [])
    return (zones, nodes) if zones or nodes else None


def _needs_write(observed: JSON, desired: JSON) -> bool:
    obs_labels = observed.get("metadata", {}).get("labels") or {}
    for k, v in desired["metadata"]["labels"].items():
        if obs_labels.get(k) != v:
            return True
    want_owner = marks.controller_owner(desired)
    if marks.controller_owner(observed) != want_owner:
        return True
    if group_of(observed) != group_of(desired):
        return True
    obs_eps = [_normal_endpoint(e) for e in _sorted_endpoints(observed.get("endpoints") or [])]
    want_eps = [_normal_endpoint(e) for e in desired["endpoints"]]
    return obs_eps != want_eps


def _build(owner: SliceOwner, name: str, group: GroupKey, endpoints: Iterable[JSON]) -> JSON:
    family, ports = group
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": slice_labels(owner),
            "ownerReferences": [marks.owner_reference(owner.policy, owner.policy_uid)],
        },
        "addressType": family,
        "ports": _ports_json(ports),
        "endpoints": _sorted_endpoints(endpoints),
    }


def plan_slices(
    owner: SliceOwner,
    desired: Mapping[GroupKey, Mapping[str, JSON]],
    observed: Iterable[JSON],
    max_endpoints: int = MAX_ENDPOINTS,
) -> SlicePlan:
    """Minimal writes turning `observed` (every slice labelled with this policy, for
    any Service) into slices holding exactly `desired`.

    Surviving endpoints stay in their slice; new ones fill the fullest slices with
    room first, then new slices; slices left empty, of a group no longer wanted, or
    routing another Service are deleted; a slice is replaced only if what it says
    changed (labels we own, owner, ports, endpoints), never for order alone.
    """
    plan = SlicePlan()
    kept: dict[str, tuple[GroupKey, dict[str, JSON], JSON]] = {}
    placed: set[tuple[GroupKey, str]] = set()
    used_names: set[str] = set()
    for obs in sorted(observed, key=lambda s: str(s.get("metadata", {}).get("name", ""))):
        name = str(obs.get("metadata", {}).get("name", ""))
        used_names.add(name)
        labels = obs.get("metadata", {}).get("labels") or {}
        group = group_of(obs)
        wanted = desired.get(group)
        if labels.get(marks.LABEL_SERVICE_NAME) != owner.service or not wanted:
            plan.delete.append(name)
            continue
        members: dict[str, JSON] = {}
        for ep in obs.get("endpoints") or []:
            key = _endpoint_key(ep)
            if key in wanted and (group, key) not in placed and len(members) < max_endpoints:
                members[key] = wanted[key]
                placed.add((group, key))
        kept[name] = (group, members, obs)

    for group in sorted(desired, key=repr):
        pending = [k for k in sorted(desired[group]) if (group, k) not in placed]
        if not pending:
            continue
        # Fullest first keeps the slice count low, as the built-in controller does.
        with_room = sorted(
            (n for n, (g, m, _) in kept.items() if g == group and len(m) < max_endpoints),
            key=lambda n: (-len(kept[n][1]), n),
        )
        for name in with_room:
            members = kept[name][1]
            while pending and len(members) < max_endpoints:
                key = pending.pop(0)
                members[key] = desired[group][key]
        n = 0
        while pending:
            chunk, pending = pending[:max_endpoints], pending[max_endpoints:]
            while slice_name(owner.service, group[0], n) in used_names:
                n += 1
            name = slice_name(owner.service, group[0], n)
            used_names.add(name)
            plan.create.append(_build(owner, name, group, (desired[group][k] for k in chunk)))

    for name, (group, members, obs) in kept.items():
        if not members:
            plan.delete.append(name)
            continue
        want = _build(owner, name, group, members.values())
        if _needs_write(obs, want):
            updated = copy.deepcopy(obs)
            updated["metadata"]["labels"] = {
                **(obs.get("metadata", {}).get("labels") or {}),
                **want["metadata"]["labels"],
            }
            updated["metadata"]["ownerReferences"] = want["metadata"]["ownerReferences"]
            updated["addressType"] = want["addressType"]
            updated["ports"] = want["ports"]
            updated["endpoints"] = want["endpoints"]
            plan.update.append(updated)
    plan.delete.sort()
    return plan


def apply_plan(observed: Iterable[JSON], plan: SlicePlan) -> list[JSON]:
    """What the slices look like after `plan` is applied (for tests and dry runs)."""
    by_name = {str(s["metadata"]["name"]): s for s in observed}
    for name in plan.delete:
        by_name.pop(name, None)
    for s in plan.update + plan.create:
        by_name[str(s["metadata"]["name"])] = s
    return list(by_name.values())


def writes_for(ns: str, plan: SlicePlan) -> list[Write]:
    """Creates and updates before deletes: an endpoint moving between slices is never
    missing in between."""
    out = [Write("create", ENDPOINTSLICES, ns, o["metadata"]["name"], o) for o in plan.create]
    out += [Write("replace", ENDPOINTSLICES, ns, o["metadata"]["name"], o) for o in plan.update]
    out += [Write("delete", ENDPOINTSLICES, ns, n, missing_ok=True) for n in plan.delete]
    return out


def published_pods(observed: Iterable[JSON], routed: str) -> set[str]:
    """Pods our slices of `routed` currently publish: the set a new leader inherits."""
    out: set[str] = set()
    for sl in observed:
        if (sl["metadata"].get("labels") or {}).get(marks.LABEL_SERVICE_NAME) != routed:
            continue
        for ep in sl.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if ref.get("name"):
                out.add(str(ref["name"]))
    return out
