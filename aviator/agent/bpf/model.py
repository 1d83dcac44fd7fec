"""What the BPF reader hands to the agent: endpoints and their cumulative counters, and
the connections the program tracks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aviator.kube.addresses import normalize_ip
from aviator.latency.schema import AppProtocol, Role


class BpfUnavailable(RuntimeError):
    """The BPF program cannot run here; `reason` says why in words an operator can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class EndpointKey:
    """One measured endpoint.

    role "server": `ip:port` is the local (pod) address whose own socket answered.
    role "client": `ip:port` is the remote address a local client talked to.
    `ip` is normalised: v4-mapped IPv6 becomes dotted IPv4, IPv6 is compressed.
    """

    ip: str
    port: int
    role: Role


@dataclass(frozen=True)
class EndpointCounters:
    """Cumulative counters of one endpoint since the program was loaded.

    `buckets` has NUM_BUCKETS counts in the shared log-linear layout (µs, see
    aviator.latency.histogram); `rif` is the current number of requests in flight (a
    gauge); `protocol` what the program recognised on the endpoint's connections and
    `oldest_open_us` the age of its oldest open request at the read (0: none);
    everything else only grows (`statuses`: responses whose status was read, `errors`:
    of those, HTTP 5xx and gRPC status other than OK; `keepwarm`: of `count`, requests
    from the agent's own connections, its keep-warm probes).
    """

    buckets: list[int]
    count: int
    sum_us: int
    max_us: int
    rif: int
    aborted: int
    statuses: int = 0
    errors: int = 0
    protocol: AppProtocol = "opaque"
    oldest_open_us: int = 0
    keepwarm: int = 0


@dataclass(frozen=True)
class SocketState:
    """One TCP connection the program tracks (an entry of its `sockets` map).

    `sk` is the map key (the kernel's socket address; unique while the socket lives).
    `local`/`remote` are (ip, port) of this socket's own end and its peer, whatever its
    role; `netns` is the inode of its network namespace. `start_ns` is 0 while no
    request is open, else when the open one began; `idle_ns` when it last became idle
    (established, adopted, an HTTP/1 response began or the server sent more of it, its
    last HTTP/2 stream closed),
    `requests` how many completed on it; times are the kernel's monotonic clock
    (CLOCK_MONOTONIC, ns). `streams` is the number of HTTP/2 streams open on it, each
    from its client's HEADERS until both ends closed it (longer than its request,
    which ends at the answer; an h2 connection's `start_ns` stays 0), `protocol` what
    its first bytes were (None: none seen yet).
    """

    sk: int
    role: Role
    local: tuple[str, int]
    remote: tuple[str, int]
    netns: int
    start_ns: int
    idle_ns: int
    requests: int
    streams: int = 0
    protocol: AppProtocol | None = None

    @property
    def idle(self) -> bool:
        return self.start_ns == 0 and self.streams <= 0


def ip_from_raw16(raw16: bytes) -> str:
    """16 address bytes as the kernel stores them (IPv4 v4-mapped) → canonical text."""
    text = normalize_ip(str(ipaddress.IPv6Address(raw16)))
    assert text is not None  # any 16 bytes are an IPv6 address
    return text


def ip_to_raw16(ip: str) -> bytes:
    """Inverse of ip_from_raw16: IPv4 → v4-mapped IPv6 bytes, IPv6 → its 16 bytes."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed
