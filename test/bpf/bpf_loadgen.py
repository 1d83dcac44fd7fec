"""Small HTTP/1.1 keep-alive servers and clients on loopback, for the real-kernel tests.

Servers answer every request after a chosen delay (one thread per connection, so the
delay is the only thing a request waits for). Clients time each request with their
socket's kernel timestamps (SO_TIMESTAMPING, software): from the moment the request left
the client socket to the moment the first response segment arrived at it. That is the
client's own view of the request with the client's scheduling noise (a busy machine, the
GIL shared by many client threads) taken out, which the kernel program must match.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aviator.testing.stamped import (
    CMSG_SPACE,
    SO_TIMESTAMPING,
    TIMESTAMPING_FLAGS,
    scm_timestamp,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


def _read_request(conn: socket.socket, buf: bytearray) -> bool:
    """Read one request (headers only; GETs have no body); False on EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        buf += chunk
    del buf[: buf.index(b"\r\n\r\n") + 4]
    return True


@dataclass
class DelayServer:
    """HTTP/1.1 server on (host, random port) answering after `delay()` seconds.

    `body_size` bytes of body; `chunk` > 0 writes headers and body in separate sends of
    at most `chunk` bytes (a response spanning many segments and sends). `hold`, when
    set, makes every request wait until it is set (for in-flight tests); `received`
    counts requests read by the application.
    """

    host: str
    delay: Callable[[], float]
    body_size: int = 2
    chunk: int = 0
    hold: threading.Event | None = None
    family: socket.AddressFamily = socket.AF_INET
    received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _received_cond: threading.Condition = field(init=False)
    _sock: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._received_cond = threading.Condition(self._lock)

    port: int = 0

    def start(self) -> DelayServer:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.family == socket.AF_INET6 and self.host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((self.host, 0))
        sock.listen(128)
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
            self._spawn(self._serve, conn)

    def _response(self) -> tuple[bytes, bytes]:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.body_size
        return head, b"x" * self.body_size

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        head, body = self._response()
        try:
            while _read_request(conn, buf):
                with self._received_cond:
                    self.received += 1
                    self._received_cond.notify_all()
                if self.hold is not None:
                    self.hold.wait()
                else:
                    time.sleep(self.delay())
                if self.chunk:
                    conn.sendall(head)
                    for i in range(0, len(body), self.chunk):
                        conn.sendall(body[i : i + self.chunk])
                else:
                    conn.sendall(head + body)
        except OSError:
            pass
        finally:
            conn.close()

    def wait_received(self, n: int, timeout: float = 10.0) -> bool:
        """Block until the application has read `n` requests in total."""
        with self._received_cond:
            return self._received_cond.wait_for(lambda: self.received >= n, timeout)

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # shutdown wakes the blocked accept()
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self.hold is not None:
            self.hold.set()
        for t in self._threads:
            t.join(timeout=5)


class KeepAliveClient:
    """One keep-alive connection doing requests one at a time."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_connection((host, port), timeout=30)
        # Blocking mode: a socket timeout would make recvmsg poll for input first, which
        # never comes for the error queue (tests bound their time with pytest-timeout).
        self.sock.settimeout(None)
        assert self.sock.family == family
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TIMESTAMPING_FLAGS)
        self._buf = bytearray()
        # Kernel receive time of the latest segment read: a response pipelined behind
        # another may arrive whole with it, and then came at that time at the latest.
        self._buf_rx: int | None = None

    def send_request(self) -> int:
        """Write one request; returns the wall-clock time (ns) just before."""
        t0 = time.time_ns()
        self.sock.sendall(REQUEST)
        return t0

    def sent_at(self, fallback: int) -> int:
        """Kernel time (ns) the last request left the socket, from the error queue."""
        stamp = fallback
        while True:
            try:
                _, ancdata, _, _ = self.sock.recvmsg(
                    64, CMSG_SPACE, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return stamp
            found = scm_timestamp(ancdata)
            if found is not None:
                stamp = found

    def read_response(self) -> int:
        """Read one whole response; returns the kernel receive time (ns) of its first
        segment."""
        first_rx: int | None = self._buf_rx if self._buf else None
        while b"\r\n\r\n" not in self._buf:
            first_rx = self._recv(first_rx)
        head_end = self._buf.index(b"\r\n\r\n") + 4
        length = 0
        for line in bytes(self._buf[:head_end]).split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(self._buf) < head_end + length:
            first_rx = self._recv(first_rx)
        del self._buf[: head_end + length]
        assert first_rx is not None
        return first_rx

    def _recv(self, first_rx: int | None) -> int:
        data, ancdata, _, _ = self.sock.recvmsg(262144, CMSG_SPACE)
        if not data:
            raise ConnectionError("server closed the connection")
        stamp = scm_timestamp(ancdata)
        rx = stamp if stamp is not None else time.time_ns()
        self._buf_rx = rx
        self._buf += data
        return first_rx if first_rx is not None else rx

    def request(self) -> float:
        """One request; its latency in microseconds, from the socket's timestamps."""
        t0 = self.sent_at(self.send_request())
        t1 = self.read_response()
        return (t1 - t0) / 1000

    def close(self) -> None:
        self.sock.close()


def run_clients(host: str, port: int, connections: int, requests_each: int) -> list[float]:
    """`connections` concurrent keep-alive clients doing `requests_each` requests each;
    every request's latency (µs)."""
    results: list[list[float]] = [[] for _ in range(connections)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            client = KeepAliveClient(host, port)
            try:
                for _ in range(requests_each):
                    results[i].append(client.request())
            finally:
                client.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return [v for r in results for v in r]
