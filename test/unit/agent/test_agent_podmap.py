"""IP → pod mapping over a (not started) informer cache."""

from __future__ import annotations

from typing import Any, cast

from aviator.agent.podmap import PodMap, choose_owner, indexed_ips, node_field_selector
from aviator.informers import SharedIndexInformer
from aviator.kube import KubeClient
from aviator.kube.resources import PODS


def pod(
    name: str,
    ip: str | None,
    *,
    ns: str = "default",
    phase: str = "Running",
    host_network: bool = False,
    created: str = "2024-01-01T00:00:00Z",
    deleting: bool = False,
    ips: list[str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-02T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    if ips:
        status["podIPs"] = [{"ip": i} for i in ips]
    return {"metadata": meta, "spec": {"hostNetwork": host_network}, "status": status}


def test_indexed_ips() -> None:
    assert indexed_ips(pod("a", "10.0.0.1")) == ["10.0.0.1"]
    assert indexed_ips(pod("a", None, ips=["10.0.0.1", "fd00::0001"])) == ["10.0.0.1", "fd00::1"]
    assert indexed_ips(pod("a", "10.0.0.1", host_network=True)) == []
    assert indexed_ips(pod("a", "10.0.0.1", phase="Succeeded")) == []
    assert indexed_ips(pod("a", None)) == []


def test_owner_of_a_reused_ip() -> None:
    old = pod("old", "10.0.0.1", created="2024-01-01T00:00:00Z")
    new = pod("new", "10.0.0.1", created="2024-02-01T00:00:00Z")
    assert choose_owner([old, new]) is new
    assert (
        choose_owner([pod("old", "10.0.0.1", created="2025-01-01T00:00:00Z", deleting=True), new])
        is new
    )
    assert choose_owner([]) is None


def test_pod_map_follows_the_cache() -> None:
    informer = SharedIndexInformer(cast(KubeClient, object()), PODS)
    pods = PodMap(informer)
    informer.indexer.upsert(pod("a", "10.0.0.1", ns="shop"))
    informer.indexer.upsert(pod("h", "192.168.0.1", host_network=True))
    assert pods.pod_for("10.0.0.1") == "shop/a"
    assert pods.pod_for("192.168.0.1") is None
    informer.indexer.upsert(pod("a", "10.0.0.1", ns="shop", phase="Failed"))
    assert pods.pod_for("10.0.0.1") is None
    assert len(pods.pods()) == 2
    assert node_field_selector("n1") == "spec.nodeName=n1"
