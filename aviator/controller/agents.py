"""What the controller checks agents against, from its own Pod cache: the pods at an
IP (`pod_locator`, for aviator.latency.admission) and the node of a token's pod
(`pod_node_resolver`, for aviator.latency.auth).

The Pod informer gets one more index, pod IP → pods, so a snapshot's endpoints are
checked without a scan of the cluster's pods.
"""

from __future__ import annotations

from aviator.informers import Indexer, object_key
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_ips
from aviator.kube.resources import PODS
from aviator.latency.admission import PodLocator, PodPlace
from aviator.latency.auth import PodNodeResolver

INDEX_POD_IP = "aviator/pod-ip"
_FINISHED = ("Succeeded", "Failed")


def index_pod_ip(pod: JSON) -> list[str]:
    """A pod's IPs (normalised, as the stream schema normalises endpoint IPs)."""
    return pod_ips(pod)


POD_IP_INDEXERS = {INDEX_POD_IP: index_pod_ip}


def _place(pod: JSON) -> PodPlace | None:
    """Where a live, scheduled pod is; None for a finished or unscheduled one."""
    if (pod.get("status") or {}).get("phase") in _FINISHED:
        return None
    node = (pod.get("spec") or {}).get("nodeName")
    meta = pod.get("metadata") or {}
    if not node:
        return None
    key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    return PodPlace(key, str(node), meta.get("deletionTimestamp") is not None)


def pod_locator(pods: Indexer) -> PodLocator:
    """The live pods at an IP, by key, from an indexer holding `POD_IP_INDEXERS`.

    Asked for every endpoint of every report, mostly of the same pods: the answer for
    an IP is remembered with the (key, object) pairs it was read from, and given again
    while the cache has not changed at all since (`Indexer.mutations`), or, when it
    has, while it files exactly as many objects under the IP and holds those very
    objects under those keys (an informer replaces an object it updates, never changes
    it; a pod that left the IP, or another that came, changes the count or an object).
    The memo is cleared when it outgrows the cache."""
    # ip -> (the cache's mutations when the answer was last known good, what it was
    # read from, the answer)
    memo: dict[str, tuple[int, tuple[tuple[str, JSON], ...], tuple[PodPlace, ...]]] = {}
    get = pods.get

    def locate(ip: str) -> tuple[PodPlace, ...]:
        held = memo.get(ip)
        now = pods.mutations
        if held is not None:
            checked, read, answer = held
            if checked == now:
                return answer
            if pods.index_size(INDEX_POD_IP, ip) == len(read) and all(
                get(key) is obj for key, obj in read
            ):
                memo[ip] = (now, read, answer)
                return answer
        found = pods.by_index(INDEX_POD_IP, ip)
        places = (_place(p) for p in found)
        answer = tuple(sorted((p for p in places if p is not None), key=lambda p: p.key))
        if len(memo) >= 2 * len(pods) + 1024:
            memo.clear()
        memo[ip] = (now, tuple((object_key(p), p) for p in found), answer)
        return answer

    return locate


def pod_node_resolver(pods: Indexer, client: KubeClient) -> PodNodeResolver:
    """The node of the pod `namespace/name` whose uid is `uid`: from the cache, else
    (an agent pod newer than the cache) from the API server; None when there is no
    such pod or it is not scheduled."""

    async def resolve(namespace: str, name: str, uid: str) -> str | None:
        pod = pods.get(f"{namespace}/{name}")
        if pod is None or (pod.get("metadata") or {}).get("uid") != uid:
            try:
                pod = await client.get(PODS, name, namespace)
            except ApiError as exc:
                if exc.not_found:
                    return None
                raise
        if (pod.get("metadata") or {}).get("uid") != uid:
            return None
        node = (pod.get("spec") or {}).get("nodeName")
        return str(node) if node else None

    return resolve
