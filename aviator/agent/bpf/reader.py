"""Decoding the program's maps into Python values (read-only: never resets a counter,
never writes a socket's state).

The agent diffs successive cumulative snapshots into windows, so counters in the
kernel only ever grow (except the requests-in-flight gauge). Counter names, roles and
the histogram's length come from the program's ABI header (`abi.LatencyAbi`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from aviator.agent.bpf.abi import LatencyAbi
from aviator.agent.bpf.model import EndpointCounters, EndpointKey, SocketState, ip_from_raw16
from aviator.latency.schema import AppProtocol

# An endpoint's protocol is the most specific one any of its samples was measured with.
_PRECEDENCE: tuple[AppProtocol, ...] = ("grpc", "h2", "http1")


def endpoint_protocol(abi: LatencyAbi, proto_requests: Iterable[int]) -> AppProtocol:
    """The protocol of an endpoint from its samples per protocol (ep_val.proto_requests):
    gRPC over h2 over HTTP/1, `opaque` when none of them was recognised."""
    seen = {abi.app_protocols.get(i) for i, n in enumerate(proto_requests) if n > 0}
    for proto in _PRECEDENCE:
        if proto in seen:
            return proto
    return "opaque"


def decode_key(abi: LatencyAbi, key: Any) -> EndpointKey | None:
    """One `endpoints` map key (ctypes struct ep_key); None for unknown roles."""
    role = abi.roles.get(int(key.role))
    if role is None:
        return None
    return EndpointKey(ip=ip_from_raw16(bytes(key.addr)), port=int(key.port), role=role)


def decode_endpoint(
    abi: LatencyAbi, key: Any, value: Any
) -> tuple[EndpointKey, EndpointCounters] | None:
    """One `endpoints` map entry (ctypes struct ep_key and ep_val); None for unknown roles."""
    ep = decode_key(abi, key)
    if ep is None:
        return None
    buckets = list(value.buckets)
    if len(buckets) != abi.num_buckets:
        raise ValueError(f"endpoint histogram has {len(buckets)} buckets, want {abi.num_buckets}")
    counters = EndpointCounters(
        buckets=buckets,
        count=int(value.count),
        sum_us=int(value.sum_us),
        max_us=int(value.max_us),
        # The gauge can dip below zero only through races with map-full drops.
        rif=max(0, int(value.rif)),
        aborted=int(value.aborted),
        statuses=int(value.statuses),
        errors=int(value.errors),
        protocol=endpoint_protocol(abi, value.proto_requests),
        keepwarm=int(value.keepwarm),
    )
    return ep, counters


def read_endpoints(bpf: Any, abi: LatencyAbi) -> dict[EndpointKey, EndpointCounters]:
    """Cumulative snapshot of every endpoint the program has seen."""
    out: dict[EndpointKey, EndpointCounters] = {}
    table = bpf[b"endpoints"]
    for key, value in table.items():
        decoded = decode_endpoint(abi, key, value)
        if decoded is not None:
            out[decoded[0]] = decoded[1]
    return out


def decode_socket(abi: LatencyAbi, key: int, value: Any) -> SocketState | None:
    """One `sockets` map entry (u64 key, ctypes struct sock_state); None for unknown roles."""
    role = abi.roles.get(int(value.ep.role))
    if role is None:
        return None
    ep = (ip_from_raw16(bytes(value.ep.addr)), int(value.ep.port))
    other = (ip_from_raw16(bytes(value.other)), int(value.other_port))
    local, remote = (ep, other) if role == "server" else (other, ep)
    return SocketState(
        sk=int(key),
        role=role,
        local=local,
        remote=remote,
        netns=int(value.netns),
        start_ns=int(value.start_ns),
        idle_ns=int(value.idle_ns),
        requests=int(value.requests),
        streams=max(0, int(value.streams)),
        protocol=abi.app_protocols.get(int(value.proto)),
    )


def read_sockets(bpf: Any, abi: LatencyAbi) -> list[SocketState]:
    """Every connection the program tracks (one map walk; entries may change under it)."""
    out: list[SocketState] = []
    for key, value in bpf[b"sockets"].items():
        decoded = decode_socket(abi, key.value, value)
        if decoded is not None:
            out.append(decoded)
    return out


def with_oldest_open(
    counters: Mapping[EndpointKey, EndpointCounters], oldest: Mapping[EndpointKey, int], now_ns: int
) -> dict[EndpointKey, EndpointCounters]:
    """`counters` (as decoded: no age yet) with each endpoint's `oldest_open_us` at
    `now_ns`. Costs what is open: only the endpoints in `oldest` are copied."""
    out = dict(counters)
    for key, start in oldest.items():
        c = counters.get(key)
        age = max(0, now_ns - start) // 1000 if start else 0
        if c is not None and age != c.oldest_open_us:
            out[key] = replace(c, oldest_open_us=age)
    return out


def read_socket(bpf: Any, abi: LatencyAbi, sk: int) -> SocketState | None:
    """The current state of one connection; None once it is gone from the map."""
    table = bpf[b"sockets"]
    try:
        value = table[table.Key(sk)]
    except KeyError:
        return None
    return decode_socket(abi, sk, value)


def read_server_cut(bpf: Any, sk: int) -> int | None:
    """Where the server's bytes of an HTTP/2 connection stop (h2_conn.server_cut: 0 at
    a frame boundary outside any header block); None when the program parses no HTTP/2
    on it (not HTTP/2, given up, or gone)."""
    table = bpf[b"h2conns"]
    try:
        value = table[table.Key(sk)]
    except KeyError:
        return None
    return int(value.server_cut)


def read_counters(bpf: Any, abi: LatencyAbi) -> dict[str, int]:
    """The program's event counters (enum counter), summed over CPUs."""
    table = bpf[b"counters"]
    return {name: int(table.sum(table.Key(i)).value) for i, name in enumerate(abi.counter_names)}


def count_entries(bpf: Any, map_name: str, *, batch: bool = False) -> int:
    """Entries in a map. `batch` reads it in a few BPF_MAP_LOOKUP_BATCH calls (buffers
    sized for the whole map: for maps of small values); otherwise one syscall per key."""
    table = bpf[map_name.encode()]
    if batch:
        try:
            return sum(1 for _ in table.items_lookup_batch())
        except Exception:  # kernels without batch ops: BCC raises a bare Exception
            pass
    return sum(1 for _ in table)
