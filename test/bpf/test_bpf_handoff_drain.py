"""Draining a busy HTTP/2 connection on the real kernel: the agent writes a graceful GOAWAY
for the pod's server (its own socket, borrowed with pidfd_getfd) only at a frame
boundary the program saw, and a real grpcio channel whose connection always has a
stream open finishes every call on it and moves its new calls to a new connection."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import h2_wire
import pytest
from conftest import TEST_BOUND_S
from h2_servers import grpc_serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.bpf.model import SocketState
from aviator.agent.handoff import goaway
from aviator.agent.handoff.drain import SENT, send_goaway
from aviator.agent.handoff.executor import HandOffExecutor
from aviator.agent.handoff.netlink import open_diag
from aviator.agent.handoff.select import Target
from aviator.agent.handoff.sockdiag import DiagSocket

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

METHOD = "/aviator.test.Held/Call"


class HeldPod:
    """A grpcio server whose calls answer with the caller's address (a re-dial shows) once
    the test releases them, one permit each; `arrived` counts calls seen."""

    def __init__(self) -> None:
        self.arrived = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.arrived.release()
        if request == b"held":
            assert self.release.acquire(timeout=30)
        return context.peer().encode()

    @contextlib.contextmanager
    def serve(self, host: str) -> Iterator[int]:
        def release_all() -> None:
            for _ in range(64):
                self.release.release()

        with grpc_serving(
            host, "aviator.test.Held", {"Call": self.call}, workers=32, on_stop=release_all
        ) as port:
            yield port


def _ours(source: BpfLatencySource, host: str, port: int) -> list[SocketState]:
    return [s for s in source.sockets() if s.role == "server" and s.local == (host, port)]


def _until(what: str, ok: Callable[[], bool]) -> None:
    """Until `ok()` (the program updates its maps within the syscall that moved the
    bytes; bounded for a loaded machine)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.005)
    raise AssertionError(f"not reached: {what}")


@pytest.mark.parametrize("drain", [True, False], ids=["drain", "no-drain"])
def test_a_channel_never_idle_moves_on_goaway_and_every_call_completes(
    latency_source: BpfLatencySource, drain: bool
) -> None:
    """The connection always has a held call open (a new one opens before the last
    ends), so it is never idle: idle-only hand-off leaves it. With the drain, the step
    writes one GOAWAY; every held call completes OK on the old connection, every call
    made after goes over a new one, and the client closes the old one once its calls
    are done. Without it (`no-drain`) the calls after stay on the old connection."""
    host = "127.0.43.21" if drain else "127.0.43.22"
    pod = HeldPod()
    with (
        pod.serve(host) as port,
        grpc.insecure_channel(
            f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel,
    ):
        call = channel.unary_unary(METHOD)
        first_peer = call(b"quick", timeout=10).decode()
        assert pod.arrived.acquire(timeout=10)
        held = [call.future(b"held", timeout=30) for _ in range(3)]
        for _ in held:
            assert pod.arrived.acquire(timeout=10)
        _until(
            "3 streams open", lambda: [s.streams for s in _ours(latency_source, host, port)] == [3]
        )
        (old,) = _ours(latency_source, host, port)

        sent: list[str] = []

        def drainer(sock: SocketState, diag: DiagSocket) -> str:
            result = send_goaway(
                sock.netns, diag.inode, sock.protocol, lambda: latency_source.server_cut(sock.sk)
            )
            sent.append(result)
            return result

        executor = HandOffExecutor(
            table=latency_source,
            open_diag=open_diag,
            fresh_s=0.0,
            watch_s=0.02,
            drain=drainer if drain else None,
            drain_after_s=0.0,
        )
        h = executor.begin(Target("ns/pod", host, frozenset({port})), "ns/policy", 0.0)
        # A GOAWAY waits for a moment the server's bytes stop between frames and the
        # peer has acknowledged them all (goaway.TRANSIENT refusals): the next look
        # tries again, as the agent's next step does.
        deadline = time.monotonic() + 10
        executor.step()
        while drain and not h.drained and time.monotonic() < deadline:
            executor.step()
        assert h.ended == 0
        if drain:
            assert (h.drained, sent[-1]) == (1, SENT), sent
            assert set(sent[:-1]) <= goaway.TRANSIENT, sent
        else:
            assert (h.drained, sent) == (0, [])

        # Calls made now: a new connection if the client took the GOAWAY. One more held
        # call first, then the oldest released: streams stay open on every connection.
        later = [call.future(b"held", timeout=30)]
        assert pod.arrived.acquire(timeout=10)
        pod.release.release()
        later += [call.future(b"quick", timeout=10) for _ in range(5)]
        peers_later = [f.result(timeout=30).decode() for f in later[1:]]
        for _ in range(len(held)):
            pod.release.release()
        peers_held = [f.result(timeout=30).decode() for f in held]  # raises if one failed
        assert peers_held == [first_peer] * len(held)
        assert later[0].result(timeout=30)  # released with the held ones
        if drain:
            assert first_peer not in peers_later
            assert len(set(peers_later)) == 1
            # The client closes the old connection once its calls are done.
            _until(
                "the drained connection closed",
                lambda: old.sk not in {s.sk for s in _ours(latency_source, host, port)},
            )
        else:
            assert set(peers_later) == {first_peer}


# --- the write side's frame boundary, with bytes the test writes itself ---------------

SETTINGS = h2_wire.settings()
REQUEST = h2_wire.headers(1)  # GET /, END_STREAM


def _received(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise ConnectionError("closed")
        buf += got
    return buf


def test_goaway_is_written_only_between_the_servers_frames(
    latency_source: BpfLatencySource,
) -> None:
    """An h2c server (this test's socket) stops mid-frame and mid-header-block: the
    GOAWAY is refused (`mid-frame`) and nothing is written; once its frames are whole
    it is written, and the client reads it exactly after them."""
    host = "127.0.43.23"
    with socket.create_server((host, 0)) as listener:
        port = listener.getsockname()[1]
        client = socket.create_connection((host, port), timeout=10)
        server, _ = listener.accept()
        with client, server:
            server.settimeout(10)
            client.sendall(h2_wire.PREFACE + SETTINGS + REQUEST)
            _received(server, len(h2_wire.PREFACE + SETTINGS + REQUEST))
            server.sendall(SETTINGS)
            _until(
                "an h2 stream open",
                lambda: (
                    [(s.protocol, s.streams) for s in _ours(latency_source, host, port)]
                    == [("h2", 1)]
                ),
            )
            (sock,) = _ours(latency_source, host, port)
            inode = _inode(server)

            def attempt() -> str:
                return send_goaway(
                    sock.netns, inode, sock.protocol, lambda: latency_source.server_cut(sock.sk)
                )

            def settled(cut: int) -> None:
                _until(f"server_cut {cut}", lambda: latency_source.server_cut(sock.sk) == cut)
                _until("acknowledged", lambda: _outq(server) == 0)

            settled(0)
            written = SETTINGS
            # A HEADERS frame's header without its payload: inside a frame.
            headers = h2_wire.frame(
                h2_wire.HEADERS, 0, 1, h2_wire.STATUS_200
            )  # no END_HEADERS: a block goes on
            server.sendall(headers[:9])
            settled(3)  # inside the frame, and its block goes on
            assert attempt() == goaway.MID_FRAME
            server.sendall(headers[9:])
            # The frame is whole, the header block is not: still nothing may come between.
            settled(2)
            assert attempt() == goaway.MID_FRAME
            continuation = h2_wire.frame(h2_wire.CONTINUATION, h2_wire.END_HEADERS, 1)
            server.sendall(continuation)
            written += headers + continuation
            settled(0)
            # A DATA frame in three writes: part of its header, the rest and part of its
            # payload, the rest of its payload.
            data = h2_wire.frame(h2_wire.DATA, 0, 1, b"payload")
            for part, cut in ((data[:5], 1), (data[5:12], 1), (data[12:], 0)):
                server.sendall(part)
                settled(cut)
                if cut:
                    assert attempt() == goaway.MID_FRAME
            written += data
            assert attempt() == SENT
            # The client reads the server's frames whole, then the GOAWAY.
            got = _received(client, len(written) + len(goaway.GRACEFUL))
            assert got == written + goaway.GRACEFUL
            # The program parsed the GOAWAY too: still at a boundary, the stream open.
            assert latency_source.server_cut(sock.sk) == 0
            assert [s.streams for s in _ours(latency_source, host, port)] == [1]


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _outq(sock: socket.socket) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), 0x5411, b"\0" * 4))[0])


# A server frame: (type, flags, payload); header-carrying ones come in legal blocks.
_Frame = tuple[int, int, bytes]
_block = st.integers(0, 40).map(lambda n: h2_wire.STATUS_200 * n)
_other = st.one_of(
    st.tuples(
        st.just(h2_wire.DATA), st.sampled_from([0, h2_wire.END_STREAM]), st.binary(max_size=60)
    ),
    st.just((h2_wire.SETTINGS, 0, b"")),
    st.just((6, 0, b"12345678")),  # PING
    st.just((8, 0, b"\0\0\x10\0")),  # WINDOW_UPDATE
)


@st.composite
def _header_block(draw: st.DrawFn) -> list[_Frame]:
    """HEADERS (maybe padded, maybe with priority) and CONTINUATIONs; END_HEADERS on
    the last."""
    more = draw(st.integers(0, 2))
    padded = draw(st.booleans())
    priority = draw(st.booleans())
    flags = (h2_wire.PADDED if padded else 0) | (0x20 if priority else 0)
    payload = (b"\x03" if padded else b"") + (b"\0\0\0\0\x10" if priority else b"")
    payload += draw(_block) + (b"\0\0\0" if padded else b"")
    frames = [(h2_wire.HEADERS, flags, payload)]
    frames += [(h2_wire.CONTINUATION, 0, draw(_block)) for _ in range(more)]
    last = frames[-1]
    frames[-1] = (last[0], last[1] | h2_wire.END_HEADERS, last[2])
    return frames


def _expected_cuts(frames: list[_Frame]) -> tuple[bytes, list[int]]:
    """The server's bytes and, for every length written so far, server_cut as the
    program should have it: FRAME inside a frame; BLOCK once a header-carrying
    frame's header without END_HEADERS is written, until one with it."""
    wire, cuts = b"", [0]
    block = 0
    for ftype, flags, payload in frames:
        raw = h2_wire.frame(ftype, flags, 1 if ftype in (0, 1, 9) else 0, payload)
        for i in range(1, len(raw) + 1):
            if i == 9 and ftype in (h2_wire.HEADERS, h2_wire.CONTINUATION):
                block = 0 if flags & h2_wire.END_HEADERS else 2
            cuts.append(block | (1 if i < len(raw) else 0))
        wire += raw
    return wire, cuts


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    groups=st.lists(st.one_of(_header_block(), _other.map(lambda f: [f])), min_size=1, max_size=8),
)
def test_server_cut_follows_the_servers_bytes_cut_anywhere(
    latency_source: BpfLatencySource, data: st.DataObject, groups: list[list[_Frame]]
) -> None:
    """Random legal server frames written in random pieces: after every write (the
    program parses it within the syscall), server_cut says exactly whether the bytes
    stop inside a frame and inside a header block."""
    wire, expected = _expected_cuts([f for g in groups for f in g])
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=10)))
    pair = h2_wire.Pair("127.0.43.24")
    try:
        pair.open()
        sk = next(
            s.sk
            for s in latency_source.sockets()
            if s.role == "server" and s.local == ("127.0.43.24", pair.port)
        )
        assert latency_source.server_cut(sk) == 0
        seen, want = [], []
        for a, b in itertools.pairwise([0, *cuts, len(wire)]):
            pair.server.sendall(wire[a:b])
            seen.append(latency_source.server_cut(sk))
            want.append(expected[b])
        _received(pair.client, len(wire))
        assert seen == want
    finally:
        pair.close()
