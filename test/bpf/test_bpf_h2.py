"""HTTP/2 on the real kernel, bytes crafted by hand: one request per stream, whatever
the splits of the frames over syscalls, the interleaving of streams, resets, GOAWAY
and closes; the connection-level request of the preface never counts."""

from __future__ import annotations

import os
import select
import socket
import time

import pytest
from bpf_loadgen import SO_TIMESTAMPING
from bpf_snapshots import BOTH_ENDS, EndpointDelta, assert_close, delta, exact_quantile, wait_for
from conftest import TEST_BOUND_S, require_bpf_privileges
from h2_wire import (
    CONTENT_TYPE_GRPC,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PREFACE,
    REQUEST_BLOCK,
    RST_STREAM,
    SETTINGS,
    STATUS_200,
    STATUS_500,
    STATUS_503_PLAIN,
    STATUS_DYNAMIC,
    Pair,
    data,
    frame,
    goaway,
    grpc_trailers,
    headers,
    read_exactly,
    rst_stream,
    settings,
)
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from aviator.agent.bpf import BpfLatencySource, EndpointCounters, EndpointKey
from aviator.agent.bpf.loader import kernel_has_may_goto
from aviator.agent.handoff.select import is_idle
from aviator.testing.waiting import BPF_COMPILE_BOUND_S

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

# The skim of a call beyond the full parser's budget, and a sweep of all slots in one
# run, need may_goto (bpf/h2.h): older kernels give such a connection up.
needs_may_goto = pytest.mark.skipif(
    not kernel_has_may_goto(os.uname().release), reason="kernel without may_goto (Linux < 6.9)"
)

# Software send timestamps, reported on the error queue with a copy of the packet sent.
TIMESTAMPING = (1 << 1) | (1 << 4)

Snap = dict[EndpointKey, EndpointCounters]


def deltas(before: Snap, after: Snap, pair: Pair) -> dict[str, EndpointDelta]:
    return {
        role: delta(before, after, EndpointKey(pair.host, pair.port, role)) for role in BOTH_ENDS
    }


def response(stream: int) -> bytes:
    return headers(stream, STATUS_200, end_stream=False) + data(stream)


def settle(source: BpfLatencySource, pair: Pair, before: Snap, count: int) -> Snap:
    """The snapshot once both ends counted `count` samples and nothing is in flight."""

    def done(s: Snap) -> bool:
        d = deltas(before, s, pair)
        return all(x.count == count and x.rif == 0 for x in d.values())

    return wait_for(source, done)


@pytest.mark.parametrize("streams", [1, 10, 100])
def test_concurrent_streams_on_one_connection(
    latency_source: BpfLatencySource, streams: int
) -> None:
    """`streams` requests sent at once, answered one by one 3 ms apart: each stream is
    one sample of its own time (the connection-level view would give one sample)."""
    pair = Pair(f"127.0.51.{streams}")
    try:
        before = latency_source.read()
        pair.open()
        ids = [1 + 2 * i for i in range(streams)]
        opened = pair.to_server(b"".join(headers(s) for s in ids))
        sent = pair.client_sent
        truths: dict[str, list[float]] = {"server": [], "client": []}
        for i, s in enumerate(ids):
            due = opened + 0.005 + 0.003 * i
            time.sleep(max(0.0, due - time.monotonic()))
            truths["server"].append((pair.to_client(response(s)) - opened) * 1e6)
            truths["client"].append((pair.client_received - sent) * 1e6)
        after = settle(latency_source, pair, before, streams)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        truth = truths[role]
        assert (d.count, d.aborted, d.rif) == (streams, 0, 0), role
        assert d.statuses == streams and d.errors == 0, role
        assert d.protocol == "h2", role
        for q in (0.5, 0.99):
            assert_close(d.hist.quantile(q), exact_quantile(truth, q), rel=0.032, abs_us=400)


def test_frames_split_across_syscalls(latency_source: BpfLatencySource) -> None:
    """Every byte boundary a reader may see: frame headers split mid-way (the server
    reads 5 bytes at a time; the client writes 4), the preface split, frames merged."""
    pair = Pair("127.0.52.1")
    try:
        before = latency_source.read()
        wire = PREFACE + settings() + headers(1) + data(1, b"x" * 30, end_stream=False)
        wire += headers(3) + data(1, b"")
        for i in range(0, len(wire), 4):
            pair.client.sendall(wire[i : i + 4])
            time.sleep(0.0005)
        read_exactly(pair.server, len(wire), chunk=5)
        pair.to_client(settings())
        reply = response(3) + response(1)
        for i in range(0, len(reply), 7):  # the server's frame headers split too
            pair.server.sendall(reply[i : i + 7])
        read_exactly(pair.client, len(reply), chunk=3)
        after = settle(latency_source, pair, before, 2)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.rif, d.statuses) == (2, 0, 0, 2), role


def test_interleaved_streams(latency_source: BpfLatencySource) -> None:
    """Streams answered out of order, DATA of one between the frames of others."""
    pair = Pair("127.0.52.2")
    delays = {1: 0.030, 3: 0.010, 5: 0.050}
    try:
        before = latency_source.read()
        pair.open()
        opened = pair.to_server(headers(1) + data(1, end_stream=False) + headers(3))
        opened5 = pair.to_server(data(1) + headers(5))
        starts = {1: opened, 3: opened, 5: opened5}
        truth = []
        for s in sorted(delays, key=lambda s: starts[s] + delays[s]):
            time.sleep(max(0.0, starts[s] + delays[s] - time.monotonic()))
            sent = pair.to_client(headers(s, STATUS_200, end_stream=False) + data(s))
            truth.append((sent - starts[s]) * 1e6)
        after = settle(latency_source, pair, before, 3)
    finally:
        pair.close()
    d = deltas(before, after, pair)["server"]
    assert (d.count, d.aborted) == (3, 0)
    for q, rank in ((0.01, 0), (0.5, 1), (1.0, 2)):
        assert_close(d.hist.quantile(q), sorted(truth)[rank], rel=0.032, abs_us=400)


def test_rst_stream_aborts_one_stream(latency_source: BpfLatencySource) -> None:
    pair = Pair("127.0.52.3")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(headers(1) + headers(3) + headers(5))
        time.sleep(0.02)
        pair.to_server(rst_stream(3))  # the client gives up on 3
        pair.to_client(rst_stream(5))  # the server refuses 5
        pair.to_client(response(1))
        pair.to_client(response(3))  # late answer to a reset stream: not a sample
        after = settle(latency_source, pair, before, 3)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.rif, d.statuses) == (3, 2, 0, 1), role
        fastest = d.hist.quantile(0.01)
        assert fastest is not None and fastest >= 20_000 * 0.968, role


def test_goaway_aborts_streams_above_its_last_stream_id(latency_source: BpfLatencySource) -> None:
    pair = Pair("127.0.52.4")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(b"".join(headers(s) for s in (1, 3, 5, 7)))
        pair.to_client(goaway(3))
        mid = wait_for(
            latency_source,
            lambda s: all(x.aborted == 2 for x in deltas(before, s, pair).values()),
        )
        for role, d in deltas(before, mid, pair).items():
            assert (d.count, d.aborted, d.rif) == (2, 2, 2), role
        pair.to_client(response(1) + response(3))
        after = settle(latency_source, pair, before, 4)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.rif) == (4, 2, 0), role


def test_connection_closed_mid_stream_aborts_its_open_streams(
    latency_source: BpfLatencySource,
) -> None:
    pair = Pair("127.0.52.5")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(b"".join(headers(s) for s in (1, 3, 5)))
        pair.to_client(response(3))
        opened = wait_for(
            latency_source,
            lambda s: all(x.rif == 2 for x in deltas(before, s, pair).values()),
        )
        for role, d in deltas(before, opened, pair).items():
            assert (d.count, d.rif) == (1, 2), role
            assert opened[EndpointKey(pair.host, pair.port, role)].oldest_open_us > 0, role
        socks = [s for s in latency_source.sockets() if s.local == (pair.host, pair.port)]
        assert [(s.streams, is_idle(s), s.protocol) for s in socks] == [(2, False, "h2")]
    finally:
        pair.close()
    after = settle(latency_source, pair, before, 3)
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.rif) == (3, 2, 0), role
        assert after[EndpointKey(pair.host, pair.port, role)].oldest_open_us == 0, role


def test_answers_read_after_the_servers_close_are_answers(
    latency_source: BpfLatencySource,
) -> None:
    """A server answers stream 1, leaves 3 unanswered and closes; its FIN arrives before
    the client read the answer. The client's stream 1 is answered when it reads it (not
    aborted by the FIN that came first), 3 is aborted then; on the server's side 3 is
    aborted at its close."""
    pair = Pair("127.0.52.15")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(headers(1) + headers(3))
        pair.server.sendall(response(1))
        pair.server.close()
        fin = select.poll()  # until the server's FIN is in, before the client reads
        fin.register(pair.client, select.POLLRDHUP)
        assert fin.poll(10_000), "the server's FIN did not arrive"
        read_exactly(pair.client, len(response(1)))
        assert pair.client.recv(1) == b""
        after = settle(latency_source, pair, before, 2)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.rif, d.statuses) == (2, 1, 0, 1), role


def test_a_client_that_gives_up_aborts_its_streams_at_its_fin(
    latency_source: BpfLatencySource,
) -> None:
    """The client closes with stream 1 unanswered, after a last frame the server, stuck,
    never reads, while it holds its end open: the server's stream is aborted at the
    client's FIN, not at a close that may never come (a hung pod must look slow, not
    unknown)."""
    pair = Pair("127.0.52.16")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(headers(1))
        pair.client.sendall(rst_stream(1))  # never read: it answers nothing
        pair.client.close()
        after = wait_for(
            latency_source,
            lambda s: delta(before, s, EndpointKey(pair.host, pair.port, "server")).count == 1,
        )
        d = delta(before, after, EndpointKey(pair.host, pair.port, "server"))
        assert (d.count, d.aborted, d.rif, d.statuses) == (1, 1, 0, 0)
    finally:
        pair.close()


def test_preface_without_any_request_is_no_request(latency_source: BpfLatencySource) -> None:
    pair = Pair("127.0.52.6")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_client(settings())
        snap = latency_source.read()
        for role, d in deltas(before, snap, pair).items():
            assert (d.count, d.rif) == (0, 0), role
        socks = [s for s in latency_source.sockets() if s.local == (pair.host, pair.port)]
        assert [(s.streams, s.start_ns, is_idle(s)) for s in socks] == [(0, 0, True)]
    finally:
        pair.close()
    time.sleep(0.05)  # nothing to wait for: the close must add nothing
    for role, d in deltas(before, latency_source.read(), pair).items():
        assert (d.count, d.rif, d.aborted) == (0, 0, 0), role


def test_hand_off_sees_a_connection_with_an_open_stream_as_busy(
    latency_source: BpfLatencySource,
) -> None:
    pair = Pair("127.0.52.7")
    try:
        pair.open()
        pair.to_server(headers(1))
        # Server bytes that answer no stream: a connection-level view would call the
        # connection idle now.
        pair.to_client(settings())

        def ours() -> list[tuple[int, bool]]:
            return [
                (s.streams, is_idle(s))
                for s in latency_source.sockets()
                if s.local == (pair.host, pair.port)
            ]

        assert ours() == [(1, False)]
        pair.to_client(response(1))
        assert ours() == [(0, True)]
    finally:
        pair.close()


def test_an_answered_stream_stays_open_until_both_ends_closed_it(
    latency_source: BpfLatencySource,
) -> None:
    """The request ends at the response's HEADERS (the sample); the stream, and with it
    the connection's busy state for hand-off, only when END_STREAM went both ways, or
    at a RST_STREAM. Server DATA without END_STREAM (a response still streaming) and
    one end's END_STREAM leave it open."""
    pair = Pair("127.0.52.12")

    def ours() -> list[tuple[int, bool]]:
        return [
            (s.streams, is_idle(s))
            for s in latency_source.sockets()
            if s.local == (pair.host, pair.port)
        ]

    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(headers(1, end_stream=False) + headers(3))
        pair.to_client(headers(1, STATUS_200, end_stream=False))  # stream 1 answered
        after = wait_for(
            latency_source, lambda s: all(x.count == 1 for x in deltas(before, s, pair).values())
        )
        for role, d in deltas(before, after, pair).items():
            assert (d.count, d.rif) == (1, 1), role
        assert ours() == [(2, False)]
        pair.to_client(data(1, end_stream=False) + response(3))  # 3 ends both ways
        assert ours() == [(1, False)]
        pair.to_client(data(1, end_stream=False))
        assert ours() == [(1, False)]
        pair.to_server(data(1))  # the client is done sending; the server is not
        assert ours() == [(1, False)]
        pair.to_client(data(1))  # ... and now it is
        assert ours() == [(0, True)]
        # Reset after the answer: closed at once, no second sample.
        pair.to_server(headers(5))
        pair.to_client(headers(5, STATUS_200, end_stream=False) + data(5, end_stream=False))
        assert ours() == [(1, False)]
        pair.to_server(rst_stream(5))
        assert ours() == [(0, True)]
        # A GOAWAY closes the streams it refuses, answered ones too.
        pair.to_server(headers(7, end_stream=False) + headers(9, end_stream=False))
        pair.to_client(headers(9, STATUS_200, end_stream=False))
        assert ours() == [(2, False)]
        pair.to_client(goaway(7))
        assert ours() == [(1, False)]
        pair.to_client(response(7))
        pair.to_server(data(7))
        assert ours() == [(0, True)]
        done = settle(latency_source, pair, before, 5)
    finally:
        pair.close()
    for role, d in deltas(before, done, pair).items():
        assert (d.count, d.aborted, d.rif) == (5, 0, 0), role


def test_a_streaming_grpc_response_status_comes_from_its_trailers_while_its_stream_is_open(
    latency_source: BpfLatencySource,
) -> None:
    """A server-streaming gRPC response: its request ends (a sample) at its HEADERS,
    its stream stays open through its messages, and its one status, grpc-status, is
    read from the trailers that close it. Later responses' :status are read, also one
    the server's encoder takes from its dynamic table (the walk counted the insertions
    of every server header block, those of streams still open too)."""
    pair = Pair("127.0.52.14")

    def streams() -> list[int]:
        return [s.streams for s in latency_source.sockets() if s.local == (pair.host, pair.port)]

    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(headers(1, end_stream=False) + data(1))  # the request, all sent
        pair.to_client(headers(1, STATUS_200 + CONTENT_TYPE_GRPC, end_stream=False))
        answered = wait_for(
            latency_source, lambda s: all(x.count == 1 for x in deltas(before, s, pair).values())
        )
        pair.to_client(data(1, end_stream=False) + data(1, end_stream=False))
        assert streams() == [1]
        for role, d in deltas(before, answered, pair).items():
            assert (d.count, d.statuses) == (1, 0), role  # gRPC: the status is to come
        pair.to_client(grpc_trailers(1, 14))  # UNAVAILABLE, added to the dynamic table
        assert streams() == [0]
        pair.to_server(headers(3))
        pair.to_client(headers(3, STATUS_503_PLAIN, end_stream=False) + data(3))
        pair.to_server(headers(5))
        pair.to_client(headers(5, STATUS_DYNAMIC, end_stream=False) + data(5))  # 503 again
        done = settle(latency_source, pair, before, 3)
    finally:
        pair.close()
    for role, d in deltas(before, done, pair).items():
        assert (d.count, d.aborted, d.statuses, d.errors, d.protocol) == (3, 0, 3, 3, "grpc"), (
            role,
            d,
        )


def test_a_repeated_short_block_reads_as_before_only_while_nothing_was_added(
    latency_source: BpfLatencySource,
) -> None:
    """The same short block again (one byte: dynamic index 62) reads what it read the
    first time only while the encoder added nothing to its table: after an insertion,
    index 62 names the new entry, not :status 503, and the block has no status (unread,
    never an error); index 63 is the 503 then."""
    pair = Pair("127.0.52.24")
    added = STATUS_200 + b"\x40\x03x-a\x01b"  # 200, and x-a: b added (now index 62)
    blocks = [STATUS_503_PLAIN, STATUS_DYNAMIC, STATUS_DYNAMIC, added, STATUS_DYNAMIC, b"\xbf"]
    try:
        before = latency_source.read()
        pair.open()
        for i, block in enumerate(blocks):
            pair.to_server(headers(1 + 2 * i))
            pair.to_client(headers(1 + 2 * i, block, end_stream=False) + data(1 + 2 * i))
        done = settle(latency_source, pair, before, len(blocks))
    finally:
        pair.close()
    for role, d in deltas(before, done, pair).items():
        assert (d.count, d.statuses, d.errors) == (6, 5, 4), (role, d)


_frame_kinds = st.sampled_from([DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, 8, 0xA])


@st.composite
def _traffic(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
    """A conversation of well-framed frames of any type, flags and stream, either way."""
    out: list[tuple[bool, bytes]] = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(_frame_kinds)
        stream = 0 if kind in (SETTINGS, GOAWAY) else draw(st.integers(1, 40))
        size = {RST_STREAM: 4, GOAWAY: 8, 8: 4, SETTINGS: 6}.get(kind, draw(st.integers(0, 40)))
        payload = draw(st.binary(min_size=size, max_size=size))
        flags = draw(st.integers(0, 255))
        out.append((draw(st.booleans()), frame(kind, flags, stream, payload)))
    return out


@settings_(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(traffic=_traffic(), chunk=st.integers(1, 64))
def test_any_frames_leave_nothing_in_flight_after_close(
    latency_source: BpfLatencySource, traffic: list[tuple[bool, bytes]], chunk: int
) -> None:
    """Fuzzed frames, split anywhere: samples are completed or aborted, never lost or
    doubled, and the connection's end leaves no request in flight."""
    pair = Pair("127.0.52.8")
    try:
        before = latency_source.read()
        pair.open()
        for to_server, wire in traffic:
            sender, receiver = (
                (pair.client, pair.server) if to_server else (pair.server, pair.client)
            )
            for i in range(0, len(wire), chunk):
                sender.sendall(wire[i : i + chunk])
            read_exactly(receiver, len(wire), chunk=chunk)
    finally:
        pair.close()
    snap = wait_for(
        latency_source, lambda s: all(d.rif == 0 for d in deltas(before, s, pair).values())
    )
    for role, d in deltas(before, snap, pair).items():
        assert d.rif == 0 and 0 <= d.aborted <= d.count == d.hist.count, role
        # (errors are not bounded here: fuzzed trailers may repeat on a stream)
        assert d.statuses <= d.count, role


def test_error_queue_reads_are_not_stream_bytes(latency_source: BpfLatencySource) -> None:
    """A client reading its send timestamps (MSG_ERRQUEUE) between frames: those reads
    go through the same receive path and must not feed the frame parser."""
    pair = Pair("127.0.52.9")
    pair.client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TIMESTAMPING)
    try:
        before = latency_source.read()
        pair.open()
        for s in (1, 3, 5):
            pair.to_server(headers(s))
            stamps = pair.client.recvmsg(64, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            assert stamps[1], "no timestamp on the error queue"
            pair.to_client(response(s))
        after = settle(latency_source, pair, before, 3)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.statuses) == (3, 0, 3), role


@pytest.mark.timeout(BPF_COMPILE_BOUND_S)  # loads a program of its own
def test_connection_older_than_the_program_is_recognised_mid_stream() -> None:
    """An h2 connection in use before the program loaded: its next whole frames make
    it HTTP/2 (streams opened from then on are timed), not opaque. Another, whose
    server sends nothing after the load and never answers the stream it reads then:
    the client's close aborts it at the FIN (what the server sent before the load
    answers nothing the parser times)."""
    require_bpf_privileges()
    pair = Pair("127.0.52.10", keep_listening=True)
    stuck = Pair("127.0.52.18", keep_listening=True)
    try:
        for p in (pair, stuck):
            p.open()
            p.to_server(headers(1))
            p.to_client(response(1))
        with BpfLatencySource.load() as source:  # the agent's map sizes (see conftest)
            pair.to_server(headers(3) + headers(5))
            time.sleep(0.005)
            pair.to_client(response(5) + response(3))
            after = settle(source, pair, {}, 2)
            stuck.to_server(headers(3))
            stuck.client.close()
            server = EndpointKey(stuck.host, stuck.port, "server")
            gave_up = wait_for(source, lambda s: server in s and s[server].count == 1)
    finally:
        pair.close()
        stuck.close()
    for role, d in deltas({}, after, pair).items():
        assert (d.count, d.aborted, d.rif, d.statuses, d.protocol) == (2, 0, 0, 2, "h2"), role
    d = delta({}, gave_up, EndpointKey(stuck.host, stuck.port, "server"))
    assert (d.count, d.aborted, d.rif, d.statuses) == (1, 1, 0, 0)


def test_connection_older_than_the_program_with_iovec_frames_and_a_read_mid_frame() -> None:
    """An h2 connection in use before the program loaded whose first read after it
    starts inside a frame (not decided yet: undecided for a few calls), whose server
    then writes frame headers and payloads as iovecs of their own (gRPC C-core does),
    and whose client sends more frames in one write than a short chain would look at:
    HTTP/2, every stream opened after timed."""
    require_bpf_privileges()
    pair = Pair("127.0.52.13", keep_listening=True)
    try:
        pair.open()
        body = data(1, b"x" * 100)
        pair.to_server(headers(1, end_stream=False) + body[:20])
        with BpfLatencySource.load() as source:  # the agent's map sizes (see conftest)
            pair.to_server(body[20:])  # the rest of a frame: no frame header at its start
            socks = [s for s in source.sockets() if s.local == (pair.host, pair.port)]
            assert [s.protocol for s in socks] == [None]  # undecided, not opaque
            answer = headers(1, STATUS_200, end_stream=False) + data(1)
            parts = [answer[:9], answer[9:10], answer[10:19], answer[19:]]  # header, payload, ...
            pair.server.sendmsg(parts)
            read_exactly(pair.client, len(answer))
            socks = [s for s in source.sockets() if s.local == (pair.host, pair.port)]
            assert [s.protocol for s in socks] == ["h2"]
            ids = list(range(3, 3 + 2 * 12, 2))
            pair.to_server(b"".join(headers(s) for s in ids))
            pair.to_client(b"".join(response(s) for s in ids))
            # 12 streams, and the connection-level request of the undecided calls (the
            # read of the frame's rest to the answer), timed as an opaque one would be.
            after = settle(source, pair, {}, 13)
    finally:
        pair.close()
    for role, d in deltas({}, after, pair).items():
        assert (d.count, d.aborted, d.rif, d.protocol) == (13, 0, 0, "h2"), role


def test_a_long_stream_among_hundreds_of_short_ones(latency_source: BpfLatencySource) -> None:
    """Stream 1 stays open while 3 x 100 later streams come and go (ids wrap the stream
    table: some share stream 1's slot and take the next free one): every one counts."""
    pair = Pair("127.0.52.11")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(headers(1))
        sid = 3
        for _ in range(3):
            ids = list(range(sid, sid + 200, 2))
            sid += 200
            pair.to_server(b"".join(headers(s) for s in ids))
            pair.to_client(b"".join(response(s) for s in reversed(ids)))
        pair.to_client(response(1))
        after = settle(latency_source, pair, before, 301)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.rif, d.statuses) == (301, 0, 0, 301), role


# A steady-state gRPC encoder's blocks once its dynamic table holds what it repeats
# (entries added by the first call, below): :status 200 (static) + content-type
# (dynamic 63); trailers grpc-status 0 (dynamic 62).
GRPC_HEADERS_INDEXED = STATUS_200 + b"\xbf"
GRPC_OK_INDEXED = b"\xbe"


def grpc_call(stream: int) -> bytes:
    return headers(stream, REQUEST_BLOCK + CONTENT_TYPE_GRPC, end_stream=False) + data(stream)


def grpc_answer(stream: int, block: bytes, trailers: bytes) -> bytes:
    return (
        headers(stream, block, end_stream=False)
        + data(stream, end_stream=False)
        + frame(HEADERS, END_HEADERS | END_STREAM, stream, trailers)
    )


@needs_may_goto
def test_a_burst_of_grpc_calls_in_one_write_each_way_is_counted_exactly(
    latency_source: BpfLatencySource,
) -> None:
    """200 unary calls written at once (400 request frames) and answered in one server
    write (600 frames, 400 header blocks): more frames than the full parser's budget
    per call, so the rest of the call is skimmed (frames and streams exact, header
    blocks not walked): every call counts at both ends, none in flight, and the
    connection is still measured after (a later call counts). The skimmed blocks are
    the ones the parser walked before (same bytes, no insertion since): their statuses
    are read; a later walked block still resolves the dynamic table."""
    pair = Pair("127.0.52.20")
    calls = 200
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(grpc_call(1))  # the encoder adds content-type and grpc-status 0
        pair.to_client(grpc_answer(1, STATUS_200 + CONTENT_TYPE_GRPC, grpc_trailers(1, 0)[9:]))
        ids = [3 + 2 * i for i in range(calls)]
        pair.to_server(b"".join(grpc_call(s) for s in ids))
        pair.to_client(b"".join(grpc_answer(s, GRPC_HEADERS_INDEXED, GRPC_OK_INDEXED) for s in ids))
        last = ids[-1] + 2
        pair.to_server(grpc_call(last))  # UNAVAILABLE, added: 62 it, 63 OK, 64 content-type
        pair.to_client(grpc_answer(last, GRPC_HEADERS_INDEXED, grpc_trailers(last, 14)[9:]))
        pair.to_server(grpc_call(last + 2))
        pair.to_client(grpc_answer(last + 2, STATUS_200 + b"\xc0", b"\xbf"))  # OK
        total = calls + 3
        after = settle(latency_source, pair, before, total)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.rif, d.protocol) == (total, 0, 0, "grpc"), (role, d)
        assert (d.statuses, d.errors) == (total, 1), (role, d)


@needs_may_goto
def test_a_burst_of_h2_requests_beyond_any_one_run_is_counted_exactly(
    latency_source: BpfLatencySource,
) -> None:
    """250 requests with bodies in one write (500 frames) and their 250 responses in
    one (HEADERS :status 200 + DATA): every one counts at both ends with its status."""
    pair = Pair("127.0.52.21")
    calls = 250
    try:
        before = latency_source.read()
        pair.open()
        ids = [1 + 2 * i for i in range(calls)]
        pair.to_server(b"".join(headers(s, end_stream=False) + data(s, b"body") for s in ids))
        pair.to_client(b"".join(response(s) for s in ids))
        pair.to_server(headers(ids[-1] + 2))
        pair.to_client(response(ids[-1] + 2))
        after = settle(latency_source, pair, before, calls + 1)
    finally:
        pair.close()
    d = deltas(before, after, pair)
    for role in d:
        assert (d[role].count, d[role].aborted, d[role].rif, d[role].protocol) == (
            calls + 1,
            0,
            0,
            "h2",
        ), d
        assert (d[role].statuses, d[role].errors) == (calls + 1, 0), d


@needs_may_goto
def test_more_frames_than_any_budget_give_the_connection_up_with_nothing_left_open(
    latency_source: BpfLatencySource,
) -> None:
    """A server write of more frames than a call's whole budget (5000 SETTINGS acks):
    the connection is given up, and the 100 requests open on it are dropped, none left
    in flight (the sweep that drops them still has its tail calls)."""
    pair = Pair("127.0.52.22")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(b"".join(headers(1 + 2 * i) for i in range(100)))
        wait_for(latency_source, lambda s: deltas(before, s, pair)["server"].rif == 100)
        pair.to_client(frame(SETTINGS, 1, 0) * 5000)
        after = wait_for(latency_source, lambda s: deltas(before, s, pair)["server"].rif == 0)
    finally:
        pair.close()
    d = deltas(before, after, pair)["server"]
    assert (d.count, d.rif) == (0, 0), d


@needs_may_goto
def test_statuses_of_a_skimmed_burst_are_unread_never_misread(
    latency_source: BpfLatencySource,
) -> None:
    """A burst whose every block adds to the encoder's table (content-type and
    grpc-status 14 as literals): the blocks walked are read (all errors), the skimmed
    ones are unread, never taken for a success; after it the table is not followed
    any more (a reference to it is unread) but a static :status is still read."""
    pair = Pair("127.0.52.23")
    calls = 200
    try:
        before = latency_source.read()
        pair.open()
        ids = [1 + 2 * i for i in range(calls)]
        pair.to_server(b"".join(grpc_call(s) for s in ids))
        pair.to_client(
            b"".join(
                grpc_answer(s, STATUS_200 + CONTENT_TYPE_GRPC, grpc_trailers(s, 14)[9:])
                for s in ids
            )
        )
        pair.to_server(grpc_call(ids[-1] + 2) + grpc_call(ids[-1] + 4))
        pair.to_client(headers(ids[-1] + 2, STATUS_500))  # read: a static entry
        pair.to_client(grpc_answer(ids[-1] + 4, GRPC_HEADERS_INDEXED, GRPC_OK_INDEXED))
        after = settle(latency_source, pair, before, calls + 2)
    finally:
        pair.close()
    for role, d in deltas(before, after, pair).items():
        assert (d.count, d.aborted, d.rif, d.protocol) == (calls + 2, 0, 0, "grpc"), (role, d)
        assert 2 <= d.statuses < calls and d.errors == d.statuses, (role, d)
