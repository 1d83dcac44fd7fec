from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from reconciler_objects import make_pod, make_service

from aviator.kube import marks
from aviator.reconcilers.endpoints import Publishing, desired_endpoints
from aviator.reconcilers.slices import SliceOwner, apply_plan, plan_slices

OWNER = SliceOwner(namespace="default", service="web-aviator", policy="p", policy_uid="uid-p")


def _desired(service: dict[str, Any], pods: list[dict[str, Any]]) -> Any:
    return desired_endpoints(Publishing(service, OWNER.service), pods)


def _pods(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [make_pod(f"pod-{i:04d}", f"10.1.{i // 250}.{i % 250 + 1}") for i in range(start, n)]


def _converge(service: dict[str, Any], pods: list[dict[str, Any]], observed: list[Any]) -> Any:
    plan = plan_slices(OWNER, _desired(service, pods), observed)
    return plan, apply_plan(observed, plan)


def _endpoint_names(slices: list[dict[str, Any]]) -> list[str]:
    return [e["targetRef"]["name"] for s in slices for e in s["endpoints"]]


def test_250_pods_make_three_slices_of_at_most_100() -> None:
    plan, slices = _converge(make_service(), _pods(250), [])
    assert len(plan.create) == 3 and not plan.update and not plan.delete
    assert sorted(len(s["endpoints"]) for s in slices) == [50, 100, 100]
    assert sorted(_endpoint_names(slices)) == [f"pod-{i:04d}" for i in range(250)]


def test_slice_shape_labels_owner_conditions() -> None:
    pod = make_pod("a", "10.0.0.7", node="n1", container_ports=[])
    _, slices = _converge(make_service(), [pod], [])
    (s,) = slices
    assert s["addressType"] == "IPv4"
    assert s["metadata"]["labels"] == {
        marks.LABEL_SERVICE_NAME: "web-aviator",
        marks.LABEL_MANAGED_BY: "aviator.example.com",  # literal: pins the value on the wire
        marks.LABEL_POLICY: "p",
    }
    (ref,) = s["metadata"]["ownerReferences"]
    assert ref["controller"] is True and ref["uid"] == "uid-p" and ref["kind"] == "AviatorPolicy"
    assert s["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    (ep,) = s["endpoints"]
    assert ep["addresses"] == ["10.0.0.7"]
    assert ep["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert ep["nodeName"] == "n1" and "zone" not in ep
    assert ep["targetRef"] == {"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"}


def test_ipv6_pod_goes_to_ipv6_slice_dual_stack_to_both() -> None:
    pods = [
        make_pod("v4", "10.0.0.1"),
        make_pod("v6", "fd00::0:1"),
        make_pod("ds", ["10.0.0.2", "fd00::2"]),
    ]
    _, slices = _converge(make_service(), pods, [])
    by_family = {s["addressType"]: sorted(_endpoint_names([s])) for s in slices}
    assert by_family == {"IPv4": ["ds", "v4"], "IPv6": ["ds", "v6"]}
    v6 = next(s for s in slices if s["addressType"] == "IPv6")
    assert "fd00::1" in [e["addresses"][0] for e in v6["endpoints"]]  # compressed form
    assert all(s["metadata"]["name"].startswith("web-aviator-") for s in slices)


def test_named_target_port_resolves_per_pod_into_separate_slices() -> None:
    svc = make_service(ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    a = make_pod("a", "10.0.0.1", container_ports=[{"name": "web", "containerPort": 8080}])
    b = make_pod("b", "10.0.0.2", container_ports=[{"name": "web", "containerPort": 9090}])
    c = make_pod("c", "10.0.0.3", container_ports=[{"name": "web", "containerPort": 8080}])
    none = make_pod("d", "10.0.0.4", container_ports=[{"name": "other", "containerPort": 1}])
    _, slices = _converge(svc, [a, b, c, none], [])
    by_port = {tuple(p["port"] for p in s["ports"]): sorted(_endpoint_names([s])) for s in slices}
    assert by_port == {(8080,): ["a", "c"], (9090,): ["b"], (): ["d"]}


def test_unchanged_input_plans_nothing() -> None:
    svc, pods = make_service(), _pods(120)
    _, slices = _converge(svc, pods, [])
    plan, _ = _converge(svc, pods, slices)
    assert plan.empty


def test_endpoint_order_alone_is_not_a_change() -> None:
    svc, pods = make_service(), _pods(5)
    _, slices = _converge(svc, pods, [])
    slices[0]["endpoints"].reverse()
    plan, _ = _converge(svc, pods, slices)
    assert plan.empty


def test_removing_one_pod_touches_one_slice() -> None:
    svc, pods = make_service(), _pods(250)
    _, slices = _converge(svc, pods, [])
    plan, after = _converge(svc, pods[:100] + pods[101:], slices)
    assert len(plan.update) == 1 and not plan.create and not plan.delete
    assert len(_endpoint_names(after)) == 249


def test_new_pods_fill_room_before_creating() -> None:
    svc = make_service()
    _, slices = _converge(svc, _pods(150), [])
    plan, after = _converge(svc, _pods(200), slices)
    assert not plan.create and len(plan.update) == 1
    assert sorted(len(s["endpoints"]) for s in after) == [100, 100]


def test_slices_of_another_service_or_gone_group_are_deleted() -> None:
    svc = make_service()
    _, slices = _converge(svc, _pods(3), [])
    other = SliceOwner(namespace="default", service="web", policy="p", policy_uid="uid-p")
    plan = plan_slices(other, _desired(svc, _pods(3)), slices)
    assert plan.delete == [slices[0]["metadata"]["name"]]
    assert len(plan.create) == 1
    assert plan.create[0]["metadata"]["labels"][marks.LABEL_SERVICE_NAME] == "web"
    gone = plan_slices(OWNER, {}, slices)
    assert gone.delete == [slices[0]["metadata"]["name"]] and not gone.create


def test_condition_change_updates() -> None:
    svc, pods = make_service(), _pods(2)
    _, slices = _converge(svc, pods, [])
    pods[0]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    plan, _ = _converge(svc, pods, slices)
    assert len(plan.update) == 1
    assert plan.update[0]["metadata"]["name"] == slices[0]["metadata"]["name"]


pod_sets = st.sets(st.integers(min_value=0, max_value=400), max_size=260)


@settings(max_examples=150, deadline=None)
@given(first=pod_sets, second=pod_sets, v6=st.sets(st.integers(0, 400), max_size=30))
def test_convergence_properties(first: set[int], second: set[int], v6: set[int]) -> None:
    svc = make_service()

    def pods(ids: set[int]) -> list[dict[str, Any]]:
        return [
            make_pod(f"p{i}", f"fd00::{i + 1:x}" if i in v6 else f"10.2.{i // 200}.{i % 200 + 1}")
            for i in sorted(ids)
        ]

    _, state = _converge(svc, pods(first), [])
    plan, state = _converge(svc, pods(second), state)
    names = _endpoint_names(state)
    # exactly the desired pods, each once
    assert Counter(names) == Counter(f"p{i}" for i in second)
    for s in state:
        assert 0 < len(s["endpoints"]) <= 100
        fam = {"IPv6" if ":" in e["addresses"][0] else "IPv4" for e in s["endpoints"]}
        assert fam == {s["addressType"]}
    # at most ceil(n/100) slices per family beyond the ones that already had members
    v4n = len([i for i in second if i not in v6])
    v6n = len([i for i in second if i in v6])
    assert len(plan.create) <= -(-v4n // 100) + -(-v6n // 100)
    # a converged state plans nothing
    again, _ = _converge(svc, pods(second), state)
    assert again.empty
    # names are unique
    assert len({s["metadata"]["name"] for s in state}) == len(state)
