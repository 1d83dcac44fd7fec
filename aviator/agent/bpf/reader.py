"""Decoding the program's maps into Python values (read-only: never resets a counter).

The agent diffs successive cumulative snapshots into windows, so counters in the
kernel only ever grow (except the requests-in-flight gauge). Counter names, roles and
the histogram's length come from the program's ABI header (`abi.LatencyAbi`).
"""

from __future__ import annotations

from typing import Any

from aviator.agent.bpf.abi import LatencyAbi
from aviator.agent.bpf.model import EndpointCounters, EndpointKey, ip_from_raw16


def decode_endpoint(
    abi: LatencyAbi, key: Any, value: Any
) -> tuple[EndpointKey, EndpointCounters] | None:
    """One `endpoints` map entry (ctypes struct ep_key and ep_val); None for unknown roles."""
    role = abi.roles.get(int(key.role))
    if role is None:
        return None
    ep = EndpointKey(ip=ip_from_raw16(bytes(key.addr)), port=int(key.port), role=role)
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
