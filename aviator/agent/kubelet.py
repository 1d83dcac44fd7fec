"""The kubelet's probes of this node's pods, and the node's own addresses (pure).

The kubelet's readiness, liveness and startup probes reach a pod's socket like any
request; a health endpoint usually answers at once, so counted as traffic they make an
idle pod look fast. The BPF program tells them apart (bpf/latency.h, ROLE_PROBE): a
request is a probe when it comes from one of the node's addresses to a port and path
the kubelet probes. This module says which those are:

- `kubelet_probes(pod)`: the HTTP probes of a pod's containers (port, path, period);
  startup probes only until their container started, as the kubelet stops them then.
  HTTPS probes are listed without a path (TLS: the program cannot read it, and decides
  by the address and the port alone). tcpSocket probes send no request: not listed.
- `grpc_probe_ports(pods)`: the (pod IP, port)s the kubelet's gRPC probes reach. Their
  HTTP/2 streams' :path is not read: the program decides by the node address and the
  port, per connection, and leaves the agent's own (keep-warm) connections out (the
  kubelet opens a connection of its own per gRPC probe).
- `probe_paths(pods, keepwarm)`: per (pod IP, port), the paths to tell apart, without
  the keep-warm path the agent itself probes on that port (a policy's `probePath` is
  the real path by definition: when it is also a kubelet probe's, that path is traffic).
- `path_hash`: the hash the program compares (its constants are the ABI's).
- `local_addresses`: the addresses of the agent's own network namespace (the node's:
  the agent runs with hostNetwork), from /proc/net/fib_trie and /proc/net/if_inet6.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aviator.kube.pods import container_port, is_terminating

JSON = dict[str, Any]

DEFAULT_PERIOD_S = 10  # the kubelet's default periodSeconds
_KINDS = ("readinessProbe", "livenessProbe", "startupProbe")


@dataclass(frozen=True, slots=True)
class KubeletProbe:
    """One HTTP probe of a container: its port, its path (None: HTTPS, unreadable)."""

    kind: str
    port: int
    path: str | None
    period_s: int


def kubelet_probes(pod: JSON) -> list[KubeletProbe]:
    """The HTTP probes the kubelet sends to `pod` now (see the module docstring)."""
    started = _started(pod)
    out: list[KubeletProbe] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for kind in _KINDS:
            probe = container.get(kind)
            if not isinstance(probe, dict) or not isinstance(probe.get("httpGet"), dict):
                continue
            if kind == "startupProbe" and container.get("name") in started:
                continue
            get = probe["httpGet"]
            port = container_port(container, get.get("port"))
            if port is None or not 0 < port < 65536:
                continue
            period = probe.get("periodSeconds") or DEFAULT_PERIOD_S
            if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
                period = DEFAULT_PERIOD_S
            https = str(get.get("scheme") or "HTTP").upper() == "HTTPS"
            out.append(KubeletProbe(kind, port, None if https else request_path(get), period))
    return out


def grpc_ports(pod: JSON) -> set[int]:
    """The ports of `pod` the kubelet sends gRPC probes to now: readiness and liveness
    probes of every container, and startup probes until their container started."""
    started = _started(pod)
    ports: set[int] = set()
    for container in (pod.get("spec") or {}).get("containers") or []:
        for kind in _KINDS:
            probe = container.get(kind)
            if not isinstance(probe, dict) or not isinstance(probe.get("grpc"), dict):
                continue
            if kind == "startupProbe" and container.get("name") in started:
                continue
            port = container_port(container, probe["grpc"].get("port"))
            if port is not None and 0 < port < 65536:
                ports.add(port)
    return ports


def grpc_probe_ports(pods: Iterable[JSON]) -> set[tuple[str, int]]:
    """The (pod IP, port)s the kubelet's gRPC probes reach (see the module docstring)."""
    out: set[tuple[str, int]] = set()
    for pod in pods:
        if is_terminating(pod) or (pod.get("spec") or {}).get("hostNetwork"):
            continue  # a hostNetwork pod's address is the node's: nothing to tell apart
        for port in grpc_ports(pod):
            out.update((ip, port) for ip in pod_ips(pod))
    return out


def _started(pod: JSON) -> set[Any]:
    """Names of the pod's containers whose startup probe passed."""
    return {
        s.get("name")
        for s in (pod.get("status") or {}).get("containerStatuses") or []
        if s.get("started")
    }


def request_path(http_get: JSON) -> str:
    """The request target the kubelet sends for an httpGet probe (a path without a
    leading slash gets one, as the kubelet's URL building gives it)."""
    path = str(http_get.get("path") or "/")
    return path if path.startswith("/") else "/" + path


def pod_ips(pod: JSON) -> list[str]:
    status = pod.get("status") or {}
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return ips


def probe_paths(
    pods: Iterable[JSON], keepwarm: Mapping[tuple[str, int], str]
) -> dict[tuple[str, int], tuple[str, ...]]:
    """Per (pod IP, port) the kubelet probes: the paths of its probes there, sorted,
    the keep-warm path of that (ip, port) left out. An entry with no path (HTTPS probes
    only) still marks the port: the program then decides by the address and the port.
    A port whose plain-HTTP probe paths are all the keep-warm path has no entry."""
    paths: dict[tuple[str, int], set[str]] = {}
    plain: set[tuple[str, int]] = set()  # keys with a plain-HTTP probe
    for pod in pods:
        if is_terminating(pod) or (pod.get("spec") or {}).get("hostNetwork"):
            continue  # a hostNetwork pod's address is the node's: nothing to tell apart
        probes = kubelet_probes(pod)
        for ip in pod_ips(pod):
            for probe in probes:
                key = (ip, probe.port)
                mine = paths.setdefault(key, set())
                if probe.path is None:
                    continue
                plain.add(key)
                if probe.path != keepwarm.get(key):
                    mine.add(probe.path)
    return {key: tuple(sorted(p)) for key, p in paths.items() if p or key not in plain}


def path_hash(path: str, *, offset: int, prime: int, max_len: int) -> int | None:
    """32-bit FNV-1a of the request target's bytes as sent (bpf/latency.h); None when
    it is longer than `max_len` bytes (the program never matches those)."""
    data = path.encode("utf-8", "surrogateescape")
    if not data or len(data) > max_len:
        return None
    h = offset
    for b in data:
        h = ((h ^ b) * prime) & 0xFFFFFFFF
    return h


def parse_fib_trie(text: str) -> set[str]:
    """The IPv4 addresses of this namespace's interfaces: the /32 host LOCAL entries of
    /proc/net/fib_trie (an address line, then its '/32 host LOCAL' leaf)."""
    out: set[str] = set()
    last: str | None = None
    for line in text.splitlines():
        words = line.strip().split()
        if len(words) >= 2 and words[0] in ("|--", "+--") and "/" not in words[1]:
            last = words[1]
        elif last is not None and words[:3] == ["/32", "host", "LOCAL"]:
            out.add(last)
    return {a for a in out if _valid(a, 4)}


def parse_if_inet6(text: str) -> set[str]:
    """The IPv6 addresses of /proc/net/if_inet6 (32 hex digits per line first)."""
    out: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if words and len(words[0]) == 32:
            try:
                out.add(str(ipaddress.IPv6Address(int(words[0], 16))))
            except ValueError:
                continue
    return out


def _valid(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def local_addresses() -> set[str]:
    """The addresses of the agent's network namespace (empty where /proc says nothing)."""
    out: set[str] = set()
    sources = (("/proc/net/fib_trie", parse_fib_trie), ("/proc/net/if_inet6", parse_if_inet6))
    for path, parse in sources:
        try:
            with open(path) as f:
                out |= parse(f.read())
        except OSError:
            continue
    return out
