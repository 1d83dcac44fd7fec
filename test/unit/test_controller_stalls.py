"""Which policies an agent's report of an open request enqueues (aviator.controller.stalls)."""

from __future__ import annotations

from typing import Any

from aviator.controller.agents import POD_IP_INDEXERS
from aviator.controller.stalls import StallWatch
from aviator.informers import NAMESPACE_INDEX, Indexer, namespace_index
from aviator.latency.histogram import Histogram
from aviator.latency.schema import EndpointWindow
from aviator.reconcilers.mapping import POLICY_INDEXERS


def policy(name: str, target: str, breaker: dict[str, Any], generation: int = 1) -> Any:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "generation": generation},
        "spec": {"targetRef": {"name": target}, "circuitBreaker": breaker},
    }


def pod(name: str, ip: str, app: str) -> Any:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def service(name: str, app: str) -> Any:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {"selector": {"app": app}}}


def window(ip: str, open_us: int) -> EndpointWindow:
    return EndpointWindow(
        ip, 8080, "server", None, Histogram(), 0, 0, 0, 1, 0, oldest_open_us=open_us
    )


def watch() -> tuple[StallWatch, list[str], Indexer]:
    policies = Indexer({NAMESPACE_INDEX: namespace_index, **POLICY_INDEXERS})
    services = Indexer({NAMESPACE_INDEX: namespace_index})
    pods = Indexer(POD_IP_INDEXERS)
    for p in (
        policy("strict", "web", {"enabled": True, "p99Threshold": "200ms"}),
        policy("lenient", "web2", {"enabled": True, "p99Threshold": "2s"}),
        policy("off", "web3", {"enabled": False, "p99Threshold": "100ms"}),
        policy("broken", "web", {"enabled": True, "p99Threshold": "soon"}),
    ):
        policies.upsert(p)
    for s in (service("web", "a"), service("web2", "a"), service("web3", "a")):
        services.upsert(s)
    pods.upsert(pod("a-1", "10.0.0.1", "a"))
    pods.upsert(pod("b-1", "10.0.0.2", "b"))
    queued: list[str] = []
    return StallWatch(pods, policies, services, queued.append), queued, policies


def test_only_policies_whose_threshold_the_open_request_passed_are_enqueued() -> None:
    stalls, queued, _ = watch()
    stalls([window("10.0.0.1", 300_000)])
    assert queued == ["ns/strict"]  # not lenient (2 s), off (breaker off), broken (invalid)
    stalls([window("10.0.0.1", 2_500_000)])
    assert queued[1:] == ["ns/lenient", "ns/strict"]
    # Below every threshold, nothing open, or a pod no policy selects: nothing.
    stalls([window("10.0.0.1", 100_000), window("10.0.0.1", 0), window("10.0.0.2", 9_000_000)])
    stalls([window("10.9.9.9", 9_000_000)])
    assert len(queued) == 3 and stalls.enqueued == 3


def test_a_new_generation_reads_the_threshold_again() -> None:
    stalls, queued, policies = watch()
    stalls([window("10.0.0.1", 300_000)])
    policies.upsert(policy("strict", "web", {"enabled": True, "p99Threshold": "1s"}, 2))
    stalls([window("10.0.0.1", 300_000)])
    assert queued == ["ns/strict"]


def test_young_open_requests_cost_no_look_up() -> None:
    policies = Indexer({NAMESPACE_INDEX: namespace_index, **POLICY_INDEXERS})
    policies.upsert(policy("p", "web", {"enabled": True, "p99Threshold": "500ms"}))
    looked: list[str] = []

    class Pods(Indexer):
        def by_index(self, index_name: str, value: str) -> list[Any]:
            looked.append(value)
            return []

    now = [0.0]
    stalls = StallWatch(
        Pods(POD_IP_INDEXERS), policies, Indexer(), lambda _: None, clock=lambda: now[0]
    )
    stalls([window("10.0.0.1", 100_000), window("10.0.0.2", 600_000)])
    assert looked == ["10.0.0.2"]
    # A stricter policy is taken into account within a second.
    policies.upsert(policy("q", "web", {"enabled": True, "p99Threshold": "50ms"}))
    stalls([window("10.0.0.1", 100_000)])
    assert looked == ["10.0.0.2"]
    now[0] = 1.0
    stalls([window("10.0.0.1", 100_000)])
    assert looked == ["10.0.0.2", "10.0.0.1"]
