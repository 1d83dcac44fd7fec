"""The agent → controller stream message, version 1: a snapshot of one report window.

Wire form (JSON text frame)::

    {"v": 1, "kind": "snapshot", "node": "node-1", "source": "ebpf" | "probe",
     "time": 1700000000.5, "window_s": 1.0, "maps_full": ["endpoints"],
     "endpoints": [{"ip": "10.0.0.7", "port": 8080, "role": "server" | "client" | "probe",
                    "pod": "ns/name" | null, "hist": {"212": 3, "213": 1},
                    "count": 4, "sum_us": 41000, "max_us": 10800, "rif": 1,
                    "aborted": 0, "protocol": "http1", "statuses": 4, "errors": 1,
                    "oldest_open_us": 0, "keepwarm": 2}],
     "loads": [{"ip": "10.0.0.7", "metric": "vllm:num_requests_waiting", "value": 3.0}]}

`role`: `server` is the pod's own socket (the pod's latency), `client` a caller's view
of that address, `probe` the requests on the pod's own socket that were the kubelet's
probes (from a node address to a probe's port and path: never in the `server` window
of the same endpoint, which holds the pod's traffic and the agent's keep-warm probes).
`keepwarm` (server role, optional, absent: 0) is how many of `count` were the agent's
keep-warm probes of the policy's `probePath`: samples of the real path, labelled. A
controller older than the `probe` role refuses a snapshot that has one: upgrade the
controller before the agents.

`hist` (bucket index → count, see histogram.py), `count`, `sum_us` and `aborted` are
what happened during this window only; `max_us` is the largest latency seen since the
source started (the kernel keeps no per-window maximum); `rif` is the requests in
flight when the window closed. `protocol` is what the source recognised on the
endpoint's connections (`http1`, `h2`, `grpc`, or `opaque`: no recognisable framing, so
a request is the time to the first response bytes); `statuses` is how many of `count`
had a response status the source could read and `errors` how many of those were errors
(HTTP 5xx, gRPC status other than OK); `oldest_open_us` is the age of the endpoint's
oldest request still open when the window closed (0: none open). These four are
optional (older agents do not send them): absent, they read `opaque`, 0, 0, 0.
`maps_full` (optional, absent: none) names the agent's BPF maps that were full lately
(`endpoints`, `h2conns`): requests of the node's pods not already in them go unmeasured.
`loads` (optional, absent: none) are the gauges the node's pods reported, as the agent
read them at most one report interval ago for the policies that name one
(`spec.selection.prequal.load`): the pod's IP, the metric's name and its value (the sum
of its series, finite, at least 0); at most `MAX_LOADS`, one per (ip, metric). Every
snapshot carries all of them (the parts of a split one each carry them whole): a pod or
metric absent from the latest snapshot has no reported load. Older controllers ignore
the field; older agents do not send it.
Unknown fields are ignored so that newer agents can
add some; a different `v` is refused. Every field is checked and bounded, since the
controller must not trust a peer to send sane data: errors are `SchemaError` with a
message that names the field.

Size: a message is at most `MAX_MESSAGE_BYTES` (1 MiB; the receiver refuses a larger
frame before reading it whole) and `MAX_ENDPOINTS` endpoints; a node's snapshot is
typically tens of KiB, and an agent splits a larger one (`split_snapshot`). Decoded,
the largest message takes up to about 19 times its size in Python objects while it is
validated. Validating it costs up to a few hundred milliseconds of CPU, so
`parse_snapshot_async` hands the event loop back every `slice_s` of work: one message
never stalls the controller for longer.

`parse_snapshot` is the reference validator. The receiver decodes with
aviator.latency.decoder, which answers exactly as it does, several times faster.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import orjson

from aviator.kube.addresses import normalize_ip
from aviator.latency.histogram import Histogram

VERSION = 1
KIND_SNAPSHOT = "snapshot"
KIND_ERROR = "error"

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_ENDPOINTS = 4096
MAX_LOADS = 1024
MAX_METRIC_LEN = 200
MAX_LOAD = 1e15
MAX_NAME_LEN = 253
MAX_WINDOW_S = 3600.0
# An agent retries a replica it cannot reach (or lost) after at most this long, give or
# take this share (its backoff: aviator.agent.stream); a replica that just started
# hears every agent within it (aviator.latency.reporters `warming`).
RECONNECT_MAX_S = 30.0
RECONNECT_JITTER = 0.2
_MAX_U64 = (1 << 64) - 1

Source = Literal["ebpf", "probe"]
Role = Literal["server", "client", "probe"]
# What a source recognised on an endpoint's connections; `opaque`: no framing it knows.
AppProtocol = Literal["http1", "h2", "grpc", "opaque"]
SOURCES: tuple[Source, ...] = ("ebpf", "probe")
ROLES: tuple[Role, ...] = ("server", "client", "probe")
APP_PROTOCOLS: tuple[AppProtocol, ...] = ("http1", "h2", "grpc", "opaque")


class SchemaError(ValueError):
    """A message that is not a valid v1 snapshot; the text says which field and why."""


# Built for every endpoint of every report (thousands a second), where a frozen
# dataclass's `__init__` costs five times a plain one's: nothing assigns to it after
# construction (`dataclasses.replace` makes another), hashable on its fields.
@dataclass(slots=True, unsafe_hash=True)
class EndpointWindow:
    """One endpoint's traffic in one window."""

    ip: str
    port: int
    role: Role
    pod: str | None
    hist: Histogram
    count: int
    sum_us: int
    max_us: int
    rif: int
    aborted: int
    protocol: AppProtocol = "opaque"
    statuses: int = 0  # of `count`: responses whose status was read
    errors: int = 0  # of `statuses`: HTTP 5xx, gRPC status other than OK
    oldest_open_us: int = 0  # age of the oldest request still open (0: none)
    keepwarm: int = 0  # of `count`: the agent's keep-warm probes


@dataclass(frozen=True, slots=True)
class PodLoad:
    """A gauge one pod reported (see the module docstring, `loads`)."""

    ip: str
    metric: str
    value: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One report window of one node."""

    node: str
    source: Source
    time: float
    window_s: float
    endpoints: tuple[EndpointWindow, ...]
    maps_full: tuple[str, ...] = ()  # MAPS: the agent's maps that dropped data lately
    loads: tuple[PodLoad, ...] = ()  # the gauges the node's pods reported


# The agent's maps whose being full leaves pods unmeasured.
MAPS: tuple[str, ...] = ("endpoints", "h2conns")


# --- encoding -------------------------------------------------------------------------


def snapshot_to_dict(snap: Snapshot) -> dict[str, Any]:
    out = {
        "v": VERSION,
        "kind": KIND_SNAPSHOT,
        "node": snap.node,
        "source": snap.source,
        "time": snap.time,
        "window_s": snap.window_s,
        "endpoints": [
            {
                "ip": e.ip,
                "port": e.port,
                "role": e.role,
                "pod": e.pod,
                "hist": e.hist.to_sparse(),
                "count": e.count,
                "sum_us": e.sum_us,
                "max_us": e.max_us,
                "rif": e.rif,
                "aborted": e.aborted,
                "protocol": e.protocol,
                "statuses": e.statuses,
                "errors": e.errors,
                "oldest_open_us": e.oldest_open_us,
                **({"keepwarm": e.keepwarm} if e.keepwarm else {}),
            }
            for e in snap.endpoints
        ],
    }
    if snap.maps_full:
        out["maps_full"] = list(snap.maps_full)
    if snap.loads:
        out["loads"] = [{"ip": x.ip, "metric": x.metric, "value": x.value} for x in snap.loads]
    return out


def encode_snapshot(snap: Snapshot) -> str:
    """Compact JSON text of a v1 snapshot."""
    return json.dumps(snapshot_to_dict(snap), separators=(",", ":"))


def encode_error(message: str) -> str:
    """The frame a receiver answers a bad message with."""
    return json.dumps({"v": VERSION, "kind": KIND_ERROR, "error": message})


# --- parsing --------------------------------------------------------------------------


def parse_snapshot(data: str | bytes | Mapping[str, Any]) -> Snapshot:
    """Decode and validate a v1 snapshot (JSON text/bytes or an already decoded dict)."""
    head, raw_eps = _header(data)
    return _replace_endpoints(head, tuple(_endpoint(e, i) for i, e in enumerate(raw_eps)))


async def parse_snapshot_async(
    data: str | bytes | Mapping[str, Any], *, slice_s: float = 0.005
) -> Snapshot:
    """`parse_snapshot`, yielding to the event loop after every `slice_s` of work."""
    head, raw_eps = _header(data)
    eps: list[EndpointWindow] = []
    clock = time.perf_counter
    deadline = clock() + slice_s
    for i, e in enumerate(raw_eps):
        eps.append(_endpoint(e, i))
        if clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + slice_s
    return _replace_endpoints(head, tuple(eps))


def split_snapshot(snap: Snapshot, max_bytes: int = MAX_MESSAGE_BYTES) -> list[str]:
    """The encoded snapshot, split into several (same header, endpoints shared out)
    when it would exceed `max_bytes` or MAX_ENDPOINTS; a single endpoint too large
    for a message is left out."""
    if len(snap.endpoints) <= MAX_ENDPOINTS:
        text = encode_snapshot(snap)
        if len(text) <= max_bytes:
            return [text]
    if len(snap.endpoints) <= 1:
        return []
    half = len(snap.endpoints) // 2
    first = replace(snap, endpoints=snap.endpoints[:half])
    rest = replace(snap, endpoints=snap.endpoints[half:])
    return split_snapshot(first, max_bytes) + split_snapshot(rest, max_bytes)


def _header(data: str | bytes | Mapping[str, Any]) -> tuple[Snapshot, list[Any]]:
    """The message's header (as a Snapshot without endpoints) and its raw endpoint
    list: everything but the endpoints checked."""
    if isinstance(data, str | bytes):
        if len(data) > MAX_MESSAGE_BYTES:
            raise SchemaError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            # orjson: several times faster than json on the controller's hottest input;
            # stricter too (no NaN, integers within 64 bits), which validation wants.
            obj: Any = orjson.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SchemaError(f"not JSON: {exc}") from None
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise SchemaError("message is not a JSON object")
    version = obj.get("v")
    if version != VERSION or isinstance(version, bool):
        raise SchemaError(f"unsupported version {version!r} (this side speaks v{VERSION})")
    if obj.get("kind") != KIND_SNAPSHOT:
        raise SchemaError(f"unsupported kind {obj.get('kind')!r}")
    raw_eps = obj.get("endpoints")
    if not isinstance(raw_eps, list):
        raise SchemaError("endpoints: not a list")
    if len(raw_eps) > MAX_ENDPOINTS:
        raise SchemaError(f"endpoints: {len(raw_eps)} entries exceed {MAX_ENDPOINTS}")
    window_s = _number(obj, "window_s")
    if not 0 < window_s <= MAX_WINDOW_S:
        raise SchemaError(f"window_s: {window_s} outside (0, {MAX_WINDOW_S}]")
    head = Snapshot(
        node=_name(obj, "node"),
        source=cast(Source, _choice(obj, "source", SOURCES)),
        time=_number(obj, "time"),
        window_s=window_s,
        endpoints=(),
        maps_full=maps_full_of(obj),
        loads=loads_of(obj),
    )
    return head, raw_eps


def loads_of(obj: Mapping[str, Any]) -> tuple[PodLoad, ...]:
    """The message's `loads`, checked."""
    raw = obj.get("loads", [])
    if not isinstance(raw, list) or len(raw) > MAX_LOADS:
        raise SchemaError(f"loads: not a list of at most {MAX_LOADS} entries")
    out: dict[tuple[str, str], PodLoad] = {}
    for i, entry in enumerate(raw):
        where = f"loads[{i}]"
        if not isinstance(entry, Mapping):
            raise SchemaError(f"{where}: not an object")
        ip_text = entry.get("ip")
        ip = normalize_ip(ip_text) if isinstance(ip_text, str) and len(ip_text) <= 64 else None
        if ip is None:
            raise SchemaError(f"{where}.ip: not an IP address")
        metric = entry.get("metric")
        if not isinstance(metric, str) or not 0 < len(metric) <= MAX_METRIC_LEN:
            raise SchemaError(f"{where}.metric: not a name of 1..{MAX_METRIC_LEN} characters")
        value = entry.get("value")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_LOAD
        ):
            raise SchemaError(f"{where}.value: {value!r} is not a number in [0, {MAX_LOAD:g}]")
        if (ip, metric) in out:
            raise SchemaError(f"{where}: a second value for {ip} {metric}")
        out[(ip, metric)] = PodLoad(ip, metric, float(value))
    return tuple(out.values())


def maps_full_of(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """The message's `maps_full`, checked."""
    raw = obj.get("maps_full", [])
    if not isinstance(raw, list) or len(raw) > len(MAPS):
        raise SchemaError(f"maps_full: not a list of at most {len(MAPS)} map names")
    for name in raw:
        if name not in MAPS:
            raise SchemaError(f"maps_full: {name!r} is not one of {', '.join(MAPS)}")
    return tuple(dict.fromkeys(raw))


def _replace_endpoints(head: Snapshot, endpoints: tuple[EndpointWindow, ...]) -> Snapshot:
    return replace(head, endpoints=endpoints)


def _endpoint(raw: Any, i: int) -> EndpointWindow:
    where = f"endpoints[{i}]"
    if type(raw) is not dict and not isinstance(raw, Mapping):  # fast path: decoded JSON
        raise SchemaError(f"{where}: not an object")
    ip_text = raw.get("ip")
    if not isinstance(ip_text, str) or len(ip_text) > 64:
        raise SchemaError(f"{where}.ip: not an IP address")
    ip = normalize_ip(ip_text)
    if ip is None:
        raise SchemaError(f"{where}.ip: {ip_text!r} is not an IP address")
    port = _uint(raw, "port", where)
    if port > 65535:
        raise SchemaError(f"{where}.port: {port} is not a port")
    pod = raw.get("pod")
    if pod is not None and (not isinstance(pod, str) or not 0 < len(pod) <= 2 * MAX_NAME_LEN + 1):
        raise SchemaError(f"{where}.pod: not null or a 'namespace/name' string")
    hist_raw = raw.get("hist")
    if type(hist_raw) is not dict and not isinstance(hist_raw, Mapping):
        raise SchemaError(f"{where}.hist: not an object")
    try:
        hist = Histogram.from_sparse(hist_raw)
    except ValueError as exc:
        raise SchemaError(f"{where}.hist: {exc}") from None
    count = _uint(raw, "count", where)
    statuses = _optional_uint(raw, "statuses", where)
    errors = _optional_uint(raw, "errors", where)
    if statuses > count:
        raise SchemaError(f"{where}.statuses: {statuses} exceeds count {count}")
    if errors > statuses:
        raise SchemaError(f"{where}.errors: {errors} exceeds statuses {statuses}")
    keepwarm = _optional_uint(raw, "keepwarm", where)
    if keepwarm > count:
        raise SchemaError(f"{where}.keepwarm: {keepwarm} exceeds count {count}")
    protocol = raw.get("protocol", "opaque")
    if protocol not in APP_PROTOCOLS:
        raise SchemaError(
            f"{where}.protocol: {protocol!r} is not one of {', '.join(APP_PROTOCOLS)}"
        )
    return EndpointWindow(
        ip=ip,
        port=port,
        role=cast(Role, _choice(raw, "role", ROLES, where)),
        pod=pod,
        hist=hist,
        count=count,
        sum_us=_uint(raw, "sum_us", where),
        max_us=_uint(raw, "max_us", where),
        rif=_uint(raw, "rif", where),
        aborted=_uint(raw, "aborted", where),
        protocol=cast(AppProtocol, protocol),
        statuses=statuses,
        errors=errors,
        oldest_open_us=_optional_uint(raw, "oldest_open_us", where),
        keepwarm=keepwarm,
    )


def _field(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _uint(obj: Mapping[str, Any], key: str, where: str = "") -> int:
    value = obj.get(key)
    # `type(...) is int`, not isinstance: bool is an int subclass and no count.
    if type(value) is not int or not 0 <= value <= _MAX_U64:
        raise SchemaError(f"{_field(where, key)}: {value!r} is not an unsigned 64-bit integer")
    return value


def _optional_uint(obj: Mapping[str, Any], key: str, where: str) -> int:
    """An optional unsigned field (absent: 0), checked as `_uint`."""
    return _uint(obj, key, where) if key in obj else 0


def _number(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"{key}: {value!r} is not a finite number")
    return float(value)


def _name(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LEN:
        raise SchemaError(f"{key}: not a name of 1..{MAX_NAME_LEN} characters")
    return value


def _choice(obj: Mapping[str, Any], key: str, allowed: tuple[str, ...], where: str = "") -> str:
    value = obj.get(key)
    if value not in allowed:
        raise SchemaError(f"{_field(where, key)}: {value!r} is not one of {', '.join(allowed)}")
    return cast(str, value)
