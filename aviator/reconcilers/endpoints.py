"""What our slices publish: which pods (the routed set), and what each endpoint says
about its pod, as kube-controller-manager's EndpointSlice controller writes it for the
same pod and Service (pure).

kube-proxy reads the same fields on our slices as on the built-in ones, so for a
taken-over Service every field is set the built-in way:

- conditions: `serving` = the pod is Ready; `terminating` = it has a
  deletionTimestamp; `ready` = serving and not terminating, or always when the Service
  sets `publishNotReadyAddresses`;
- `nodeName` from the pod; `zone` from its Node's `topology.kubernetes.io/zone`;
- `hostname` = the pod's `spec.hostname` when its `spec.subdomain` names the routed
  Service (per-pod DNS of a headless Service, e.g. StatefulSets);
- `targetRef` to the pod (kind, namespace, name, uid);
- `hints` as `aviator.reconcilers.hints` says (latency-aware zones when given);
- ports resolved per pod (a named targetPort is looked up in the pod's containers and
  sidecar init containers, same protocol; a port that does not resolve is left out).

Which pods: the active set the selection chose. When none is active (no pod is
eligible) but terminating pods still serve, those are published, `serving: true,
terminating: true, ready: false`: kube-proxy falls back to serving terminating
endpoints when a Service has no ready one, exactly as with the built-in slices, so a
Service is never left without endpoints while a pod still serves (a one-replica
rollout, a Recreate Deployment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aviator.kube.addresses import family_of
from aviator.kube.objects import JSON
from aviator.kube.pods import is_ready, is_terminating, pod_ips, pod_name
from aviator.reconcilers import hints

# (name, protocol, port, appProtocol) for each Service port resolved for one pod.
PortTuple = tuple[str, str, int, str | None]
# A slice holds endpoints of one address family with one resolved port list.
GroupKey = tuple[str, tuple[PortTuple, ...]]


def _no_zone(node: str) -> str | None:
    return None


@dataclass(frozen=True)
class Publishing:
    """What the endpoints of one routed Service are built from."""

    service: JSON  # the target Service: ports, publishNotReadyAddresses, topology intent
    routed: str  # the Service our slices serve (hostnames match its name)
    zone_of: Callable[[str], str | None] = field(default=_no_zone, compare=False)
    zone_cpu: Mapping[str, float] | None = None  # topology-mode Auto: CPU share per zone
    # topology.mode latencyAware: each zone's forZones (aviator.reconcilers.locality).
    zone_hints: Mapping[str, Sequence[str]] | None = None


def serves_while_terminating(pod: JSON) -> bool:
    """A terminating pod that is still Ready (and addressed): kube-proxy's fallback."""
    return is_terminating(pod) and is_ready(pod) and bool(pod_ips(pod))


def routed_pods(active: Sequence[JSON], pods: Iterable[JSON]) -> tuple[list[JSON], bool]:
    """The pods to publish, and whether they are the terminating fallback: the active
    ones, else every terminating pod that still serves (by name)."""
    if active:
        return list(active), False
    fallback = sorted((p for p in pods if serves_while_terminating(p)), key=pod_name)
    return fallback, bool(fallback)


def resolve_ports(service: JSON, pod: JSON) -> tuple[PortTuple, ...]:
    """The Service's ports as this pod serves them."""
    out: list[PortTuple] = []
    for sp in service.get("spec", {}).get("ports") or []:
        protocol = str(sp.get("protocol") or "TCP")
        number = target_port(sp, pod)
        if number is None:
            continue
        app = sp.get("appProtocol")
        out.append((str(sp.get("name") or ""), protocol, number, str(app) if app else None))
    return tuple(out)


def target_port(service_port: JSON, pod: JSON) -> int | None:
    """The pod's port number behind one Service port, None when it does not resolve."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, bool):
        return None
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    if isinstance(target, str):
        return _container_port(pod, target, str(service_port.get("protocol") or "TCP"))
    return None


def _container_port(pod: JSON, name: str, protocol: str) -> int | None:
    spec = pod.get("spec", {})
    # Init containers count only as sidecars (restartPolicy Always), as upstream.
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for container in (spec.get("containers") or []) + sidecars:
        for cp in container.get("ports") or []:
            if cp.get("name") == name and str(cp.get("protocol") or "TCP") == protocol:
                return int(cp["containerPort"])
    return None


def hostname_for(pod: JSON, routed: str) -> str | None:
    """spec.hostname when spec.subdomain names the routed Service (same namespace:
    our slices only ever route pods of their own namespace)."""
    spec = pod.get("spec", {})
    hostname = spec.get("hostname")
    if hostname and spec.get("subdomain") == routed:
        return str(hostname)
    return None


def endpoint_for(pod: JSON, address: str, zone: str | None, publishing: Publishing) -> JSON:
    """One endpoint of `pod` at `address`, as the built-in controller writes it."""
    meta = pod.get("metadata", {})
    serving = is_ready(pod)
    terminating = is_terminating(pod)
    publish_not_ready = bool(publishing.service.get("spec", {}).get("publishNotReadyAddresses"))
    ep: JSON = {
        "addresses": [address],
        "conditions": {
            "ready": publish_not_ready or (serving and not terminating),
            "serving": serving,
            "terminating": terminating,
        },
        "targetRef": {
            "kind": "Pod",
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "uid": meta.get("uid", ""),
        },
    }
    hostname = hostname_for(pod, publishing.routed)
    if hostname:
        ep["hostname"] = hostname
    node = pod.get("spec", {}).get("nodeName")
    if node:
        ep["nodeName"] = node
    if zone:
        ep["zone"] = zone
    return ep


def desired_endpoints(
    publishing: Publishing, pods: Iterable[JSON]
) -> dict[GroupKey, dict[str, JSON]]:
    """Endpoints per (family, ports) group, keyed by pod name within a group, hints
    set per family."""
    groups: dict[GroupKey, dict[str, JSON]] = {}
    for pod in pods:
        ports = resolve_ports(publishing.service, pod)
        node = pod.get("spec", {}).get("nodeName")
        zone = publishing.zone_of(node) if node else None
        name = pod_name(pod)
        for ip in pod_ips(pod):
            family = family_of(ip)
            if family is None:
                continue
            groups.setdefault((family, ports), {})[name] = endpoint_for(pod, ip, zone, publishing)
    mode = hints.hint_mode(publishing.service)
    for address_type in sorted({g[0] for g in groups}):
        in_family = sorted(
            (ep for g, eps in groups.items() if g[0] == address_type for ep in eps.values()),
            key=lambda ep: str(ep["targetRef"]["name"]),
        )
        if publishing.zone_hints is not None:
            hints.assign_zones(in_family, publishing.zone_hints)
        else:
            hints.assign(in_family, mode, publishing.zone_cpu)
    return groups
