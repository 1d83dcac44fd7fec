"""The v1 snapshot message: round trip, and refusal of anything malformed."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.kube.addresses import normalize_ip
from aviator.latency.histogram import Histogram
from aviator.latency.schema import (
    APP_PROTOCOLS,
    MAX_ENDPOINTS,
    EndpointWindow,
    SchemaError,
    Snapshot,
    encode_error,
    encode_snapshot,
    parse_snapshot,
    parse_snapshot_async,
    snapshot_to_dict,
    split_snapshot,
)
from aviator.testing.waiting import with_loop_turns

u32 = st.integers(min_value=0, max_value=2**32)
endpoints = st.builds(
    EndpointWindow,
    ip=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(lambda a: normalize_ip(str(a))),
    port=st.integers(min_value=0, max_value=65535),
    role=st.sampled_from(["server", "client"]),
    pod=st.one_of(st.none(), st.just("default/web-0")),
    hist=st.lists(st.integers(min_value=0, max_value=10**7), max_size=20).map(
        Histogram.from_values
    ),
    count=u32,
    sum_us=u32,
    max_us=u32,
    rif=u32,
    aborted=u32,
)


@st.composite
def _with_outcomes(draw: st.DrawFn, base: EndpointWindow) -> EndpointWindow:
    """`base` with a protocol and consistent outcome counts (errors <= statuses <= count)."""
    statuses = draw(st.integers(min_value=0, max_value=base.count))
    return replace(
        base,
        protocol=draw(st.sampled_from(APP_PROTOCOLS)),
        statuses=statuses,
        errors=draw(st.integers(min_value=0, max_value=statuses)),
        oldest_open_us=draw(u32),
    )


endpoints = endpoints.flatmap(_with_outcomes)
snapshots = st.builds(
    Snapshot,
    node=st.text(min_size=1, max_size=30),
    source=st.sampled_from(["ebpf", "probe"]),
    time=st.floats(min_value=0, max_value=4e9),
    window_s=st.floats(min_value=0.001, max_value=3600),
    endpoints=st.lists(endpoints, max_size=5).map(tuple),
    maps_full=st.lists(st.sampled_from(["endpoints", "h2conns"]), unique=True).map(tuple),
)


@settings(max_examples=200)
@given(snapshots)
def test_round_trip(snap: Snapshot) -> None:
    assert parse_snapshot(encode_snapshot(snap)) == snap
    assert parse_snapshot(snapshot_to_dict(snap)) == snap
    assert parse_snapshot(encode_snapshot(snap).encode()) == snap


def valid() -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "snapshot",
        "node": "node-1",
        "source": "ebpf",
        "time": 1700000000.5,
        "window_s": 1.0,
        "endpoints": [
            {
                "ip": "::ffff:10.0.0.7",
                "port": 8080,
                "role": "server",
                "pod": "default/web-0",
                "hist": {"212": 3, "213": 1},
                "count": 4,
                "sum_us": 41000,
                "max_us": 10800,
                "rif": 1,
                "aborted": 0,
                "future_field": "ignored",
            }
        ],
    }


def test_valid_message_is_normalised() -> None:
    snap = parse_snapshot(json.dumps(valid()))
    (ep,) = snap.endpoints
    assert ep.ip == "10.0.0.7"  # v4-mapped IPv6 → dotted IPv4
    assert ep.hist.count == 4
    assert normalize_ip("2001:db8:0:0:0:0:0:1") == "2001:db8::1"


def test_outcome_fields_are_optional_and_read_when_present() -> None:
    (old,) = parse_snapshot(valid()).endpoints
    assert (old.protocol, old.statuses, old.errors, old.oldest_open_us) == ("opaque", 0, 0, 0)
    msg = valid()
    msg["endpoints"][0].update(protocol="grpc", statuses=3, errors=1, oldest_open_us=2_500_000)
    (new,) = parse_snapshot(msg).endpoints
    assert (new.protocol, new.statuses, new.errors, new.oldest_open_us) == ("grpc", 3, 1, 2_500_000)


def _set(path: str, value: Any) -> dict[str, Any]:
    msg = valid()
    target: Any = msg
    *parents, last = path.split(".")
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    key: Any = int(last) if last.isdigit() else last
    if value is _DELETE:
        del target[key]
    else:
        target[key] = value
    return msg


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("v", 2, "version"),
        ("v", True, "version"),
        ("v", _DELETE, "version"),
        ("kind", "hello", "kind"),
        ("node", "", "node"),
        ("node", 7, "node"),
        ("node", "n" * 254, "node"),
        ("source", "magic", "source"),
        ("time", "now", "time"),
        ("time", float("inf"), "time"),
        ("window_s", 0, "window_s"),
        ("window_s", 1e9, "window_s"),
        ("endpoints", {}, "endpoints"),
        ("endpoints.0", [], "endpoints[0]"),
        ("endpoints.0.ip", "10.0.0.300", "endpoints[0].ip"),
        ("endpoints.0.ip", None, "endpoints[0].ip"),
        ("endpoints.0.port", 70000, "endpoints[0].port"),
        ("endpoints.0.port", -1, "endpoints[0].port"),
        ("endpoints.0.role", "middle", "endpoints[0].role"),
        ("endpoints.0.pod", 5, "endpoints[0].pod"),
        ("endpoints.0.hist", [1, 2], "endpoints[0].hist"),
        ("endpoints.0.hist", {"999": 1}, "endpoints[0].hist"),
        ("endpoints.0.hist", {"3": -2}, "endpoints[0].hist"),
        ("endpoints.0.count", 1.5, "endpoints[0].count"),
        ("endpoints.0.sum_us", 2**64, "endpoints[0].sum_us"),
        ("endpoints.0.rif", False, "endpoints[0].rif"),
        ("endpoints.0.aborted", _DELETE, "endpoints[0].aborted"),
        ("endpoints.0.protocol", "h3", "endpoints[0].protocol"),
        ("endpoints.0.protocol", None, "endpoints[0].protocol"),
        ("endpoints.0.statuses", 5, "endpoints[0].statuses"),
        ("endpoints.0.statuses", -1, "endpoints[0].statuses"),
        ("endpoints.0.errors", 4, "endpoints[0].errors"),
        ("endpoints.0.oldest_open_us", 0.5, "endpoints[0].oldest_open_us"),
        ("maps_full", "endpoints", "maps_full"),
        ("maps_full", ["sockets"], "maps_full"),
        ("maps_full", [{}], "maps_full"),
        ("maps_full", ["endpoints"] * 3, "maps_full"),
    ],
)
def test_garbage_is_refused_naming_the_field(path: str, value: Any, needle: str) -> None:
    msg = _set(path, value)
    with pytest.raises(SchemaError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_snapshot(msg)
    with pytest.raises(SchemaError):
        parse_snapshot(json.dumps(msg, allow_nan=True))


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "null", b"\xff\xfe"])
def test_non_objects_are_refused(text: str | bytes) -> None:
    with pytest.raises(SchemaError):
        parse_snapshot(text)


def test_sizes_are_bounded() -> None:
    msg = valid()
    msg["endpoints"] = [copy.deepcopy(msg["endpoints"][0]) for _ in range(MAX_ENDPOINTS + 1)]
    with pytest.raises(SchemaError, match="exceed"):
        parse_snapshot(msg)
    with pytest.raises(SchemaError, match="bytes"):
        parse_snapshot(" " * (16 * 1024 * 1024 + 1))


def test_error_frame() -> None:
    assert json.loads(encode_error("bad")) == {"v": 1, "kind": "error", "error": "bad"}


def test_a_large_snapshot_is_split_into_messages_the_receiver_takes() -> None:
    h = Histogram.from_values(list(range(1, 200_000, 500)))
    eps = tuple(
        EndpointWindow(f"10.1.{i // 256}.{i % 256}", 8080, "server", None, h, 1, 1, 1, 0, 0)
        for i in range(1000)
    )
    snap = Snapshot("n1", "ebpf", 1.0, 1.0, eps)
    whole = encode_snapshot(snap)
    frames = split_snapshot(snap, max_bytes=len(whole) // 5)
    assert len(frames) > 5 and all(len(f) <= len(whole) // 5 for f in frames)
    parsed = [parse_snapshot(f) for f in frames]
    assert [e for p in parsed for e in p.endpoints] == list(eps)
    assert {(p.node, p.time, p.window_s) for p in parsed} == {("n1", 1.0, 1.0)}
    assert split_snapshot(snap) == [whole]
    small = EndpointWindow(
        "10.1.0.1", 80, "server", None, Histogram.from_values([9]), 1, 9, 9, 0, 0
    )
    many = Snapshot("n1", "ebpf", 1.0, 1.0, (small,) * (MAX_ENDPOINTS + 1))
    assert [len(parse_snapshot(f).endpoints) for f in split_snapshot(many)] == [
        (MAX_ENDPOINTS + 1) // 2,
        (MAX_ENDPOINTS + 2) // 2,
    ]
    # An endpoint too large for any message is left out, not sent forever in vain.
    assert split_snapshot(Snapshot("n1", "ebpf", 1.0, 1.0, eps[:1]), max_bytes=100) == []


async def test_the_async_parse_hands_the_loop_back_and_agrees() -> None:
    h = Histogram.from_values(list(range(1, 50_000, 100)))
    eps = tuple(
        EndpointWindow(f"10.1.{i // 256}.{i % 256}", 80, "server", "ns/p", h, 1, 1, 1, 0, 0)
        for i in range(300)
    )
    text = encode_snapshot(Snapshot("n1", "ebpf", 1.0, 1.0, eps))
    parsed, turns = await with_loop_turns(parse_snapshot_async(text, slice_s=0.001))
    assert parsed == parse_snapshot(text)
    assert turns > 3
