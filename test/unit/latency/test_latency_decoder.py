"""The typed snapshot decoder answers exactly as the reference validator does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aviator.latency import decoder
from aviator.latency.decoder import decode_snapshot, decode_snapshot_async
from aviator.latency.histogram import Histogram
from aviator.latency.schema import (
    EndpointWindow,
    PodLoad,
    SchemaError,
    Snapshot,
    encode_snapshot,
    parse_snapshot,
)
from aviator.testing.waiting import with_loop_turns

# Values a hostile or broken agent might put anywhere.
oddities = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([0, 1, 2**64 - 1, 2**64, 65535, 65536, 463, 464, -1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, 1.5, 3600.0, 3600.5, 1e300]),
    st.text(max_size=8),
    st.sampled_from(["server", "client", "probe", "h2", "grpc", "opaque", "ebpf", "x"]),
    st.sampled_from(
        ["10.0.0.1", "::ffff:10.0.0.7", "2001:db8::1", "10.0.0.300", "fe80::1%" + "e" * 57]
    ),
    st.sampled_from(["endpoints", "h2conns", "snapshot"]),
    st.lists(st.integers(min_value=-2, max_value=500), max_size=3),
    st.dictionaries(
        st.sampled_from(["0", "1", "12", "012", "-1", "+1", " 1", "463", "464", "1e2", "x"]),
        st.one_of(st.integers(min_value=-2, max_value=2**64), st.just(1.0), st.none()),
        max_size=3,
    ),
)


@st.composite
def endpoint_dicts(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(min_value=0, max_value=50))
    statuses = draw(st.integers(min_value=0, max_value=count + 1))
    ep: dict[str, Any] = {
        "ip": draw(st.sampled_from(["10.0.0.7", "::ffff:10.0.0.8", "fd00::1", "10.1.2.3"])),
        "port": draw(st.integers(min_value=0, max_value=65535)),
        "role": draw(st.sampled_from(["server", "client", "probe"])),
        "pod": draw(st.sampled_from([None, "default/web-0", "ns/p"])),
        "hist": draw(
            st.dictionaries(
                st.integers(min_value=0, max_value=463).map(str),
                st.integers(min_value=0, max_value=2**40),
                max_size=4,
            )
        ),
        "count": count,
        "sum_us": draw(st.integers(min_value=0, max_value=2**64 - 1)),
        "max_us": 1000,
        "rif": draw(st.integers(min_value=0, max_value=3)),
        "aborted": 0,
        "protocol": draw(st.sampled_from(["http1", "h2", "grpc", "opaque"])),
        "statuses": statuses,
        "errors": draw(st.integers(min_value=0, max_value=statuses + 1)),
        "oldest_open_us": draw(st.integers(min_value=0, max_value=10**7)),
        "keepwarm": draw(st.integers(min_value=0, max_value=count + 1)),
    }
    return _with_one_odd_field_or_none(draw, ep)


def _with_one_odd_field_or_none(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with at most one field removed or set to an oddity: a message with one bad
    field or none is where the decoder and the reference could differ."""
    for key in draw(st.lists(st.sampled_from(sorted(obj)), max_size=1)):
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(oddities)
    return obj


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": 1,
        "kind": "snapshot",
        "node": draw(st.sampled_from(["node-1"] * 5 + ["n" * 253, "n" * 254, ""])),
        "source": draw(st.sampled_from(["ebpf", "probe"])),
        "time": draw(st.floats(min_value=0, max_value=4e9)),
        "window_s": draw(st.sampled_from([1.0, 0.25, 5])),
        "endpoints": draw(st.lists(endpoint_dicts(), max_size=3)),
    }
    if draw(st.booleans()):
        msg["maps_full"] = draw(st.lists(st.sampled_from(["endpoints", "h2conns"]), max_size=2))
    if draw(st.booleans()):
        msg["loads"] = [{"ip": "10.0.0.7", "metric": "queue", "value": draw(oddities)}]
    return _with_one_odd_field_or_none(draw, msg)


def _outcome(parse: Any, text: str) -> tuple[str, object]:
    try:
        return "ok", parse(text)
    except SchemaError as exc:
        return "refused", str(exc)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_the_decoder_answers_as_the_reference(msg: dict[str, Any]) -> None:
    text = json.dumps(msg)
    assert _outcome(decode_snapshot, text) == _outcome(parse_snapshot, text)
    assert _outcome(decode_snapshot, text.encode()) == _outcome(parse_snapshot, text)


def _one_endpoint(**fields: Any) -> str:
    ep: dict[str, Any] = {
        "ip": "10.0.0.7",
        "port": 80,
        "role": "server",
        "hist": {"212": 3},
        "count": 3,
        "sum_us": 30,
        "max_us": 10,
        "rif": 0,
        "aborted": 0,
    }
    ep.update(fields)
    msg = {
        "v": 1,
        "kind": "snapshot",
        "node": "n",
        "source": "ebpf",
        "time": 1.0,
        "window_s": 1.0,
        "endpoints": [ep],
    }
    return json.dumps(msg)


@pytest.mark.parametrize(
    "fields",
    [
        {"ip": "fe80::1%" + "e" * 56},  # 64 characters: an address
        {"ip": "fe80::1%" + "e" * 57},  # 65: refused before it is read
        {"ip": "::ffff:10.0.0.7"},
        {"port": 65535},
        {"port": 65536},
        {"pod": "n" * 253 + "/" + "p" * 253},
        {"pod": "n" * 253 + "/" + "p" * 254},
        {"pod": ""},
        {"hist": {"463": 1, "0": 0}},
        {"hist": {"464": 1}},
        {"hist": {"012": 1, "12": 2}},
        {"hist": {"12": 2**63}},
        {"hist": {"12": 2**64}},
        {"sum_us": 2**64 - 1},
        {"sum_us": 2**64},
        {"count": 3, "statuses": 3, "errors": 3, "keepwarm": 3},
        {"count": 3, "statuses": 4},
        {"count": 3, "statuses": 2, "errors": 3},
        {"count": 3, "keepwarm": 4},
        {"protocol": None},
        {"oldest_open_us": True},
    ],
)
def test_the_decoder_answers_as_the_reference_at_every_bound(fields: dict[str, Any]) -> None:
    text = _one_endpoint(**fields)
    assert _outcome(decode_snapshot, text) == _outcome(parse_snapshot, text)


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[1, 2]", "null", '{"v": 1.0}', '{"v": 1, "v": 2}', " " * (2 << 20)],
)
def test_what_is_not_a_snapshot_gets_the_references_words(text: str) -> None:
    assert _outcome(decode_snapshot, text) == _outcome(parse_snapshot, text)


def _agents_message() -> str:
    hist = Histogram.from_values([900, 1000, 1100, 50_000])
    eps = tuple(
        EndpointWindow(
            f"10.1.0.{i}",
            8080,
            "server",
            f"ns/p-{i}",
            hist,
            4,
            53_000,
            50_000,
            1,
            0,
            "grpc",
            4,
            1,
            0,
            1,
        )
        for i in range(1, 200)
    )
    loads = (PodLoad("10.1.0.1", "queue", 3.0),)
    return encode_snapshot(Snapshot("node-1", "ebpf", 5.0, 1.0, eps, ("endpoints",), loads))


def test_what_agents_send_is_decoded_without_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = _agents_message()
    expected = parse_snapshot(text)

    def refuse(_: object, **__: object) -> Snapshot:
        raise AssertionError("the reference was asked")

    monkeypatch.setattr(decoder, "parse_snapshot", refuse)
    monkeypatch.setattr(decoder, "parse_snapshot_async", refuse)
    assert decode_snapshot(text) == expected
    assert asyncio.run(decode_snapshot_async(text, slice_s=0.0)) == expected


async def test_the_async_decode_hands_the_loop_back_and_agrees() -> None:
    text = _agents_message()
    decoded, turns = await with_loop_turns(decode_snapshot_async(text, slice_s=0.0))
    assert decoded == parse_snapshot(text)
    assert turns > 3
    bad = text.replace('"count":4', '"count":-4', 1)
    with pytest.raises(SchemaError, match=r"endpoints\[0\]\.count"):
        await decode_snapshot_async(bad)
