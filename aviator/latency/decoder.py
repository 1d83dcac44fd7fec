"""The receiver's decoder of v1 snapshots: a typed decode for what agents send, the
schema's validator for everything else.

`schema.parse_snapshot` is the reference: it decodes JSON into Python objects, then
checks every field in Python, about 10 µs per endpoint window, which made validation
most of the controller's cost of taking in agents' reports. Here msgspec decodes the
message straight into typed structs whose types and bounds are the schema's (`U64`,
ports, roles, protocols, name lengths, bucket indexes), in C; what msgspec cannot say
is checked after, in Python: an IP's canonical form, counts bounded by each other
(`statuses`, `errors`, `keepwarm`), the header's version, kind and window.

Contract: `decode_snapshot(data)` returns what `parse_snapshot(data)` returns and
raises what it raises. Anything the typed decode refuses or doubts (a wrong type, a
bound, a bucket key not written as the agent writes one, a JSON error) is decoded
again by `parse_snapshot`, which accepts it or says which field is wrong and why; so
the fast path only ever takes messages the reference takes, decoded the same, and
every error message is the reference's. A differential test fuzzes both
(test/unit/latency/test_latency_decoder.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec

from aviator.kube.addresses import normalize_ip
from aviator.latency.histogram import NUM_BUCKETS, Histogram
from aviator.latency.schema import (
    KIND_SNAPSHOT,
    MAX_ENDPOINTS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_LEN,
    MAX_WINDOW_S,
    VERSION,
    AppProtocol,
    EndpointWindow,
    Role,
    SchemaError,
    Snapshot,
    Source,
    loads_of,
    maps_full_of,
    parse_snapshot,
    parse_snapshot_async,
)

# The schema's integers are unsigned 64-bit; msgspec bounds only fit int64, so the rare
# value above 2^63 - 1 goes to the reference (which takes it), at the reference's cost.
U64 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
_Bucket = Annotated[int, msgspec.Meta(ge=0, lt=NUM_BUCKETS)]
_Pod = Annotated[str, msgspec.Meta(min_length=1, max_length=2 * MAX_NAME_LEN + 1)]
_Node = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LEN)]
_IpText = Annotated[str, msgspec.Meta(max_length=64)]


class _Endpoint(msgspec.Struct):
    ip: _IpText
    port: _Port
    role: Role
    hist: dict[_Bucket, U64]  # keys written "212": msgspec takes no other spelling
    count: U64
    sum_us: U64
    max_us: U64
    rif: U64
    aborted: U64
    pod: _Pod | None = None
    protocol: AppProtocol = "opaque"
    statuses: U64 = 0
    errors: U64 = 0
    oldest_open_us: U64 = 0
    keepwarm: U64 = 0


class _Message(msgspec.Struct):
    v: int
    kind: str
    node: _Node
    source: Source
    time: float
    window_s: float
    endpoints: list[_Endpoint]
    # Small and bounded: checked by the reference's own functions.
    maps_full: Any = msgspec.UNSET
    loads: Any = msgspec.UNSET


_DECODER = msgspec.json.Decoder(_Message)
_IPS: dict[str, str] = {}  # an agent's IP text → its canonical form
_MAX_IPS = 65536  # bounded: a peer sending ever new addresses only clears it


class _Doubt(Exception):
    """The typed decode cannot vouch for the message: the reference decides."""


def decode_snapshot(data: str | bytes) -> Snapshot:
    """`parse_snapshot(data)` (see the module docstring), several times faster."""
    try:
        head, raw_eps = _head(data)
        return _with(head, tuple([_endpoint(e) for e in raw_eps]))
    except _Doubt:
        return parse_snapshot(data)


async def decode_snapshot_async(data: str | bytes, *, slice_s: float = 0.005) -> Snapshot:
    """`decode_snapshot`, yielding to the event loop after every `slice_s` of work once
    the message is decoded (msgspec's decode itself takes a few milliseconds for the
    largest message, in one piece)."""
    try:
        head, raw_eps = _head(data)
        eps: list[EndpointWindow] = []
        clock = time.perf_counter
        deadline = clock() + slice_s
        for e in raw_eps:
            eps.append(_endpoint(e))
            if clock() >= deadline:
                await asyncio.sleep(0)
                deadline = clock() + slice_s
        return _with(head, tuple(eps))
    except _Doubt:
        return await parse_snapshot_async(data, slice_s=slice_s)


def _head(data: str | bytes) -> tuple[Snapshot, list[_Endpoint]]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise _Doubt
    try:
        msg = _DECODER.decode(data)
    except msgspec.DecodeError:
        raise _Doubt from None
    if (
        msg.v != VERSION
        or msg.kind != KIND_SNAPSHOT
        or len(msg.endpoints) > MAX_ENDPOINTS
        or not 0 < msg.window_s <= MAX_WINDOW_S
    ):
        raise _Doubt
    try:
        maps_full = (
            () if msg.maps_full is msgspec.UNSET else maps_full_of({"maps_full": msg.maps_full})
        )
        loads = () if msg.loads is msgspec.UNSET else loads_of({"loads": msg.loads})
    except SchemaError:
        raise _Doubt from None
    head = Snapshot(msg.node, msg.source, msg.time, msg.window_s, (), maps_full, loads)
    return head, msg.endpoints


def _with(head: Snapshot, endpoints: tuple[EndpointWindow, ...]) -> Snapshot:
    return Snapshot(
        head.node, head.source, head.time, head.window_s, endpoints, head.maps_full, head.loads
    )


def _canonical_ip(text: str) -> str:
    ip = _IPS.get(text)
    if ip is None:
        ip = normalize_ip(text)
        if ip is None:
            raise _Doubt
        if len(_IPS) >= _MAX_IPS:
            _IPS.clear()
        _IPS[text] = ip
    return ip


def _endpoint(e: _Endpoint) -> EndpointWindow:
    count, statuses = e.count, e.statuses
    if statuses > count or e.errors > statuses or e.keepwarm > count:
        raise _Doubt
    return EndpointWindow(
        _canonical_ip(e.ip),
        e.port,
        e.role,
        e.pod,
        Histogram.from_counts(e.hist),
        count,
        e.sum_us,
        e.max_us,
        e.rif,
        e.aborted,
        e.protocol,
        statuses,
        e.errors,
        e.oldest_open_us,
        e.keepwarm,
    )


__all__ = ["SchemaError", "decode_snapshot", "decode_snapshot_async"]
