"""Hand-made HTTP/2 bytes over real loopback TCP connections, for the real-kernel tests.

A `Pair` is one connection whose both ends the test drives itself (no server thread
decides anything): every frame, every split of the bytes over syscalls and every
moment is the test's choice. Frames are built here byte by byte; header blocks are
hand-encoded HPACK (RFC 7541) so the status encodings under test are exact.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, CONTINUATION = 0, 1, 3, 4, 7, 9
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8

# A request header block: :method GET, :scheme http, :path / (static table 2, 6, 4).
REQUEST_BLOCK = b"\x82\x86\x84"
# Response header blocks, :status first.
STATUS_200 = b"\x88"  # static table entry 8
STATUS_500 = b"\x8e"  # static table entry 14
STATUS_503_PLAIN = b"\x48\x03503"  # literal, incremental indexing, name index 8
STATUS_503_HUFFMAN = b"\x48\x83\x6c\x0c\xff"  # the same, value Huffman-coded
STATUS_502_NOT_INDEXED = b"\x08\x03502"  # literal without indexing, name index 8
STATUS_404_NEVER_INDEXED_HUFFMAN = b"\x18\x83\x68\x0d\x7f"  # never indexed, Huffman
STATUS_502_HUFFMAN_2 = b"\x08\x82\x6c\x02"  # without indexing, "502" in 2 Huffman bytes
STATUS_DYNAMIC = b"\xbe"  # dynamic table index 62: the entry the server added last
CONTENT_TYPE_GRPC = b"\x5f\x10application/grpc"  # literal, name index 31 (content-type)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def settings() -> bytes:
    return frame(SETTINGS, 0, 0)


def headers(stream: int, block: bytes = REQUEST_BLOCK, *, end_stream: bool = True) -> bytes:
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream, block)


def data(stream: int, payload: bytes = b"ok", *, end_stream: bool = True) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, stream, payload)


def rst_stream(stream: int, code: int = 8) -> bytes:
    return frame(RST_STREAM, 0, stream, struct.pack(">I", code))


def goaway(last_stream: int, code: int = 0) -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream, code))


def grpc_trailers(stream: int, status: int, *, huffman: bool = False) -> bytes:
    """Trailers whose first field is grpc-status as a literal with a new name."""
    if huffman:
        name = b"\x88" + bytes.fromhex("9acac8b21234da8f")
        codes = {0: b"\x81\x07", 13: b"\x82\x0b\x3f", 14: b"\x82\x0b\x5f"}
        value = codes[status]
    else:
        name = b"\x0bgrpc-status"
        digits = str(status).encode()
        value = bytes([len(digits)]) + digits
    return frame(HEADERS, END_HEADERS | END_STREAM, stream, b"\x40" + name + value)


@dataclass
class Pair:
    """One TCP connection on loopback; the test plays both ends. `server` is the
    accepted socket (the pod's), `client` the connecting one."""

    host: str
    keep_listening: bool = False  # keep the listener open (roles of adopted sockets)
    client: socket.socket = field(init=False)
    server: socket.socket = field(init=False)
    port: int = 0
    # Monotonic times of the last to_server's client write (before it) and of the last
    # to_client's client read (after it): the client's view of a request.
    client_sent: float = 0.0
    client_received: float = 0.0

    def __post_init__(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(1)
        self.port = int(listener.getsockname()[1])
        self.client = socket.create_connection((self.host, self.port), timeout=10)
        self.server, _ = listener.accept()
        self.listener: socket.socket | None = listener if self.keep_listening else None
        if not self.keep_listening:
            listener.close()
        for s in (self.client, self.server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(10)

    def to_server(self, payload: bytes) -> float:
        """Client sends `payload` (one write), the server reads exactly it (one or more
        reads); returns the monotonic time right after the server's last read."""
        self.client_sent = time.monotonic()
        self.client.sendall(payload)
        return read_exactly(self.server, len(payload))

    def to_client(self, payload: bytes) -> float:
        """Server sends `payload`; returns the monotonic time right before its send."""
        t = time.monotonic()
        self.server.sendall(payload)
        self.client_received = read_exactly(self.client, len(payload))
        return t

    def open(self) -> float:
        """The client preface and both ends' SETTINGS; when the server read them."""
        t = self.to_server(PREFACE + settings())
        self.to_client(settings())
        return t

    def close(self) -> None:
        self.client.close()
        self.server.close()
        if self.listener is not None:
            self.listener.close()


def read_exactly(sock: socket.socket, n: int, chunk: int = 65536) -> float:
    """Read `n` bytes in reads of at most `chunk`; the time right after the last one."""
    got = 0
    while got < n:
        part = sock.recv(min(chunk, n - got))
        if not part:
            raise ConnectionError("peer closed")
        got += len(part)
    return time.monotonic()
