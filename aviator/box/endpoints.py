"""Which backends a Service port has, read from its EndpointSlices (pure).

Like kube-proxy: every slice labelled `kubernetes.io/service-name=<svc>` counts, no
matter who manages it; the slice port is matched to the Service port by name; an
endpoint is used when its `ready` condition is true (absent means true).

Topology-aware routing as kube-proxy does it for a node in `zone`: when every ready
endpoint carries a zone hint (`hints.forZones`) and at least one names the zone, only
those are used; otherwise (an endpoint without hints, a zone no endpoint is hinted
for, no zone at all) every ready endpoint is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aviator.kube.marks import LABEL_SERVICE_NAME

Obj = dict[str, Any]
Backend = tuple[str, int]


def proxied(service: Obj) -> bool:
    """Services the box proxy serves: those with a cluster IP, not the API server's."""
    spec = service.get("spec", {})
    meta = service.get("metadata", {})
    if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
        return False
    return not (meta.get("namespace") == "default" and meta.get("name") == "kubernetes")


def service_of(slice_: Obj) -> str | None:
    """'ns/name' of the Service a slice belongs to, from its label."""
    meta = slice_.get("metadata", {})
    name = (meta.get("labels") or {}).get(LABEL_SERVICE_NAME)
    return f"{meta.get('namespace')}/{name}" if name else None


def _zone_hints(ep: Obj) -> frozenset[str]:
    return frozenset(str(z.get("name", "")) for z in (ep.get("hints") or {}).get("forZones") or [])


def ready_backends(
    port_name: str | None, slices: Iterable[Obj], zone: str | None = None
) -> list[Backend]:
    """Sorted, de-duplicated (ip, port) pairs of ready IPv4 endpoints for a port name,
    filtered by zone hints for a node in `zone` (see the module docstring); if there
    are none ready, of the serving terminating ones."""
    wanted = port_name or ""
    ready: set[Backend] = set()
    fallback: set[Backend] = set()
    hinted: set[Backend] = set()
    all_hinted = True
    for s in slices:
        if s.get("addressType") != "IPv4":
            continue
        target = None
        for p in s.get("ports") or []:
            if (p.get("name") or "") == wanted and p.get("port") is not None:
                target = int(p["port"])
                break
        if target is None:
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is not False:
                found = ready
                zones = _zone_hints(ep)
                all_hinted = all_hinted and bool(zones)
                if zone is not None and zone in zones:
                    hinted.update((str(a), target) for a in ep.get("addresses") or [])
            elif cond.get("serving") is True and cond.get("terminating") is True:
                found = fallback
            else:
                continue
            for address in ep.get("addresses") or []:
                found.add((str(address), target))
    if zone is not None and all_hinted and hinted:
        return sorted(hinted)
    return sorted(ready or fallback)


def endpoint_pods(slices: Iterable[Obj]) -> dict[str, str]:
    """Ready endpoint address -> pod name (from targetRef), for display."""
    pods: dict[str, str] = {}
    for s in slices:
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            ref = ep.get("targetRef") or {}
            for address in ep.get("addresses") or []:
                pods[str(address)] = str(ref.get("name", address))
    return pods
