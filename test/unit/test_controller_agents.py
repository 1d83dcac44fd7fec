"""The controller's view of agents' pods: pods by IP, and the node of a token's pod."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.controller.agents import POD_IP_INDEXERS, pod_locator, pod_node_resolver
from aviator.informers import Indexer
from aviator.kube.client import ApiError, KubeClient
from aviator.latency.admission import PodPlace


def pod(
    name: str,
    ip: str,
    node: str | None,
    *,
    phase: str = "Running",
    uid: str = "u",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def test_locator_names_live_scheduled_pods_by_ip() -> None:
    pods = Indexer(POD_IP_INDEXERS)
    pods.upsert(pod("a", "10.0.0.1", "n1"))
    pods.upsert(pod("done", "10.0.0.1", "n2", phase="Succeeded"))  # its IP is free again
    pods.upsert(pod("pending", "10.0.0.2", None))
    pods.upsert(pod("old", "10.0.0.3", "n2", deleting=True))
    pods.upsert(pod("v6", "FD00::0001", "n1"))
    locate = pod_locator(pods)
    assert locate("10.0.0.1") == (PodPlace("ns/a", "n1"),)
    assert locate("10.0.0.2") == ()
    assert locate("10.0.0.3") == (PodPlace("ns/old", "n2", terminating=True),)
    assert locate("fd00::1") == (PodPlace("ns/v6", "n1"),)  # normalised as the schema does
    assert locate("10.9.9.9") == ()


def test_the_locator_answers_from_the_cache_as_it_is_now() -> None:
    pods = Indexer(POD_IP_INDEXERS)
    pods.upsert(pod("a", "10.0.0.1", "n1"))
    locate = pod_locator(pods)
    assert locate("10.0.0.1") == (PodPlace("ns/a", "n1"),)
    assert locate("10.0.0.1") == (PodPlace("ns/a", "n1"),)  # remembered
    pods.upsert(pod("a", "10.0.0.1", "n1", deleting=True))  # updated: a new object
    assert locate("10.0.0.1") == (PodPlace("ns/a", "n1", terminating=True),)
    pods.upsert(pod("b", "10.0.0.1", "n2"))  # the IP reused before the old pod left
    assert locate("10.0.0.1") == (
        PodPlace("ns/a", "n1", terminating=True),
        PodPlace("ns/b", "n2"),
    )
    pods.delete("ns/b")
    pods.delete("ns/a")
    assert locate("10.0.0.1") == ()
    pods.upsert(pod("c", "10.0.0.1", "n3"))
    assert locate("10.0.0.1") == (PodPlace("ns/c", "n3"),)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete", "locate"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["10.0.0.1", "10.0.0.2"]),
            st.sampled_from(["n1", "n2"]),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_the_remembered_answer_is_always_the_cache_as_it_is_now(
    steps: list[tuple[str, str, str, str, bool]],
) -> None:
    """Whatever the cache goes through, the locator answers as one that never
    remembered anything (a fresh locator) would."""
    pods = Indexer(POD_IP_INDEXERS)
    locate = pod_locator(pods)
    for action, name, ip, node, deleting in steps:
        if action == "upsert":
            pods.upsert(pod(name, ip, node, deleting=deleting))
        elif action == "delete":
            pods.delete(f"ns/{name}")
        for addr in ("10.0.0.1", "10.0.0.2"):
            assert locate(addr) == pod_locator(pods)(addr)


class FakeApi:
    def __init__(self, pods: dict[str, dict[str, Any]]) -> None:
        self.pods = pods
        self.gets = 0

    async def get(self, res: Any, name: str, namespace: str) -> dict[str, Any]:
        self.gets += 1
        if name not in self.pods:
            raise ApiError(404, {"reason": "NotFound"})
        return self.pods[name]


async def test_resolver_reads_the_cache_then_the_api() -> None:
    pods = Indexer(POD_IP_INDEXERS)
    pods.upsert(pod("agent-a", "192.0.2.1", "n1", uid="uid-a"))
    api = FakeApi({"agent-b": pod("agent-b", "192.0.2.2", "n2", uid="uid-b")})
    resolve = pod_node_resolver(pods, cast(KubeClient, api))
    assert await resolve("ns", "agent-a", "uid-a") == "n1"
    assert api.gets == 0
    assert await resolve("ns", "agent-b", "uid-b") == "n2"  # newer than the cache
    assert await resolve("ns", "agent-b", "another-uid") is None  # recreated pod
    assert await resolve("ns", "gone", "uid") is None
    api.pods["agent-c"] = pod("agent-c", "192.0.2.3", None, uid="uid-c")
    assert await resolve("ns", "agent-c", "uid-c") is None  # not scheduled


async def test_resolver_lets_an_outage_through() -> None:
    class Down:
        async def get(self, *_: Any) -> Any:
            raise ApiError(503)

    resolve = pod_node_resolver(Indexer(POD_IP_INDEXERS), cast(KubeClient, Down()))
    with pytest.raises(ApiError):
        await resolve("ns", "x", "u")
