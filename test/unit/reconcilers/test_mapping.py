from __future__ import annotations

from typing import Any

from reconciler_objects import make_pod, make_service

from aviator.api.types import API_VERSION
from aviator.informers import NAMESPACE_INDEX, Indexer, namespace_index
from aviator.kube import marks
from aviator.reconcilers.mapping import (
    POLICY_INDEXERS,
    keys_for_pod,
    keys_for_service,
    keys_for_slice,
    routed_service,
)
from aviator.reconcilers.services import takeover_patch


def policy(
    name: str, target: str, mode: str = "shadow", ns: str = "default", **routing: Any
) -> Any:
    return {
        "apiVersion": API_VERSION,
        "kind": "AviatorPolicy",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
        "spec": {
            "targetRef": {"kind": "Service", "name": target},
            "routing": {"mode": mode, **routing},
        },
    }


def caches() -> tuple[Indexer, Indexer]:
    policies = Indexer({NAMESPACE_INDEX: namespace_index, **POLICY_INDEXERS})
    services = Indexer({NAMESPACE_INDEX: namespace_index})
    return policies, services


def test_routed_service_per_mode() -> None:
    assert routed_service(policy("p", "web")) == "web-aviator"
    assert routed_service(policy("p", "web", serviceName="fast")) == "fast"
    assert routed_service(policy("p", "web", mode="takeover")) == "web"
    assert routed_service({"spec": {}}) is None
    assert routed_service({"spec": "garbage"}) is None


def test_service_events_reach_targeting_and_owning_policies() -> None:
    policies, _ = caches()
    policies.upsert(policy("a", "web"))
    policies.upsert(policy("b", "web", mode="takeover"))
    policies.upsert(policy("c", "api"))
    policies.upsert(policy("d", "web", ns="other"))
    assert keys_for_service(make_service("web"), policies) == {"default/a", "default/b"}
    shadow = make_service("web-aviator", selector={})
    assert keys_for_service(shadow, policies) == {"default/a"}
    shadow["metadata"]["ownerReferences"] = [marks.owner_reference("zz", "uid-zz")]
    assert keys_for_service(shadow, policies) == {"default/a", "default/zz"}
    assert keys_for_service(make_service("nothing"), policies) == set()


def test_pod_events_reach_policies_whose_target_selects_the_pod() -> None:
    policies, services = caches()
    policies.upsert(policy("a", "web"))
    policies.upsert(policy("b", "api"))
    policies.upsert(policy("c", "missing"))
    services.upsert(make_service("web", selector={"app": "web"}))
    services.upsert(make_service("api", selector={"app": "api"}))
    assert keys_for_pod(make_pod("x", labels={"app": "web", "v": "1"}), policies, services) == {
        "default/a"
    }
    assert keys_for_pod(make_pod("y", labels={}), policies, services) == set()
    assert (
        keys_for_pod(make_pod("z", labels={"app": "web"}, namespace="o"), policies, services)
        == set()
    )


def test_pod_events_follow_a_taken_over_selector() -> None:
    policies, services = caches()
    policies.upsert(policy("a", "web", mode="takeover"))
    svc = make_service("web", selector={"app": "web"})
    patch = takeover_patch(svc, "a")
    svc["metadata"]["annotations"] = patch["metadata"]["annotations"]
    del svc["spec"]["selector"]
    services.upsert(svc)
    assert keys_for_pod(make_pod("x", labels={"app": "web"}), policies, services) == {"default/a"}


def test_empty_selector_selects_no_pod() -> None:
    policies, services = caches()
    policies.upsert(policy("a", "web"))
    services.upsert(make_service("web", selector={}))
    assert keys_for_pod(make_pod("x", labels={"app": "web"}), policies, services) == set()


def test_slice_events_reach_owner() -> None:
    s = {
        "metadata": {
            "name": "s",
            "namespace": "default",
            "labels": {marks.LABEL_POLICY: "p"},
            "ownerReferences": [marks.owner_reference("p", "uid-p")],
        }
    }
    assert keys_for_slice(s) == {"default/p"}
    assert keys_for_slice({"metadata": {"name": "x", "namespace": "default"}}) == set()
