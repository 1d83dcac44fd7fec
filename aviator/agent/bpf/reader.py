"""Decoding the program's maps into Python values (read-only: never resets a counter).

The agent diffs successive cumulative snapshots into windows, so counters in the
kernel only ever grow (except the requests-in-flight gauge).
"""

from __future__ import annotations

from typing import Any

from aviator.agent.bpf.model import NUM_BUCKETS, EndpointCounters, EndpointKey, Role, normalise_ip

_ROLES: dict[int, Role] = {1: "server", 2: "client"}

# Index → name of the program's per-CPU `counters` (C_* in bpf/latency.bpf.c).
COUNTER_NAMES = (
    "rx_data_events",
    "tx_events",
    "state_events",
    "destroy_events",
    "requests_started",
    "requests_completed",
    "requests_aborted",
    "endpoints_full_drops",
    "sockets_added",
    "sockets_removed",
)


def decode_endpoint(key: Any, value: Any) -> tuple[EndpointKey, EndpointCounters] | None:
    """One `endpoints` map entry (BCC ctypes key and value); None for unknown roles."""
    role = _ROLES.get(int(key.role))
    if role is None:
        return None
    ep = EndpointKey(ip=normalise_ip(bytes(key.addr)), port=int(key.port), role=role)
    buckets = list(value.buckets)
    if len(buckets) != NUM_BUCKETS:
        raise ValueError(f"endpoint histogram has {len(buckets)} buckets, want {NUM_BUCKETS}")
    counters = EndpointCounters(
        buckets=buckets,
        count=int(value.count),
        sum_us=int(value.sum_us),
        max_us=int(value.max_us),
        # The gauge can dip below zero only through races with map-full drops.
        rif=max(0, int(value.rif)),
        aborted=int(value.aborted),
    )
    return ep, counters


def read_endpoints(bpf: Any) -> dict[EndpointKey, EndpointCounters]:
    """Cumulative snapshot of every endpoint the program has seen."""
    out: dict[EndpointKey, EndpointCounters] = {}
    table = bpf[b"endpoints"]
    for key, value in table.items():
        decoded = decode_endpoint(key, value)
        if decoded is not None:
            out[decoded[0]] = decoded[1]
    return out


def read_counters(bpf: Any) -> dict[str, int]:
    """The program's event counters, summed over CPUs."""
    table = bpf[b"counters"]
    return {name: int(table.sum(table.Key(i)).value) for i, name in enumerate(COUNTER_NAMES)}


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
