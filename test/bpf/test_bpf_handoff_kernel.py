"""Ending a connection from inside the kernel (bpf/handoff.h) on the real kernel: the
iterator ends exactly the socket it is told to, and only when the program sees it
quiet and nothing waits unread in it, all under the socket's lock."""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import TEST_BOUND_S
from h2_wire import PREFACE, headers, settings

from aviator.agent.bpf import BpfLatencySource
from aviator.agent.bpf.iterend import KernelEnder

pytestmark = [pytest.mark.bpf, pytest.mark.timeout(TEST_BOUND_S, func_only=True)]

HOST = "127.0.44.1"
SO_COOKIE = 57
QUIET_NS = 10_000_000  # 10 ms
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def here(run: Callable[[], None]) -> None:
    """The tests' connections are in this process's network namespace."""
    run()


class Pair:
    """A client and the server's accepted end of one loopback connection."""

    def __init__(self, listener: socket.socket) -> None:
        self.client = socket.create_connection(listener.getsockname(), timeout=10)
        self.server, _ = listener.accept()
        self.server.settimeout(10)

    @property
    def cookie(self) -> int:
        value: int = struct.unpack("<Q", self.server.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
        return value

    def exchange(self) -> None:
        """One HTTP/1.1 request and its answer."""
        self.client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.server.recv(4096)
        self.server.sendall(RESPONSE)
        self.client.recv(4096)

    def reset_seen_by_client(self) -> bool:
        try:
            self.client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return self.client.recv(4096) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind((HOST, 0))
    s.listen(16)
    try:
        yield s
    finally:
        s.close()


def _quiet_for(source: BpfLatencySource, pair: Pair, ns: int) -> None:
    """Wait until the program has seen the server end idle for `ns` (bounded)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = next((s for s in source.sockets() if s.remote == pair.client.getsockname()), None)
        if state is not None and state.idle and time.monotonic_ns() - state.idle_ns > ns:
            return
        time.sleep(0.005)
    raise AssertionError("the program never saw the connection quiet")


def test_a_quiet_connection_is_ended_and_only_it(
    latency_source: BpfLatencySource, kernel_ender: KernelEnder, listener: socket.socket
) -> None:
    target, bystander = Pair(listener), Pair(listener)
    try:
        for p in (target, bystander):
            p.exchange()
        _quiet_for(latency_source, target, QUIET_NS)
        assert kernel_ender.end(target.cookie, QUIET_NS, here) == 0
        assert target.reset_seen_by_client()
        bystander.exchange()  # untouched
        # Gone now: the same cookie finds nothing to end.
        assert kernel_ender.end(target.cookie, QUIET_NS, here) == errno.ENOENT
    finally:
        target.close()
        bystander.close()


def test_a_request_open_or_too_recent_an_answer_keeps_it(
    latency_source: BpfLatencySource, kernel_ender: KernelEnder, listener: socket.socket
) -> None:
    pair = Pair(listener)
    try:
        pair.exchange()
        # Answered a moment ago: the client may be sending its next request.
        assert kernel_ender.end(pair.cookie, 3_600 * 10**9, here) == errno.EBUSY
        # A request arrived (the receive hook marks it busy as its segment comes in).
        pair.client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        pair.server.recv(4096)
        assert kernel_ender.end(pair.cookie, 0, here) == errno.EBUSY
        pair.server.sendall(RESPONSE)
        pair.client.recv(4096)
        pair.exchange()  # it lived through both looks
    finally:
        pair.close()


def test_an_answer_still_being_written_keeps_it(
    latency_source: BpfLatencySource, kernel_ender: KernelEnder, listener: socket.socket
) -> None:
    """A response written in parts (its head, then its body a while later: a streamed
    answer) keeps its connection: it is quiet only from the answer's last byte out, not
    from its first, or a hand-off would cut it mid-answer."""
    quiet_ns = 300_000_000  # far above a descheduling between the write and the look
    pair = Pair(listener)
    try:
        pair.client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        pair.server.recv(4096)
        pair.server.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        _quiet_for(latency_source, pair, quiet_ns)  # the head went out that long ago
        pair.server.sendall(b"x")  # the body begins
        assert kernel_ender.end(pair.cookie, quiet_ns, here) == errno.EBUSY
        pair.server.sendall(b"x")
        answer = b""
        while not answer.endswith(b"\r\n\r\nxx"):
            got = pair.client.recv(4096)
            assert got, f"the connection ended mid-answer: {answer!r}"
            answer += got
        _quiet_for(latency_source, pair, QUIET_NS)  # once the answer is over, it can go
        assert kernel_ender.end(pair.cookie, QUIET_NS, here) == 0
        assert pair.reset_seen_by_client()
    finally:
        pair.close()


def test_bytes_unread_keep_it_where_the_program_has_not_seen_a_request(
    latency_source: BpfLatencySource, kernel_ender: KernelEnder, listener: socket.socket
) -> None:
    """On HTTP/2 a request opens when its HEADERS are read: before that the program's
    view is idle, and only the unread bytes say a request is there."""
    pair = Pair(listener)
    try:
        pair.client.sendall(PREFACE + settings())
        pair.server.recv(4096)
        pair.server.sendall(settings())
        pair.client.recv(4096)
        _quiet_for(latency_source, pair, QUIET_NS)
        pair.client.sendall(headers(1))  # not read by the server yet
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _unread(pair.server):
            time.sleep(0.001)
        state = next(s for s in latency_source.sockets() if s.remote == pair.client.getsockname())
        assert state.idle and state.protocol == "h2"
        assert kernel_ender.end(pair.cookie, QUIET_NS, here) == errno.EBUSY
        assert pair.server.recv(4096)  # the request is still there to read
    finally:
        pair.close()


def _unread(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False
