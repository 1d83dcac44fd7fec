"""The snapshot's optional `loads`: the gauges pods report, as network input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.kube.addresses import normalize_ip
from aviator.latency.schema import (
    MAX_LOADS,
    PodLoad,
    SchemaError,
    Snapshot,
    encode_snapshot,
    parse_snapshot,
    split_snapshot,
)

pod_loads = st.builds(
    PodLoad,
    ip=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(lambda a: normalize_ip(str(a))),
    metric=st.from_regex(r"[a-z_:][a-z0-9_:]{0,30}", fullmatch=True),
    value=st.floats(min_value=0, max_value=1e12, allow_nan=False),
)
snapshots = st.builds(
    Snapshot,
    node=st.just("node-1"),
    source=st.just("ebpf"),
    time=st.just(1.0),
    window_s=st.just(1.0),
    endpoints=st.just(()),
    loads=st.lists(pod_loads, max_size=8, unique_by=lambda x: (x.ip, x.metric)).map(tuple),
)


def message(loads: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "snapshot",
        "node": "node-1",
        "source": "ebpf",
        "time": 1.0,
        "window_s": 1.0,
        "endpoints": [],
        "loads": loads,
    }


@settings(max_examples=200)
@given(snapshots)
def test_loads_round_trip(snap: Snapshot) -> None:
    assert parse_snapshot(encode_snapshot(snap)) == snap


def test_absent_loads_are_none_and_none_are_not_sent() -> None:
    msg = message([])
    del msg["loads"]
    assert parse_snapshot(msg).loads == ()  # an older agent
    assert "loads" not in encode_snapshot(parse_snapshot(msg))  # what older controllers see


def test_an_integer_value_and_an_ipv4_mapped_address_are_normalised() -> None:
    snap = parse_snapshot(message([{"ip": "::ffff:10.0.0.7", "metric": "q", "value": 3}]))
    assert snap.loads == (PodLoad("10.0.0.7", "q", 3.0),)


@pytest.mark.parametrize(
    ("loads", "needle"),
    [
        ({}, "loads"),
        ([{}] * (MAX_LOADS + 1), "loads"),
        ([5], r"loads\[0\]"),
        ([{"ip": "10.0.0.300", "metric": "q", "value": 1}], r"loads\[0\].ip"),
        ([{"ip": 7, "metric": "q", "value": 1}], r"loads\[0\].ip"),
        ([{"ip": "10.0.0.1", "metric": "", "value": 1}], r"loads\[0\].metric"),
        ([{"ip": "10.0.0.1", "metric": "q" * 201, "value": 1}], r"loads\[0\].metric"),
        ([{"ip": "10.0.0.1", "metric": "q", "value": -1}], r"loads\[0\].value"),
        ([{"ip": "10.0.0.1", "metric": "q", "value": True}], r"loads\[0\].value"),
        ([{"ip": "10.0.0.1", "metric": "q", "value": "3"}], r"loads\[0\].value"),
        ([{"ip": "10.0.0.1", "metric": "q", "value": 1e300}], r"loads\[0\].value"),
        ([{"ip": "10.0.0.1", "metric": "q", "value": 1}] * 2, r"loads\[1\]"),
    ],
)
def test_bad_loads_are_refused_naming_the_field(loads: Any, needle: str) -> None:
    with pytest.raises(SchemaError, match=needle):
        parse_snapshot(message(loads))


def test_nan_and_infinity_are_refused() -> None:
    for bad in ("NaN", "Infinity"):
        text = json.dumps(message([])).replace(
            '"loads": []', f'"loads": [{{"ip": "10.0.0.1", "metric": "q", "value": {bad}}}]'
        )
        with pytest.raises(SchemaError):
            parse_snapshot(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "ip": st.sampled_from(["10.0.0.1", "::1", "x", ""]) | json_values,
        "metric": st.sampled_from(["q", "a:b"]) | json_values,
        "value": st.floats() | json_values,
    },
)


@settings(max_examples=300)
@given(st.lists(entries | json_values, max_size=6) | json_values)
def test_any_loads_field_parses_or_is_a_schema_error(loads: Any) -> None:
    try:
        text = json.dumps(message(loads), allow_nan=True)
    except (TypeError, ValueError):
        return
    try:
        snap = parse_snapshot(text)
    except SchemaError:
        return
    for load in snap.loads:
        assert 0 <= load.value <= 1e15 and load.metric and normalize_ip(load.ip) == load.ip


def test_every_part_of_a_split_snapshot_carries_the_loads() -> None:
    from aviator.latency.histogram import Histogram
    from aviator.latency.schema import EndpointWindow

    ep = EndpointWindow(
        "10.0.0.1", 80, "server", "ns/a", Histogram.from_values(range(2000)), 1, 1, 1, 0, 0
    )
    loads = (PodLoad("10.0.0.1", "q", 2.0),)
    snap = Snapshot("node-1", "ebpf", 1.0, 1.0, (ep,) * 40, loads=loads)
    parts = split_snapshot(snap, max_bytes=len(encode_snapshot(snap)) // 3)
    assert len(parts) > 1
    assert all(parse_snapshot(p).loads == loads for p in parts)
