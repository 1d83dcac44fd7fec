"""Raw Kubernetes objects for reconciler unit tests, and merge patches applied to them."""

from __future__ import annotations

import copy
from typing import Any

from aviator.kube import mergepatch

JSON = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch (sharing nothing with `patch`)."""
    return mergepatch.apply(target, copy.deepcopy(patch))


def make_pod(
    name: str,
    ip: str | list[str] = "10.0.0.1",
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
    terminating: bool = False,
    node: str | None = "node-a",
    container_ports: list[JSON] | None = None,
) -> JSON:
    ips = [ip] if isinstance(ip, str) else ip
    meta: JSON = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": labels if labels is not None else {"app": "web"},
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: JSON = {"containers": [{"name": "app", "ports": container_ports or []}]}
    if node:
        spec["nodeName"] = node
    status: JSON = {
        "phase": phase,
        "podIP": ips[0] if ips else None,
        "podIPs": [{"ip": i} for i in ips],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def make_service(
    name: str = "web",
    *,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    ports: list[JSON] | None = None,
    annotations: dict[str, str] | None = None,
) -> JSON:
    spec: JSON = {
        "ports": ports
        if ports is not None
        else [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        "type": "ClusterIP",
        "clusterIP": "10.96.0.10",
    }
    if selector is None:
        selector = {"app": "web"}
    if selector:
        spec["selector"] = selector
    meta: JSON = {"name": name, "namespace": namespace, "uid": f"uid-svc-{name}"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
