"""Statuses on the real kernel from a real HPACK encoder (the `hpack` library, with its
dynamic table, Huffman coding and table size updates), fuzzed: random responses
(HTTP/2 statuses, gRPC responses with their grpc-status in the trailers or
Trailers-Only), random headers that fill and churn a small dynamic table, and the
server's bytes cut at random places over writes. Every status is read, on both ends."""

from __future__ import annotations

import pytest
from bpf_snapshots import BOTH_ENDS, delta, wait_for
from h2_wire import DATA, END_HEADERS, END_STREAM, HEADERS, Pair, frame, headers, read_exactly
from hpack import Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aviator.agent.bpf import BpfLatencySource, EndpointKey

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(300, func_only=True)]

Header = tuple[str, str]

# (kind, code): ("http", :status) or ("grpc", grpc-status) or ("grpc-only", grpc-status)
Response = tuple[str, int]

_responses = st.lists(
    st.one_of(
        st.tuples(st.just("http"), st.sampled_from([200, 204, 404, 500, 502, 503, 504])),
        st.tuples(st.sampled_from(["grpc", "grpc-only"]), st.sampled_from([0, 2, 13, 14])),
    ),
    min_size=1,
    max_size=24,
)
_extra = st.lists(
    st.tuples(st.sampled_from(["x-a", "x-served-by", "date"]), st.text("abc019", max_size=40)),
    max_size=3,
)


def _wire(responses: list[Response], extras: list[list[Header]], table_size: int) -> bytes:
    """The server's bytes: each response on stream 1, 3, ... in order."""
    enc = Encoder()
    enc.header_table_size = table_size  # announced in the first block
    out = b""
    for i, ((kind, code), extra) in enumerate(zip(responses, extras, strict=True)):
        sid = 1 + 2 * i
        if kind == "http":
            block = enc.encode([(":status", str(code)), ("content-length", "2"), *extra])
            out += frame(HEADERS, END_HEADERS, sid, block) + frame(DATA, END_STREAM, sid, b"ok")
            continue
        first = [(":status", "200"), ("content-type", "application/grpc")]
        status = [("grpc-status", str(code)), ("grpc-message", "m" * code)]
        if kind == "grpc-only":
            block = enc.encode(first + status + extra)
            out += frame(HEADERS, END_HEADERS | END_STREAM, sid, block)
            continue
        out += frame(HEADERS, END_HEADERS, sid, enc.encode(first + extra))
        out += frame(DATA, 0, sid, b"\0\0\0\0\0")
        out += frame(HEADERS, END_HEADERS | END_STREAM, sid, enc.encode(status))
    return out


def _errors(responses: list[Response]) -> int:
    return sum(code >= 500 if kind == "http" else code != 0 for kind, code in responses)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    responses=_responses,
    table_size=st.sampled_from([4096, 256, 100]),
)
def test_every_status_from_a_real_encoder_is_read(
    latency_source: BpfLatencySource,
    data: st.DataObject,
    responses: list[Response],
    table_size: int,
) -> None:
    extras = [data.draw(_extra) for _ in responses]
    wire = _wire(responses, extras, table_size)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=12)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    pair = Pair("127.0.55.9")
    n = len(responses)
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(b"".join(headers(1 + 2 * i) for i in range(n)))
        for piece in pieces:
            pair.server.sendall(piece)
        read_exactly(pair.client, len(wire))
        keys = {r: EndpointKey(pair.host, pair.port, r) for r in BOTH_ENDS}
        snap = wait_for(
            latency_source,
            lambda s: all(delta(before, s, k).statuses >= n for k in keys.values()),
        )
    finally:
        pair.close()
    for role, key in keys.items():
        d = delta(before, snap, key)
        assert (d.count, d.statuses, d.errors) == (n, n, _errors(responses)), (role, responses)
