"""Which endpoint windows an agent may report: its own node's pods only (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aviator.latency.admission import OTHER_NODE, UNKNOWN_IP, PodPlace, admit, place_of
from aviator.latency.histogram import Histogram
from aviator.latency.schema import EndpointWindow, Role


def window(ip: str, pod: str | None = None, role: Role = "server") -> EndpointWindow:
    h = Histogram.from_values([1000])
    return EndpointWindow(ip, 8080, role, pod, h, 1, 1000, 1000, 0, 0)


PODS = {
    "10.0.0.1": [PodPlace("ns/a", "n1")],
    "10.0.0.2": [PodPlace("ns/b", "n2")],
    # hostNetwork pods share their node's IP
    "192.0.2.1": [PodPlace("kube-system/x", "n1"), PodPlace("kube-system/y", "n1")],
    "10.0.0.9": [PodPlace("ns/c", "n1"), PodPlace("ns/d", "n2")],
    # a pod stuck terminating elsewhere, and the pod that has its IP now
    "10.0.0.5": [PodPlace("old/e", "n2", terminating=True), PodPlace("ns/e", "n1")],
    "10.0.0.6": [PodPlace("old/f", "n2", terminating=True)],
}


def locate(ip: str) -> list[PodPlace]:
    return PODS.get(ip, [])


def test_place_of() -> None:
    assert place_of([], "n1") == UNKNOWN_IP
    assert place_of(PODS["10.0.0.2"], "n1") == OTHER_NODE
    assert place_of(PODS["10.0.0.9"], "n1") == OTHER_NODE  # claimed elsewhere too
    assert place_of(PODS["192.0.2.1"], "n1") == PodPlace("kube-system/x", "n1")
    assert place_of(PODS["10.0.0.5"], "n1") == PodPlace("ns/e", "n1")
    assert place_of(PODS["10.0.0.5"], "n2") == OTHER_NODE
    assert place_of(PODS["10.0.0.6"], "n2") == PodPlace("old/f", "n2", terminating=True)


def test_only_the_nodes_own_pods_are_kept_under_the_controllers_names() -> None:
    eps = [
        window("10.0.0.1", "ns/a"),
        window("10.0.0.1", "ns/forged"),
        window("10.0.0.2", "ns/b"),  # another node's pod
        window("10.0.0.2", None, role="client"),  # a client view of it: refused too
        window("10.0.0.9"),
        window("10.9.9.9"),
        window("192.0.2.1"),
    ]
    result = admit(eps, "n1", locate)
    assert [(e.ip, e.pod) for e in result.kept] == [
        ("10.0.0.1", "ns/a"),
        ("10.0.0.1", "ns/a"),
        ("192.0.2.1", "kube-system/x"),
    ]
    assert result.kept[0] is eps[0]  # unchanged windows are not copied
    assert result.refused == {OTHER_NODE: 3, UNKNOWN_IP: 1}


@given(
    st.lists(st.sampled_from([*PODS, "10.9.9.9"]), max_size=20),
    st.sampled_from(["n1", "n2", "n3"]),
)
def test_nothing_kept_is_another_nodes(ips: list[str], node: str) -> None:
    result = admit([window(ip) for ip in ips], node, locate)
    assert len(result.kept) + sum(result.refused.values()) == len(ips)
    for ep in result.kept:
        places = PODS[ep.ip]
        deciding = [p for p in places if not p.terminating] or places
        assert all(p.node == node for p in deciding)
