"""The probe's h2c client connection against a real HTTP/2 server state machine (the
`h2` library), and fuzzed with arbitrary frames and splits: it never raises, never
reports a stream twice, and ends every open stream when the connection breaks."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.latency.h2c import (
    DATA,
    GOAWAY,
    MAX_FRAME,
    PING,
    RST_STREAM,
    SETTINGS,
    Ended,
    Event,
    H2cConnection,
    Reset,
    Response,
    frame,
)

h2_config = pytest.importorskip("h2.config")
h2_connection = pytest.importorskip("h2.connection")
h2_events = pytest.importorskip("h2.events")


def server() -> object:
    conn = h2_connection.H2Connection(
        h2_config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def requests_seen(srv: object, data: bytes) -> list[object]:
    return srv.receive_data(data)  # type: ignore[attr-defined,no-any-return]


def test_the_server_reads_our_requests() -> None:
    client = H2cConnection("10.0.0.7:50051")
    srv = server()
    get_id, get = client.request("/ready")
    grpc_id, call = client.request("/grpc.health.v1.Health/Check", grpc=True)
    events = requests_seen(srv, client.start() + get + call)
    received = [e for e in events if isinstance(e, h2_events.RequestReceived)]
    assert [e.stream_id for e in received] == [get_id, grpc_id] == [1, 3]
    assert dict(received[0].headers)[b":method"] == b"GET"
    assert dict(received[0].headers)[b":path"] == b"/ready"
    grpc_headers = dict(received[1].headers)
    assert grpc_headers[b":method"] == b"POST"
    assert grpc_headers[b"content-type"] == b"application/grpc"
    assert grpc_headers[b"te"] == b"trailers"
    assert grpc_headers[b":authority"] == b"10.0.0.7:50051"
    data = [e for e in events if isinstance(e, h2_events.DataReceived)]
    assert data[0].data == b"\x00\x00\x00\x00\x00" and data[0].stream_id == grpc_id
    ended = {e.stream_id for e in events if isinstance(e, h2_events.StreamEnded)}
    assert ended == {get_id, grpc_id}


def exchange(split: int) -> tuple[list[Event], bytes]:
    """A GET answered 503 and a gRPC call answered OK (trailers), fed `split` bytes
    at a time; the events and what the client sent back."""
    client = H2cConnection("x")
    srv = server()
    get_id, get = client.request("/")
    grpc_id, call = client.request("/svc.S/M", grpc=True)
    requests_seen(srv, client.start() + get + call)
    srv.send_headers(get_id, [(b":status", b"503")], end_stream=False)  # type: ignore[attr-defined]
    srv.send_data(get_id, b"busy" * 100, end_stream=True)  # type: ignore[attr-defined]
    srv.send_headers(grpc_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])  # type: ignore[attr-defined]
    srv.send_data(grpc_id, b"\x00\x00\x00\x00\x02\x08\x01")  # type: ignore[attr-defined]
    srv.send_headers(grpc_id, [(b"grpc-status", b"0")], end_stream=True)  # type: ignore[attr-defined]
    srv.ping(b"12345678")  # type: ignore[attr-defined]
    wire: bytes = srv.data_to_send()  # type: ignore[attr-defined]
    events: list[Event] = []
    for i in range(0, len(wire), split):
        events += client.receive(wire[i : i + split])
    return events, client.data_to_send()


@pytest.mark.parametrize("split", [1, 7, 65536])
def test_responses_in_any_split(split: int) -> None:
    events, sent = exchange(split)
    assert events == [
        Response(1, 503),
        Ended(1, 503, None),
        Response(3, 200),
        Ended(3, 200, 0),
    ]
    # SETTINGS ACK, the connection window back for the DATA, PING ACK: the server
    # accepts all of it.
    srv_events = requests_seen(server(), H2cConnection("x").start() + sent)
    assert any(isinstance(e, h2_events.SettingsAcknowledged) for e in srv_events)
    assert frame(PING, 1, 0, b"12345678") in sent


def test_trailers_only_grpc_error() -> None:
    client = H2cConnection("x")
    srv = server()
    sid, call = client.request("/svc.S/M", grpc=True)
    requests_seen(srv, client.start() + call)
    srv.send_headers(  # type: ignore[attr-defined]
        sid,
        [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14")],
        end_stream=True,
    )
    assert client.receive(srv.data_to_send()) == [Response(sid, 200), Ended(sid, 200, 14)]  # type: ignore[attr-defined]


def test_reset_goaway_and_broken_connections() -> None:
    client = H2cConnection("x")
    client.start()
    a, _ = client.request("/a")
    b, _ = client.request("/b")
    c, _ = client.request("/c")
    assert client.receive(frame(RST_STREAM, 0, a, struct.pack(">I", 8))) == [
        Reset(a, "RST_STREAM 8")
    ]
    assert client.receive(frame(GOAWAY, 0, 0, struct.pack(">II", b, 0))) == [Reset(c, "GOAWAY")]
    assert not client.usable  # no new requests after GOAWAY
    # A frame over the maximum size ends the connection and the stream still open.
    events = client.receive(
        frame(DATA, 0, b)[:0] + struct.pack(">I", MAX_FRAME + 1)[1:] + b"\0" * 6
    )
    assert events == [Reset(b, f"protocol error: frame of {MAX_FRAME + 1} bytes")]
    assert client.closed and client.receive(frame(SETTINGS, 0, 0)) == []


frames = st.builds(
    lambda kind, flags, stream, payload: frame(kind, flags, stream, payload),
    st.integers(0, 11),
    st.integers(0, 255),
    st.sampled_from([0, 1, 3, 5, 2]),
    st.binary(max_size=40),
)


@given(st.lists(frames, max_size=30), st.integers(1, 50), st.binary(max_size=30))
@settings(max_examples=400)
def test_arbitrary_frames_never_crash_or_repeat_a_stream(
    wire_frames: list[bytes], split: int, junk: bytes
) -> None:
    client = H2cConnection("x")
    client.start()
    opened = {client.request("/")[0], client.request("/g", grpc=True)[0], client.request("/z")[0]}
    wire = b"".join(wire_frames) + junk
    finished: list[int] = []
    for i in range(0, len(wire), split):
        for event in client.receive(wire[i : i + split]):
            assert event.stream in opened
            if isinstance(event, (Ended, Reset)):
                finished.append(event.stream)
        client.data_to_send()
    finished += [e.stream for e in client.close("done")]
    assert sorted(finished) == sorted(opened)  # every stream ends exactly once
