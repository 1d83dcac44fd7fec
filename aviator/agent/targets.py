"""Which local pods to probe, on which port and path (pure).

A pod is a probe target when an AviatorPolicy's target Service selects it: the
policy's `spec.targetRef.name` names a Service in the policy's namespace, whose
selector (or, after a takeover, the selector saved in its annotation) matches the
pod's labels. The policy gives the port (`spec.targetPort`, default 8080) and the path
(`spec.probePath`, default "/"). Only running pods that are not being deleted are
probed. When several policies select the same pod and port, the first policy by
namespace/name chooses the path.

The kubelet's own probes of a pod (HTTP and gRPC) are not traffic: the source counts
them apart (aviator.agent.kubelet), so a window's samples are traffic and keep-warm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from aviator.agent.podmap import indexed_ips
from aviator.informers import object_key
from aviator.kube.objects import labels_of, selector_matches
from aviator.kube.pods import is_terminating, pod_ips
from aviator.kube.services import pod_selector
from aviator.latency.probing import ProbeTarget

JSON = dict[str, Any]

DEFAULT_TARGET_PORT = 8080
DEFAULT_PROBE_PATH = "/"

TargetKey = tuple[str, int]  # (ip, port)


def _probe_settings(policy: JSON) -> tuple[str, str, int, str] | None:
    """(namespace, service, port, path) of a policy, None when it names no Service."""
    meta = policy.get("metadata") or {}
    spec = policy.get("spec") or {}
    service = (spec.get("targetRef") or {}).get("name")
    namespace = meta.get("namespace")
    if not service or not namespace:
        return None
    port = spec.get("targetPort", DEFAULT_TARGET_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    path = spec.get("probePath") or DEFAULT_PROBE_PATH
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    return str(namespace), str(service), port, path


def selected_pods(
    policies: Iterable[JSON],
    service_for: Callable[[str, str], JSON | None],
    pods: Iterable[JSON],
) -> Iterator[tuple[JSON, JSON]]:
    """(policy, pod) for every running, not deleting pod among `pods` that a policy's
    target Service selects; policies by namespace/name, pods in the order given.

    `service_for(namespace, name)` looks a Service up (e.g. in an informer cache).
    """
    by_namespace: dict[str, list[JSON]] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Running" or is_terminating(pod):
            continue
        ns = (pod.get("metadata") or {}).get("namespace")
        if ns:
            by_namespace.setdefault(str(ns), []).append(pod)
    for policy in sorted(policies, key=object_key):
        meta = policy.get("metadata") or {}
        service_name = ((policy.get("spec") or {}).get("targetRef") or {}).get("name")
        local = by_namespace.get(str(meta.get("namespace") or ""))
        if not local or not service_name:
            continue
        service = service_for(str(meta["namespace"]), str(service_name))
        if service is None:
            continue
        selector = pod_selector(service)
        for pod in local:
            if selector_matches(selector, labels_of(pod)):
                yield policy, pod


Number = TypeVar("Number", int, float)


def smallest_per_pod(
    policies: Iterable[JSON],
    service_for: Callable[[str, str], JSON | None],
    pods: Iterable[JSON],
    value_of: Callable[[JSON], Number | None],
) -> dict[str, Number]:
    """Pod IP → the smallest `value_of(policy)` of the policies selecting the pod (see
    `selected_pods`); a policy whose value is None counts for none. Each policy's
    value is read once."""
    out: dict[str, Number] = {}
    values: dict[str, Number | None] = {}
    for policy, pod in selected_pods(policies, service_for, pods):
        uid = str((policy.get("metadata") or {}).get("uid") or id(policy))
        if uid not in values:
            values[uid] = value_of(policy)
        value = values[uid]
        if value is None:
            continue
        for ip in pod_ips(pod):
            held = out.get(ip)
            out[ip] = value if held is None else min(value, held)
    return out


def probe_targets(
    policies: Iterable[JSON],
    service_for: Callable[[str, str], JSON | None],
    pods: Iterable[JSON],
) -> dict[TargetKey, ProbeTarget]:
    """Probe targets among `pods`, keyed by (ip, port) (see `selected_pods`)."""
    targets: dict[TargetKey, ProbeTarget] = {}
    for policy, pod in selected_pods(policies, service_for, pods):
        settings = _probe_settings(policy)
        if settings is None:
            continue
        _, _, port, path = settings
        for ip in indexed_ips(pod):
            if (ip, port) not in targets:
                targets[(ip, port)] = ProbeTarget(ip, port, path, object_key(pod))
    return targets
