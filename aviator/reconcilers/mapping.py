"""Which policies an event concerns: Service, Pod, EndpointSlice → policy keys.

Pure functions over informer caches (anything with `get` and `by_index`). The policy
cache carries three indexes filed by the functions below:
- by target: "ns/<targetRef.name>" — a Service change concerns the policies aiming at it;
- by routed Service: "ns/<Service whose slices the policy owns>" — conflicts and our
  shadow Services;
- by namespace — a Pod change concerns the policies of its namespace whose target
  selects it.
Update events should map both the old and the new object, so a pod whose labels stop
matching still reaches the policy that must drop it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from aviator.api.types import SHADOW_SUFFIX
from aviator.kube import marks
from aviator.kube.objects import JSON, labels_of, selector_matches
from aviator.kube.services import pod_selector

INDEX_BY_TARGET = "aviator/by-target"
INDEX_BY_ROUTED = "aviator/by-routed-service"
INDEX_NAMESPACE = "namespace"  # the informers package's namespace index name


class Cache(Protocol):
    def get(self, key: str) -> JSON | None: ...

    def by_index(self, index_name: str, value: str) -> list[JSON]: ...


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def policy_key(policy: JSON) -> str:
    meta = _meta(policy)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def target_name(policy: JSON) -> str | None:
    """spec.targetRef.name read defensively (the raw object may be invalid)."""
    spec = policy.get("spec")
    ref = spec.get("targetRef") if isinstance(spec, dict) else None
    name = ref.get("name") if isinstance(ref, dict) else None
    return name if isinstance(name, str) and name else None


def routing_of(policy: JSON) -> tuple[str, str | None]:
    """(mode, serviceName override) with the product defaults, read defensively."""
    spec = policy.get("spec")
    routing = spec.get("routing") if isinstance(spec, dict) else None
    if not isinstance(routing, dict):
        return "shadow", None
    mode = routing.get("mode") or "shadow"
    override = routing.get("serviceName") or None
    return str(mode), str(override) if override else None


def routed_service(policy: JSON) -> str | None:
    """The Service whose slices the policy owns: the shadow name, or the target itself."""
    target = target_name(policy)
    if target is None:
        return None
    mode, override = routing_of(policy)
    return target if mode == "takeover" else (override or f"{target}{SHADOW_SUFFIX}")


def index_by_target(policy: JSON) -> list[str]:
    target = target_name(policy)
    return [f"{_meta(policy).get('namespace', '')}/{target}"] if target else []


def index_by_routed(policy: JSON) -> list[str]:
    routed = routed_service(policy)
    return [f"{_meta(policy).get('namespace', '')}/{routed}"] if routed else []


POLICY_INDEXERS = {INDEX_BY_TARGET: index_by_target, INDEX_BY_ROUTED: index_by_routed}


def keys_for_service(service: JSON, policies: Cache) -> set[str]:
    """Policies targeting the Service, routing through it, or owning it (shadow)."""
    meta = _meta(service)
    key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    out = {policy_key(p) for p in policies.by_index(INDEX_BY_TARGET, key)}
    out |= {policy_key(p) for p in policies.by_index(INDEX_BY_ROUTED, key)}
    owner = marks.controller_owner(service)
    if owner is not None:
        out.add(f"{meta.get('namespace', '')}/{owner[0]}")
    return out


def keys_for_pod(pod: JSON, policies: Cache, services: Cache) -> set[str]:
    """Policies of the pod's namespace whose target Service selects the pod (by its
    selector, or the selector a takeover saved)."""
    namespace = str(_meta(pod).get("namespace", ""))
    labels = labels_of(pod)
    out: set[str] = set()
    for policy in policies.by_index(INDEX_NAMESPACE, namespace):
        target = target_name(policy)
        service = services.get(f"{namespace}/{target}") if target else None
        if service is not None and selector_matches(pod_selector(service), labels):
            out.add(policy_key(policy))
    return out


def keys_for_slice(slice_obj: JSON) -> set[str]:
    """Our slice's policy, from its controller ownerReference or policy label."""
    meta = _meta(slice_obj)
    namespace = meta.get("namespace", "")
    out: set[str] = set()
    owner = marks.controller_owner(slice_obj)
    if owner is not None:
        out.add(f"{namespace}/{owner[0]}")
    label = (meta.get("labels") or {}).get(marks.LABEL_POLICY)
    if label:
        out.add(f"{namespace}/{label}")
    return out


def union(*key_sets: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for keys in key_sets:
        out.update(keys)
    return out
