"""The box's pure pieces: address pools, pod plans, EndpointSlice backends, percentiles."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.box.addresses import AddressPool, PoolExhausted
from aviator.box.cmd import _run_async
from aviator.box.endpoints import endpoint_pods, proxied, ready_backends, service_of
from aviator.box.nodes import node_object, zone_of_node
from aviator.box.podspec import Unsupported, expand, image_name, plan_pod
from aviator.box.podstatus import has_controller_owner, unsupported_status
from aviator.box.stats import Sample, percentile, summarize
from aviator.kube.marks import LABEL_SERVICE_NAME

# -- address pool ----------------------------------------------------------------------


def test_pool_allocates_distinct_addresses_and_skips_network_and_broadcast() -> None:
    pool = AddressPool("10.0.0.250", "10.0.1.5")
    got = [pool.allocate(f"k{i}") for i in range(10)]
    assert len(set(got)) == 10
    assert "10.0.0.255" not in got and "10.0.1.0" not in got
    with pytest.raises(PoolExhausted):
        pool.allocate("one-too-many")


def test_pool_is_idempotent_per_key_and_reuses_only_after_wrapping() -> None:
    pool = AddressPool("10.0.0.1", "10.0.0.3")
    a = pool.allocate("a")
    assert pool.allocate("a") == a
    assert pool.release("a") == a
    b = pool.allocate("b")
    assert b != a, "a released address is not handed out again at once"


def test_pool_skips_unusable_addresses() -> None:
    pool = AddressPool("10.0.0.1", "10.0.0.9")
    assert pool.allocate("a", usable=lambda ip: ip != "10.0.0.1") == "10.0.0.2"


@settings(max_examples=300)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 15)), max_size=80))
def test_pool_never_hands_out_one_address_twice(ops: list[tuple[bool, int]]) -> None:
    pool = AddressPool("10.1.0.1", "10.1.0.20")
    held: dict[str, str] = {}
    for allocate, k in ops:
        key = f"k{k}"
        if allocate:
            held[key] = pool.allocate(key)  # 16 keys, 20 addresses: never exhausted
        else:
            pool.release(key)
            held.pop(key, None)
        assert len(set(held.values())) == len(held)
        assert all(ipaddress.ip_address(ip).packed[-1] not in (0, 255) for ip in held.values())


# -- pod plans -------------------------------------------------------------------------


def _pod(**container: Any) -> dict[str, Any]:
    base = {"name": "app", "image": "aviator-testapp:latest"}
    base.update(container)
    return {
        "metadata": {"name": "p1", "namespace": "ns", "uid": "u1", "labels": {"v": "fast"}},
        "spec": {"nodeName": "box-node-1", "containers": [base]},
    }


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("aviator-testapp", "aviator-testapp"),
        ("aviator-testapp:latest", "aviator-testapp"),
        ("registry.local:5000/team/aviator-testapp:v2", "aviator-testapp"),
        ("aviator-testapp@sha256:abc", "aviator-testapp"),
        ("nginx:1.27", "nginx"),
    ],
)
def test_image_name(image: str, name: str) -> None:
    assert image_name(image) == name


def test_plan_resolves_env_fieldrefs_and_sets_the_listen_address() -> None:
    pod = _pod(
        env=[
            {"name": "LATENCY", "value": "10ms"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['v']"}}},
            {"name": "GREETING", "value": "$(POD_NAME) on $(NODE) costs $$5"},
        ],
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    )
    (c,) = plan_pod(pod, "10.244.1.7", "127.0.0.1").containers
    assert c.env["POD_NAME"] == "p1" and c.env["IP"] == "10.244.1.7" and c.env["V"] == "fast"
    assert c.env["GREETING"] == "p1 on $(NODE) costs $5"
    assert c.env["LISTEN_ADDR"] == "10.244.1.7" and c.env["PORT"] == "8080"
    assert c.env["HOSTNAME"] == "p1"
    assert c.ports == (8080,)
    assert c.readiness is not None
    assert (c.readiness.port, c.readiness.path, c.readiness.period_s) == (8080, "/healthz", 1.0)
    assert c.readiness.failure_threshold == 3  # the kubelet's default


def test_plan_without_ports_listens_on_the_default_port() -> None:
    (c,) = plan_pod(_pod(), "10.244.1.7", "127.0.0.1").containers
    assert c.env["PORT"] == "8080" and c.ports == (8080,) and c.readiness is None


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (_pod(image="nginx"), "UnsupportedImage"),
        (
            _pod(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
            "UnsupportedEnvSource",
        ),
        (_pod(readinessProbe={"exec": {"command": ["true"]}}), "UnsupportedProbe"),
        (_pod(readinessProbe={"httpGet": {"port": "nope"}}), "UnsupportedProbe"),
    ],
)
def test_plan_refuses_what_the_box_cannot_run(pod: dict[str, Any], reason: str) -> None:
    with pytest.raises(Unsupported) as err:
        plan_pod(pod, "10.244.1.7", "127.0.0.1")
    assert err.value.reason == reason and err.value.message


def test_expand_leaves_unknown_references() -> None:
    assert expand("$(A)-$(B)", {"A": "1"}) == "1-$(B)"


def test_unknown_image_fails_bare_pods_but_not_replicaset_pods() -> None:
    bare = _pod()
    owned = _pod()
    owned["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "controller": True}]
    assert not has_controller_owner(bare) and has_controller_owner(owned)
    status = unsupported_status(
        reason="UnsupportedImage", message="m", host_ip="127.0.0.1", start_time="t", failed=False
    )
    assert status["phase"] == "Pending"


# -- EndpointSlices ----------------------------------------------------------------------


def _slice(
    svc: str, port_name: str | None, port: int, endpoints: list[tuple[str, bool | None]]
) -> dict[str, Any]:
    eps = []
    for ip, ready in endpoints:
        ep: dict[str, Any] = {"addresses": [ip], "targetRef": {"name": f"pod-{ip}"}}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        eps.append(ep)
    return {
        "metadata": {
            "namespace": "ns",
            "name": f"{svc}-x",
            "labels": {LABEL_SERVICE_NAME: svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port}],
        "endpoints": eps,
    }


def test_ready_backends_merge_all_slices_and_skip_unready() -> None:
    slices = [
        _slice("s", "http", 8080, [("10.0.0.1", True), ("10.0.0.2", False)]),
        _slice("s", "http", 8080, [("10.0.0.3", None), ("10.0.0.1", True)]),
        _slice("s", "metrics", 9090, [("10.0.0.4", True)]),
    ]
    assert ready_backends("http", slices) == [("10.0.0.1", 8080), ("10.0.0.3", 8080)]
    assert ready_backends("metrics", slices) == [("10.0.0.4", 9090)]
    assert ready_backends("other", slices) == []
    assert endpoint_pods(slices[:1]) == {"10.0.0.1": "pod-10.0.0.1"}
    assert service_of(slices[0]) == "ns/s"


def test_with_nothing_ready_serving_terminating_endpoints_are_used() -> None:
    """As kube-proxy: a rollout's old pod keeps serving until a new one is ready."""
    terminating = {"ready": False, "serving": True, "terminating": True}
    stopped = {"ready": False, "serving": False, "terminating": True}
    old = _slice("s", "http", 8080, [("10.0.0.1", None)])
    old["endpoints"][0]["conditions"] = terminating
    gone = _slice("s", "http", 8080, [("10.0.0.2", None)])
    gone["endpoints"][0]["conditions"] = stopped
    assert ready_backends("http", [old, gone]) == [("10.0.0.1", 8080)]
    new = _slice("s", "http", 8080, [("10.0.0.3", True)])
    assert ready_backends("http", [old, gone, new]) == [("10.0.0.3", 8080)]


def test_unnamed_ports_match() -> None:
    assert ready_backends(None, [_slice("s", None, 80, [("10.0.0.1", True)])]) == [("10.0.0.1", 80)]


def test_headless_external_and_apiserver_services_are_not_proxied() -> None:
    def svc(name: str, **spec: Any) -> dict[str, Any]:
        return {"metadata": {"namespace": "default", "name": name}, "spec": spec}

    assert proxied(svc("web", clusterIP="10.0.0.5"))
    assert not proxied(svc("web", clusterIP="None"))
    assert not proxied(svc("web", type="ExternalName"))
    assert not proxied(svc("kubernetes", clusterIP="10.0.0.1"))


# -- client statistics -----------------------------------------------------------------


@settings(max_examples=300)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=200), st.floats(0.01, 1))
def test_percentile_is_an_element_with_enough_below(values: list[float], q: float) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert p in ordered
    assert sum(1 for v in ordered if v <= p) >= q * len(ordered) - 1e-9


def test_summary_counts_errors_and_pods() -> None:
    samples = [Sample(0, 0.010, True, "a"), Sample(0, 0.500, True, "b"), Sample(0, 1, False)]
    s = summarize(samples)
    assert (s.count, s.errors, s.by_pod) == (3, 1, {"a": 1, "b": 1})
    assert s.p50_ms == pytest.approx(10) and s.p99_ms == pytest.approx(500)
    assert percentile([], 0.5) is None


# -- the demo's display ------------------------------------------------------------------


def test_avp_line_has_the_kubectl_columns() -> None:
    from datetime import UTC, datetime

    from aviator.box.demo import AVP_HEADER, avp_line

    policy = {
        "metadata": {"name": "my-app-policy", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"activePods": 2, "totalPods": 4, "p99LatencyMs": 12.4, "source": "ebpf"},
    }
    now = datetime(2026, 1, 1, 0, 5, 0, tzinfo=UTC)
    assert AVP_HEADER.split() == ["NAME", "ACTIVE", "TOTAL", "P99ms", "SOURCE", "AGE"]
    assert avp_line(policy, now).split() == ["my-app-policy", "2", "4", "12", "ebpf", "5m"]


def test_the_sample_policy_routes_through_its_shadow_service() -> None:
    from aviator.box.demo import PolicyPlan
    from aviator.box.files import SAMPLE_POLICY

    plan = PolicyPlan.load(SAMPLE_POLICY)
    assert (plan.target, plan.routed) == ("my-app-service", "my-app-service-aviator")
    assert plan.interval_s == 5.0


def _hinted(*eps: tuple[str, list[str] | None, bool]) -> dict[str, Any]:
    sl = _slice("s", "http", 8080, [(ip, ready) for ip, _, ready in eps])
    for ep, (_, zones, _) in zip(sl["endpoints"], eps, strict=True):
        if zones is not None:
            ep["hints"] = {"forZones": [{"name": z} for z in zones]}
    return sl


def test_zone_hints_as_kube_proxy_reads_them() -> None:
    a, b = ("10.0.0.1", 8080), ("10.0.0.2", 8080)
    sl = _hinted(("10.0.0.1", ["za"], True), ("10.0.0.2", ["zb", "za"], True))
    assert ready_backends("http", [sl], "za") == [a, b]
    assert ready_backends("http", [sl], "zb") == [b]
    assert ready_backends("http", [sl], "zc") == [a, b]  # no endpoint for the zone: all
    assert ready_backends("http", [sl], None) == [a, b]  # a node without a zone: all
    # One ready endpoint without hints: kube-proxy ignores every hint.
    partial = _hinted(("10.0.0.1", ["za"], True), ("10.0.0.2", None, True))
    assert ready_backends("http", [partial], "za") == [a, b]
    # Unready endpoints do not count.
    unready = _hinted(("10.0.0.1", ["za"], True), ("10.0.0.2", None, False))
    assert ready_backends("http", [unready], "za") == [a]


def test_nodes_go_round_robin_over_the_zones() -> None:
    assert [zone_of_node(i, 1) for i in range(3)] == ["box", "box", "box"]
    assert [zone_of_node(i, 2) for i in range(3)] == ["box-a", "box-b", "box-a"]
    labels = node_object("n", "box-b")["metadata"]["labels"]
    assert labels["topology.kubernetes.io/zone"] == "box-b"


def test_the_box_runs_on_asyncios_own_loop() -> None:
    """Not uvloop, whatever the event loop policy: on it the box died of SIGSEGV
    (aviator.box.cmd._run_async)."""
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        loops.append(asyncio.get_running_loop())
        return 7

    assert _run_async(main()) == 7
    assert type(loops[0]).__module__.startswith("asyncio"), type(loops[0])
