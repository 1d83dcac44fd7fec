"""Which local pod owns an IP: a node-local Pod informer with an index by pod IP.

The agent watches only the pods of its node (field selector spec.nodeName=<node>), so
memory and watch traffic stay proportional to the node, not the cluster. Pods on the
host network are not indexed (their IP is the node's, shared by many), nor are pods
that finished (Succeeded/Failed), whose IP may already belong to a new pod.
"""

from __future__ import annotations

from typing import Any

from aviator.informers import InformerFactory, SharedIndexInformer, object_key
from aviator.kube.pods import is_terminating, pod_ips
from aviator.kube.resources import PODS

JSON = dict[str, Any]

POD_IP_INDEX = "aviator.podIP"
_FINISHED = ("Succeeded", "Failed")


def indexed_ips(pod: JSON) -> list[str]:
    """The IPs a pod is filed under (see the module docstring for who is left out)."""
    if (pod.get("spec") or {}).get("hostNetwork"):
        return []
    if (pod.get("status") or {}).get("phase") in _FINISHED:
        return []
    return pod_ips(pod)


def _preference(pod: JSON) -> tuple[bool, str, str]:
    # A live pod over one being deleted, then the newest, then by key (deterministic).
    created = str((pod.get("metadata") or {}).get("creationTimestamp") or "")
    return (not is_terminating(pod), created, object_key(pod))


def choose_owner(pods: list[JSON]) -> JSON | None:
    """The pod that really holds an IP when several claim it (briefly, during reuse)."""
    return max(pods, key=_preference) if pods else None


def node_field_selector(node: str) -> str:
    return f"spec.nodeName={node}"


class PodMap:
    """IP → "namespace/name" for the pods of one node, read from an informer's cache."""

    def __init__(self, informer: SharedIndexInformer) -> None:
        self.informer = informer
        informer.indexer.add_indexers({POD_IP_INDEX: indexed_ips})

    @classmethod
    def for_node(cls, factory: InformerFactory, node: str) -> PodMap:
        return cls(factory.informer_for(PODS, field_selector=node_field_selector(node)))

    def has_synced(self) -> bool:
        return self.informer.has_synced()

    def pod_object(self, ip: str) -> JSON | None:
        return choose_owner(self.informer.indexer.by_index(POD_IP_INDEX, ip))

    def pod_for(self, ip: str) -> str | None:
        """ "namespace/name" of the pod holding `ip` on this node, or None."""
        pod = self.pod_object(ip)
        return None if pod is None else object_key(pod)

    def pods(self) -> list[JSON]:
        """Every pod of the node (as cached)."""
        return self.informer.indexer.list()
