"""What our endpoints say about their pods, held to what kube-controller-manager's
EndpointSlice controller writes for the same pod and Service (conditions, hostname,
ports, zone, hints), and which pods a routed Service publishes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reconciler_objects import make_pod, make_service

from aviator.reconcilers.endpoints import (
    Publishing,
    desired_endpoints,
    resolve_ports,
    routed_pods,
)
from aviator.reconcilers.hints import (
    ANNOTATION_TOPOLOGY_AWARE_HINTS,
    ANNOTATION_TOPOLOGY_MODE,
    HintMode,
    auto_hints,
    hint_mode,
    zone_cpu_ratios,
)

JSON = dict[str, Any]
ZONES = {"n1": "z1", "n2": "z2", "n3": "z3"}


def _endpoints(service: JSON, pods: list[JSON], **kw: Any) -> dict[str, JSON]:
    """Every endpoint by pod name (one family, one port group in these tests)."""
    publishing = Publishing(service, kw.pop("routed", "web"), ZONES.get, **kw)
    return {n: ep for eps in desired_endpoints(publishing, pods).values() for n, ep in eps.items()}


# --- conditions, as kube-controller-manager's podToEndpoint sets them ------------------


@pytest.mark.parametrize(
    ("ready", "terminating", "publish_not_ready", "want"),
    [
        (True, False, False, {"ready": True, "serving": True, "terminating": False}),
        (False, False, False, {"ready": False, "serving": False, "terminating": False}),
        (True, True, False, {"ready": False, "serving": True, "terminating": True}),
        (False, True, False, {"ready": False, "serving": False, "terminating": True}),
        (False, False, True, {"ready": True, "serving": False, "terminating": False}),
        (True, True, True, {"ready": True, "serving": True, "terminating": True}),
    ],
)
def test_conditions_are_the_built_in_ones(
    ready: bool, terminating: bool, publish_not_ready: bool, want: JSON
) -> None:
    svc = make_service()
    svc["spec"]["publishNotReadyAddresses"] = publish_not_ready
    pod = make_pod("a", ready=ready, terminating=terminating)
    assert _endpoints(svc, [pod])["a"]["conditions"] == want


def test_zone_node_and_target_ref() -> None:
    ep = _endpoints(make_service(), [make_pod("a", node="n2")])["a"]
    assert (ep["zone"], ep["nodeName"]) == ("z2", "n2")
    assert ep["targetRef"] == {"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"}


# --- which pods: the active set, else the terminating pods that still serve -----------


def test_active_pods_are_routed_and_terminating_ones_are_not_added() -> None:
    active = [make_pod("a")]
    old = make_pod("old", "10.0.0.9", terminating=True)
    assert routed_pods(active, [*active, old]) == (active, False)


def test_nothing_active_publishes_serving_terminating_pods() -> None:
    old = make_pod("old", "10.0.0.9", terminating=True)
    stopped = make_pod("stopped", "10.0.0.8", terminating=True, ready=False)
    unready = make_pod("new", "10.0.0.7", ready=False)
    pods, fallback = routed_pods([], [unready, stopped, old])
    assert fallback and pods == [old]
    ep = _endpoints(make_service(), pods)["old"]
    assert ep["conditions"] == {"ready": False, "serving": True, "terminating": True}


def test_nothing_serves_publishes_nothing() -> None:
    assert routed_pods([], [make_pod("new", ready=False)]) == ([], False)


# --- hostname: per-pod DNS of the Service the pod's subdomain names ---------------------


def test_hostname_when_subdomain_names_the_routed_service() -> None:
    pod = make_pod("db-0")
    pod["spec"].update(hostname="db-0", subdomain="db")
    other = make_pod("db-1", "10.0.0.2")
    other["spec"].update(hostname="db-1", subdomain="elsewhere")
    eps = _endpoints(make_service("db"), [pod, other], routed="db")
    assert eps["db-0"]["hostname"] == "db-0"
    assert "hostname" not in eps["db-1"]
    # The shadow Service is another name: no hostname there, as upstream would do.
    assert "hostname" not in _endpoints(make_service("db"), [pod], routed="db-aviator")["db-0"]


# --- ports --------------------------------------------------------------------------


def test_target_port_defaults_to_port_and_protocol_matters() -> None:
    svc = make_service(ports=[{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}])
    tcp_only = make_pod("a", container_ports=[{"name": "dns", "containerPort": 5353}])
    udp = make_pod("b", container_ports=[{"name": "dns", "containerPort": 5353, "protocol": "UDP"}])
    assert resolve_ports(svc, tcp_only) == ()
    assert resolve_ports(svc, udp) == (("dns", "UDP", 5353, None),)
    assert resolve_ports(make_service(ports=[{"port": 80}]), udp) == (("", "TCP", 80, None),)


def test_named_port_of_a_sidecar_resolves_of_an_init_container_does_not() -> None:
    svc = make_service(ports=[{"name": "m", "port": 9, "targetPort": "metrics"}])
    pod = make_pod("a")
    init = {"name": "init", "ports": [{"name": "metrics", "containerPort": 9100}]}
    pod["spec"]["initContainers"] = [init]
    assert resolve_ports(svc, pod) == ()
    init["restartPolicy"] = "Always"
    assert resolve_ports(svc, pod) == (("m", "TCP", 9100, None),)


# --- hints --------------------------------------------------------------------------


def _svc(distribution: str | None = None, annotations: dict[str, str] | None = None) -> JSON:
    svc = make_service(annotations=annotations)
    if distribution:
        svc["spec"]["trafficDistribution"] = distribution
    return svc


def test_hint_mode_follows_the_built_in_precedence() -> None:
    assert hint_mode(_svc()) is HintMode.NONE
    assert hint_mode(_svc("PreferClose")) is HintMode.ZONE
    assert hint_mode(_svc("PreferSameZone")) is HintMode.ZONE
    assert hint_mode(_svc("PreferSameNode")) is HintMode.ZONE_AND_NODE
    assert hint_mode(_svc(None, {ANNOTATION_TOPOLOGY_MODE: "Auto"})) is HintMode.AUTO
    # The annotation wins over trafficDistribution; the deprecated key over the new one.
    assert hint_mode(_svc("PreferClose", {ANNOTATION_TOPOLOGY_MODE: "auto"})) is HintMode.AUTO
    both = {ANNOTATION_TOPOLOGY_AWARE_HINTS: "disabled", ANNOTATION_TOPOLOGY_MODE: "Auto"}
    assert hint_mode(_svc("PreferClose", both)) is HintMode.ZONE


def test_prefer_close_hints_each_ready_endpoint_to_its_zone() -> None:
    pods = [
        make_pod("a", "10.0.0.1", node="n1"),
        make_pod("b", "10.0.0.2", node="n2"),
        make_pod("nozone", "10.0.0.3", node="elsewhere"),
        make_pod("old", "10.0.0.4", node="n1", terminating=True),
    ]
    eps = _endpoints(_svc("PreferClose"), pods)
    assert eps["a"]["hints"] == {"forZones": [{"name": "z1"}]}
    assert eps["b"]["hints"] == {"forZones": [{"name": "z2"}]}
    assert "hints" not in eps["nozone"] and "hints" not in eps["old"]
    assert all("hints" not in ep for ep in _endpoints(_svc(), pods).values())


def test_prefer_same_node_adds_node_hints() -> None:
    eps = _endpoints(_svc("PreferSameNode"), [make_pod("a", node="n1")])
    assert eps["a"]["hints"] == {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]}


def test_auto_hints_as_upstream_example() -> None:
    # kube-controller-manager's own example: 10 endpoints over zones of 35/35/30 % CPU;
    # zone a has one too many, and the first of them serves zone b.
    zones = ["a", "b", "c", "c", "a", "a", "a", "b", "c", "a"]
    ratios = {"a": 0.35, "b": 0.35, "c": 0.30}
    got = auto_hints(zones, ratios)
    assert got == ["b", "b", "c", "c", "a", "a", "a", "b", "c", "a"]
    assert Counter(got) == {"a": 4, "b": 3, "c": 3}


def test_auto_hints_refused_as_upstream() -> None:
    ratios = {"a": 0.5, "b": 0.5}
    assert auto_hints(["a"], ratios) is None  # fewer endpoints than zones
    assert auto_hints(["a", "b"], {"a": 1.0}) is None  # one zone
    assert auto_hints(["a", None], ratios) is None  # an endpoint without zone
    assert auto_hints(["a", "b"], None) is None  # no node information
    # Minimum share: ceil(share / 1.2). 10/90 % of 2 needs 1 + 2 > 2 endpoints; so
    # does 30/30/40 % of 3, by floating point as upstream (0.4 * 3 / 1.2 > 1).
    assert auto_hints(["a", "b"], {"a": 0.1, "b": 0.9}) is None
    assert auto_hints(["a", "b", "c"], {"a": 0.3, "b": 0.3, "c": 0.4}) is None
    assert auto_hints(["a", "b", "c", "c"], {"a": 0.25, "b": 0.25, "c": 0.5}) == [
        "a",
        "b",
        "c",
        "c",
    ]


def test_auto_hints_on_endpoints_and_fallback_to_none() -> None:
    svc = _svc("PreferClose", {ANNOTATION_TOPOLOGY_MODE: "Auto"})
    pods = [make_pod("a", "10.0.0.1", node="n1"), make_pod("b", "10.0.0.2", node="n2")]
    eps = _endpoints(svc, pods, zone_cpu={"z1": 0.5, "z2": 0.5})
    assert [eps[n]["hints"]["forZones"][0]["name"] for n in "ab"] == ["z1", "z2"]
    # Auto that cannot allocate gives no hints at all, even with trafficDistribution.
    eps = _endpoints(svc, pods, zone_cpu=None)
    assert all("hints" not in ep for ep in eps.values())


def _node(name: str, zone: str | None, cpu: str | None, ready: bool = True, **labels: str) -> JSON:
    meta_labels = dict(labels)
    if zone:
        meta_labels["topology.kubernetes.io/zone"] = zone
    status: JSON = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if cpu is not None:
        status["allocatable"] = {"cpu": cpu}
    return {"metadata": {"name": name, "labels": meta_labels}, "status": status}


def test_zone_cpu_ratios_as_upstream() -> None:
    nodes = [_node("a", "z1", "3"), _node("b", "z2", "1000m"), _node("c", "z2", "0.5")]
    assert zone_cpu_ratios(nodes) == pytest.approx({"z1": 3 / 4.5, "z2": 1.5 / 4.5})
    # Not ready and control-plane nodes do not count; any counted node without zone
    # or CPU makes the information insufficient.
    skipped = [_node("x", None, None, ready=False)]
    skipped.append(_node("y", None, None, **{"node-role.kubernetes.io/control-plane": ""}))
    assert zone_cpu_ratios(nodes + skipped) == zone_cpu_ratios(nodes)
    assert zone_cpu_ratios([*nodes, _node("d", None, "2")]) is None
    assert zone_cpu_ratios([*nodes, _node("d", "z3", None)]) is None
    assert zone_cpu_ratios([_node("a", "z1", "3")]) is None


zone_names = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=300, deadline=None)
@given(
    zones=st.lists(zone_names, min_size=1, max_size=40),
    weights=st.dictionaries(zone_names, st.integers(1, 64), min_size=1),
)
def test_auto_hints_properties(zones: list[str], weights: dict[str, int]) -> None:
    total = sum(weights.values())
    ratios = {z: w / total for z, w in weights.items()}
    got = auto_hints(zones, ratios)
    assert got == auto_hints(list(zones), dict(reversed(ratios.items())))  # deterministic
    if got is None:
        return
    assert len(got) == len(zones)
    counts, own = Counter(got), Counter(zones)
    for zone, hint in zip(zones, got, strict=True):
        if hint != zone:
            # Only a zone with more endpoints than its share gives any away, and only
            # to a zone with fewer than its share.
            assert hint in ratios and own[zone] > ratios.get(zone, 0) * len(zones)
            assert own[hint] < ratios[hint] * len(zones)
    for zone, ratio in ratios.items():
        # Every zone ends within one endpoint of its share, unless it had to give more
        # than it owned (never) or nobody could give.
        share = ratio * len(zones)
        assert counts[zone] <= max(own[zone], share + 1)
