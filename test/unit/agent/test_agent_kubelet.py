"""The kubelet's probes of a pod, the paths the program tells apart, the hash it
compares, and the node's own addresses."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aviator.agent.bpf.abi import default as default_abi
from aviator.agent.bpf.probemaps import ProbeMaps
from aviator.agent.kubelet import (
    KubeletProbe,
    grpc_probe_ports,
    kubelet_probes,
    parse_fib_trie,
    parse_if_inet6,
    path_hash,
    probe_paths,
)

FNV = {"offset": 2166136261, "prime": 16777619, "max_len": 64}


def pod(containers: list[dict[str, Any]], *, started: tuple[str, ...] = (), **spec: Any) -> Any:
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": containers, **spec},
        "status": {
            "podIP": "10.0.0.1",
            "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
            "containerStatuses": [{"name": n, "started": True} for n in started],
        },
    }


APP = {
    "name": "app",
    "ports": [{"name": "http", "containerPort": 8080}],
    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    "livenessProbe": {"httpGet": {"path": "livez", "port": 8080}},
    "startupProbe": {"httpGet": {"path": "/started", "port": "8080"}, "periodSeconds": 2},
}
SIDECAR = {
    "name": "sidecar",
    "readinessProbe": {"httpGet": {"port": 9443, "scheme": "HTTPS"}, "periodSeconds": 3},
    "livenessProbe": {"tcpSocket": {"port": 9090}},
    "startupProbe": {"grpc": {"port": 9091}},
}


def test_the_http_probes_the_kubelet_sends() -> None:
    assert kubelet_probes(pod([APP, SIDECAR])) == [
        KubeletProbe("readinessProbe", 8080, "/healthz", 1),
        KubeletProbe("livenessProbe", 8080, "/livez", 10),  # a leading slash, the default period
        KubeletProbe("startupProbe", 8080, "/started", 2),
        KubeletProbe("readinessProbe", 9443, None, 3),  # HTTPS: the path is not readable
    ]
    # Once its container started, the kubelet stops the startup probe.
    started = kubelet_probes(pod([APP], started=("app",)))
    assert [p.kind for p in started] == ["readinessProbe", "livenessProbe"]
    assert kubelet_probes({}) == []


def test_paths_per_pod_address_and_port_without_the_keep_warm_path() -> None:
    paths = probe_paths([pod([APP, SIDECAR])], {("10.0.0.1", 8080): "/livez"})
    assert paths == {
        ("10.0.0.1", 8080): ("/healthz", "/started"),  # keep-warm's /livez is traffic
        ("fd00::1", 8080): ("/healthz", "/livez", "/started"),
        ("10.0.0.1", 9443): (),  # HTTPS: the address and port decide
        ("fd00::1", 9443): (),
    }
    only = {**APP, "startupProbe": None, "livenessProbe": None}
    # The only probe path is the keep-warm path: nothing left to tell apart.
    assert ("10.0.0.1", 8080) not in probe_paths([pod([only])], {("10.0.0.1", 8080): "/healthz"})
    # A hostNetwork pod's address is the node's own: all of its requests come "from" it.
    assert probe_paths([pod([APP], hostNetwork=True)], {}) == {}
    deleting = pod([APP])
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert probe_paths([deleting], {}) == {}


def test_path_hash_is_fnv1a_of_the_bytes_as_sent() -> None:
    assert path_hash("a", **FNV) == 0xE40C292C
    assert path_hash("foobar", **FNV) == 0xBF9CF968
    assert path_hash("/x" * 32, **FNV) is not None  # 64 bytes: the most the program reads
    assert path_hash("/x" * 32 + "y", **FNV) is None
    assert path_hash("", **FNV) is None


def test_the_hash_constants_are_the_headers() -> None:
    const = default_abi().header.const
    assert (const("PATH_HASH_OFFSET"), const("PATH_HASH_PRIME"), const("PROBE_PATH_MAX")) == (
        FNV["offset"],
        FNV["prime"],
        FNV["max_len"],
    )


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.0.0/16 2 0 2
        |-- 10.244.0.0
           /16 link UNICAST
        |-- 10.244.0.1
           /32 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.244.0.1
        /32 host LOCAL
     |-- 10.244.255.255
        /32 link BROADCAST
"""


def test_node_addresses_from_proc() -> None:
    assert parse_fib_trie(FIB_TRIE) == {"10.244.0.1", "127.0.0.1"}
    inet6 = (
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
    )
    assert parse_if_inet6(inet6) == {"::1", "fe80::1"}


@given(st.text())
def test_proc_parsers_take_any_text(text: str) -> None:
    assert all(ipaddress.ip_address(a).version == 4 for a in parse_fib_trie(text))
    assert all(ipaddress.ip_address(a).version == 6 for a in parse_if_inet6(text))


class FakeTable(dict[Any, Any]):
    """A BCC table: Key/Leaf types, items set and deleted by key."""

    class Key:
        def __init__(self) -> None:
            self.addr = [0] * 16
            self.port = 0

        def _id(self) -> tuple[Any, ...]:
            return (tuple(self.addr), self.port)

        def __hash__(self) -> int:
            return hash(self._id())

        def __eq__(self, other: object) -> bool:
            return isinstance(other, FakeTable.Key) and self._id() == other._id()

    class Leaf:
        def __init__(self, value: int = 0) -> None:
            self.value = value
            self.hashes = [0] * 8
            self.count = 0
            self.grpc = 0


class FakeBpf(dict[bytes, FakeTable]):
    def __init__(self) -> None:
        super().__init__({b"probe_ports": FakeTable(), b"node_addrs": FakeTable()})
        self.writes = 0

    def ports(self) -> dict[int, list[int]]:
        return {k.port: v.hashes[: v.count] for k, v in self[b"probe_ports"].items()}

    def grpc(self) -> set[int]:
        return {k.port for k, v in self[b"probe_ports"].items() if v.grpc}


def test_probe_maps_hold_what_they_were_given_and_write_only_changes() -> None:
    bpf = FakeBpf()
    maps = ProbeMaps(bpf, default_abi())
    h = maps.hashes
    maps.sync({("10.0.0.1", 80): ["/a", "/b"], ("10.0.0.1", 81): []}, ["10.0.0.254"])
    assert bpf.ports() == {80: list(h(["/a", "/b"])), 81: []}
    assert len(bpf[b"node_addrs"]) == 1 and maps.stats.endpoints == 2
    first = bpf[b"probe_ports"]
    kept = {k.port: v for k, v in first.items()}
    maps.sync({("10.0.0.1", 80): ["/b", "/a"], ("10.0.0.1", 82): ["/" + "x" * 80]}, [])
    assert bpf.ports() == {80: list(h(["/a", "/b"])), 82: []}
    assert {k.port: v for k, v in first.items()}[80] is kept[80]  # unchanged: not rewritten
    assert len(bpf[b"node_addrs"]) == 0
    assert maps.stats.left_out == 1  # the path too long for the program


def test_grpc_probe_ports_are_the_ports_the_kubelet_probes_by_grpc() -> None:
    app = {
        "name": "app",
        "readinessProbe": {"grpc": {"port": 50051}, "periodSeconds": 2},
        "livenessProbe": {"grpc": {"port": 50051, "service": "liveness"}},
        "startupProbe": {"grpc": {"port": 50052}, "periodSeconds": 1},
    }
    both = [("10.0.0.1", 50051), ("fd00::1", 50051)]
    assert grpc_probe_ports([pod([app, SIDECAR])]) == {
        *both,
        ("10.0.0.1", 50052),
        ("fd00::1", 50052),
        ("10.0.0.1", 9091),  # the sidecar's startup probe
        ("fd00::1", 9091),
    }
    # Once started, the kubelet stops sending the startup probes; HTTP probes are not gRPC.
    assert grpc_probe_ports([pod([app, SIDECAR], started=("app", "sidecar"))]) == set(both)
    assert grpc_probe_ports([pod([APP])]) == set()
    assert grpc_probe_ports([pod([app], hostNetwork=True)]) == set()
    deleting = pod([app])
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert grpc_probe_ports([deleting]) == set()


def test_probe_maps_mark_the_grpc_probed_endpoints() -> None:
    bpf = FakeBpf()
    maps = ProbeMaps(bpf, default_abi())
    maps.sync({("10.0.0.1", 80): ["/a"]}, [], [("10.0.0.1", 50051)])
    assert bpf.ports() == {80: list(maps.hashes(["/a"])), 50051: []}
    assert bpf.grpc() == {50051}
    maps.sync({("10.0.0.1", 80): ["/a"]}, [], [("10.0.0.1", 80)])  # both on one port
    assert bpf.ports() == {80: list(maps.hashes(["/a"]))}
    assert bpf.grpc() == {80}
    maps.sync({("10.0.0.1", 80): ["/a"]}, [])
    assert bpf.grpc() == set()
