"""Protocols and response statuses on the real kernel: HTTP/1.1 status lines, HTTP/2
:status in each HPACK encoding the program reads (and one it cannot), gRPC trailers,
and the protocol each endpoint is classified as; then real HTTP/2 and gRPC libraries."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from bpf_snapshots import BOTH_ENDS, EndpointDelta, delta, wait_for
from conftest import TEST_BOUND_S, require_bpf_privileges
from h2_servers import GRPC_METHOD, H2Server, grpc_server
from h2_wire import (
    CONTENT_TYPE_GRPC,
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PADDED,
    STATUS_200,
    STATUS_404_NEVER_INDEXED_HUFFMAN,
    STATUS_500,
    STATUS_502_HUFFMAN_2,
    STATUS_502_NOT_INDEXED,
    STATUS_503_HUFFMAN,
    STATUS_503_PLAIN,
    STATUS_DYNAMIC,
    Pair,
    data,
    frame,
    grpc_trailers,
    headers,
    read_exactly,
)

from aviator.agent.bpf import BpfLatencySource, EndpointCounters, EndpointKey

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

Snap = dict[EndpointKey, EndpointCounters]


def settle(
    source: BpfLatencySource, host: str, port: int, before: Snap, count: int
) -> dict[str, EndpointDelta]:
    def per_role(s: Snap) -> dict[str, EndpointDelta]:
        return {r: delta(before, s, EndpointKey(host, port, r)) for r in BOTH_ENDS}

    snap = wait_for(
        source, lambda s: all(d.count == count and d.rif == 0 for d in per_role(s).values())
    )
    return per_role(snap)


def test_h2_status_encodings(latency_source: BpfLatencySource) -> None:
    blocks = [
        STATUS_200,
        STATUS_500,
        STATUS_503_PLAIN,
        STATUS_503_HUFFMAN,
        STATUS_502_NOT_INDEXED,
        STATUS_502_HUFFMAN_2,
        STATUS_404_NEVER_INDEXED_HUFFMAN,
        STATUS_DYNAMIC,  # index 62: the latest entry the server added, 503 (Huffman)
    ]
    pair = Pair("127.0.55.1")
    try:
        before = latency_source.read()
        pair.open()
        ids = [1 + 2 * i for i in range(len(blocks) + 1)]
        pair.to_server(b"".join(headers(s) for s in ids))
        for s, block in zip(ids, blocks, strict=False):
            pair.to_client(headers(s, block, end_stream=False) + data(s))
        # Padded, and the block opens with a dynamic table size update (to 4096).
        last = ids[-1]
        padded_500 = frame(
            HEADERS, END_HEADERS | PADDED, last, b"\x02\x3f\xe1\x1f" + STATUS_500 + b"\0\0"
        )
        pair.to_client(padded_500 + data(last))
        got = settle(latency_source, pair.host, pair.port, before, len(ids))
    finally:
        pair.close()
    for role, d in got.items():
        # 200 500 503 503 502 502 404 503 500
        assert (d.count, d.statuses, d.errors) == (9, 9, 7), role
        assert d.protocol == "h2", role


def test_grpc_trailers_make_the_endpoint_grpc_and_carry_its_errors(
    latency_source: BpfLatencySource,
) -> None:
    trailers = [
        grpc_trailers(1, 0),
        grpc_trailers(3, 13),
        grpc_trailers(5, 14, huffman=True),
        grpc_trailers(7, 0, huffman=True),
        # grpc-status after another field
        frame(
            HEADERS, END_HEADERS | 1, 9, b"\x40\x0cgrpc-message\x01x" + b"\x40\x0bgrpc-status\x0213"
        ),
    ]
    pair = Pair("127.0.55.2")
    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(b"".join(headers(s) for s in (1, 3, 5, 7, 9)))
        for i, t in enumerate(trailers):
            s = 1 + 2 * i
            pair.to_client(headers(s, STATUS_200 + CONTENT_TYPE_GRPC, end_stream=False))
            pair.to_client(data(s, b"\0\0\0\0\0", end_stream=False) + t)
        # Trailers-Only (an error with no message: one HEADERS ending the stream), as
        # gRPC C-core (content-type from its dynamic table) and Go (content-type a
        # literal) first send them on a connection; then one whose grpc-status is a
        # dynamic table entry (unreadable).
        only = {
            11: STATUS_200 + b"\xc0" + b"\x40\x0bgrpc-status\x0213",
            13: STATUS_200 + CONTENT_TYPE_GRPC + b"\x40\x0bgrpc-status\x012",
            15: STATUS_200 + b"\xc0\xbf",
        }
        pair.to_server(b"".join(headers(s) for s in only))
        for s, block in only.items():
            pair.to_client(headers(s, block))
        got = settle(latency_source, pair.host, pair.port, before, 8)
    finally:
        pair.close()
    for role, d in got.items():
        # A gRPC response's status is its grpc-status (the :status 200 is not counted):
        # 0 13 14 0 13, then 13 2 13.
        assert (d.count, d.statuses, d.errors) == (8, 8, 6), role
        assert d.protocol == "grpc", role


def test_h2_statuses_cut_across_writes_iovecs_and_continuation(
    latency_source: BpfLatencySource,
) -> None:
    """Status fields cut anywhere and taken from the dynamic table: a literal 503 the
    server adds to its table, its bytes in three writes; a reference to it in a
    CONTINUATION; grpc-status 14 written as gathered iovecs, one per part of the field
    (as gRPC C-core's server writes), then as a reference. Each is read on both ends."""
    pair = Pair("127.0.55.5")

    def send(*pieces: bytes) -> None:
        for piece in pieces:
            pair.server.sendall(piece)
        read_exactly(pair.client, sum(map(len, pieces)))

    def sendmsg(*iovecs: bytes) -> None:
        assert pair.server.sendmsg(list(iovecs)) == sum(map(len, iovecs))
        read_exactly(pair.client, sum(map(len, iovecs)))

    try:
        before = latency_source.read()
        pair.open()
        pair.to_server(b"".join(headers(s) for s in (1, 3, 5, 7)))
        # 1: "x-a: b" then :status 503, both added to the table (503 is now index 62).
        one = headers(1, b"\x40\x03x-a\x01b" + STATUS_503_PLAIN, end_stream=False)
        send(one[:11], one[11:18], one[18:], data(1))
        # 3: "x-b: c" added (503 is now 63), then 63 in a CONTINUATION.
        send(
            frame(HEADERS, 0, 3, b"\x40\x03x-b\x01c"),
            frame(CONTINUATION, END_HEADERS, 3, b"\xbf"),
            data(3),
        )
        # 5: gRPC, content-type added; trailers with grpc-status 14 added, in iovecs.
        send(headers(5, STATUS_200 + CONTENT_TYPE_GRPC, end_stream=False), data(5))
        trailers = b"\x40\x0bgrpc-status\x0214"
        head = frame(HEADERS, END_HEADERS | END_STREAM, 5, trailers)[:9]
        sendmsg(head, trailers[:1], trailers[1:13], trailers[13:])
        # 7: content-type is 63 now, grpc-status 14 is 62.
        send(headers(7, STATUS_200 + b"\xbf", end_stream=False), data(7, end_stream=False))
        sendmsg(frame(HEADERS, END_HEADERS | END_STREAM, 7, b"\xbe")[:9], b"\xbe")
        got = settle(latency_source, pair.host, pair.port, before, 4)
    finally:
        pair.close()
    for role, d in got.items():
        assert (d.count, d.statuses, d.errors) == (4, 4, 4), role


def test_http1_status_lines_and_errors(latency_source: BpfLatencySource) -> None:
    statuses = [200, 503, 404, 500, 204]
    pair = Pair("127.0.55.3")
    try:
        before = latency_source.read()
        for status in statuses:
            pair.to_server(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            body = b"" if status == 204 else b"ok"
            head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
            pair.to_client(head + body)
        got = settle(latency_source, pair.host, pair.port, before, len(statuses))
    finally:
        pair.close()
    for role, d in got.items():
        assert (d.count, d.statuses, d.errors, d.protocol) == (5, 5, 2, "http1"), role


def test_unrecognised_bytes_are_opaque(latency_source: BpfLatencySource) -> None:
    pair = Pair("127.0.55.4")
    try:
        before = latency_source.read()
        for _ in range(3):
            pair.to_server(b"\x00\x01\x02hello")
            pair.to_client(b"HTTP/1.1 500 looks like a status but the request was not HTTP")
        got = settle(latency_source, pair.host, pair.port, before, 3)
    finally:
        pair.close()
    for role, d in got.items():
        assert (d.count, d.statuses, d.errors, d.protocol) == (3, 0, 0, "opaque"), role


def h2load_run(
    latency_source: BpfLatencySource, server: H2Server, requests: int
) -> dict[str, EndpointDelta]:
    """h2load (nghttp2) multiplexing 10 streams on one connection to `server`: the
    server's endpoint deltas once `requests` are counted; stops the server."""
    h2load = shutil.which("h2load")
    if h2load is None:
        server.stop()
        pytest.skip("h2load not installed (Debian: nghttp2-client; hack/setup-system.sh)")
    try:
        before = latency_source.read()
        subprocess.run(
            [
                h2load,
                "-n",
                str(requests),
                "-c",
                "1",
                "-m",
                "10",
                f"http://{server.host}:{server.port}/",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return settle(latency_source, server.host, server.port, before, requests)
    finally:
        server.stop()


def test_h2load_against_an_h2_library_server(latency_source: BpfLatencySource) -> None:
    """A load tool nobody here wrote (h2load, nghttp2) multiplexing 10 streams on one
    connection against the `h2` library's server: one request per stream, exactly."""
    got = h2load_run(latency_source, H2Server("127.0.56.1", delay=0.003).start(), 200)
    for role, d in got.items():
        assert (d.count, d.aborted, d.statuses, d.errors, d.protocol) == (200, 0, 200, 0, "h2"), (
            role
        )
        p50 = d.hist.quantile(0.5)
        # Each stream waits the server's 3 ms: a connection-level view would see a
        # fraction of it (the next stream's bytes arrive before the first answer).
        assert p50 is not None and p50 >= 3000 * 0.968, role


def test_grpcio_unary_calls(latency_source: BpfLatencySource) -> None:
    host = "127.0.56.2"
    with grpc_server(host, fail=lambda req: req.startswith(b"fail")) as port:
        before = latency_source.read()
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            call = channel.unary_unary(GRPC_METHOD)
            failed = 0
            for i in range(30):
                try:
                    call(b"fail" if i % 6 == 5 else b"ok", timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.INTERNAL
                    failed += 1
            got = settle(latency_source, host, port, before, 30)
    assert failed == 5
    for role, d in got.items():
        # The client preface starts no connection-level request on either side, and
        # every grpc-status is read, also the repeated ones the server's encoder takes
        # from its dynamic table (C-core writes header fields as iovecs of their own).
        assert (d.count, d.aborted, d.protocol) == (30, 0, "grpc"), (role, d)
        assert (d.statuses, d.errors) == (30, failed), role


def test_h2load_repeated_503_on_one_connection(latency_source: BpfLatencySource) -> None:
    """Half the answers are 503 on one connection: the `h2` library's encoder sends the
    first as a literal it adds to its dynamic table and every later one as a reference
    to that entry, among other entries it adds; each is counted."""
    server = H2Server(
        "127.0.56.3", delay=0.001, status=lambda stream: 503 if stream % 4 == 1 else 200
    ).start()
    got = h2load_run(latency_source, server, 200)
    for role, d in got.items():
        # Streams 1, 3, ..., 399: those of id 1 mod 4 are 100.
        assert (d.count, d.statuses, d.errors, d.protocol) == (200, 200, 100, "h2"), role


def test_grpcio_connection_older_than_the_program() -> None:
    """A grpcio channel in use before the program loaded (an agent that started, or
    restarted, after its clients dialled): its connection is recognised as HTTP/2 from
    its next reads and writes (C-core writes a frame's header and its payload as
    iovecs of their own, and many frames per call under load), not labelled opaque, and
    the RPCs opened from then on are timed on both ends and keep it busy."""
    require_bpf_privileges()
    host = "127.0.56.4"
    with (
        grpc_server(host, fail=lambda req: False) as port,
        grpc.insecure_channel(f"{host}:{port}") as channel,
    ):
        call = channel.unary_unary(GRPC_METHOD)
        assert call(b"before", timeout=10) == b"before"
        with BpfLatencySource.load() as source:  # the agent's map sizes (see conftest)
            for burst in range(10):
                # Many calls at once: reads and writes of many frames each.
                futures = [call.future(b"x" * 100 * i, timeout=10) for i in range(burst + 1)]
                assert [f.result() for f in futures] == [b"x" * 100 * i for i in range(burst + 1)]
            got = settle(source, host, port, {}, 55)
            socks = [s for s in source.sockets() if s.local == (host, port)]
    for role, d in got.items():
        assert (d.aborted, d.rif, d.protocol) == (0, 0, "grpc"), (role, d)
    assert [(s.role, s.protocol) for s in socks] == [("server", "grpc")]
