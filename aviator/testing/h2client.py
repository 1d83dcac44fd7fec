"""An HTTP/2 client without TLS (h2c, prior knowledge) that multiplexes many concurrent
streams on ONE connection, timing each stream where the bytes cross the socket.

Tests and benchmarks of per-stream measurement need the client-side truth of every
stream, taken the way the agent defines a request (DESIGN §10): from the request's
HEADERS leaving the client to the first response HEADERS arriving on that stream.
So the clock is read just before the transport write that carries a request's
HEADERS, and on entry to `data_received` (once per read, before any frame of it is
parsed: every response HEADERS in one read shares the read's time, as they arrived
together). `h2` (sans-IO) does the framing.

`grpc=True` speaks gRPC's wire format on the same machinery (POST, `content-type:
application/grpc`, `te: trailers`, one length-prefixed message) and reads
`grpc-status` from the trailers, or from the headers of a trailers-only response;
it is the frame-exact truth for gRPC servers (`aviator.testing.grpcclient` is the
grpcio client).

`run(streams, requests, duration_s)` keeps `streams` requests open at once (closed
loop: a stream that completes starts the next request), until `requests` were sent or
`duration_s` passed; bounded in count and time either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass, field
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import H2Error

GRPC_METHOD = "/aviator.testapp.TestApp/Call"


@dataclass(frozen=True, slots=True)
class StreamSample:
    """One request: when its HEADERS were written (monotonic ns), the time to its first
    response HEADERS (None when none came), the HTTP status (0: none), the gRPC status
    (None: not gRPC or not read), who served it, and why it failed if it did."""

    sent_ns: int
    latency_s: float | None
    status: int
    grpc_status: int | None = None
    served_by: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        if self.error is not None or self.status != 200:
            return False
        return self.grpc_status in (None, 0)


@dataclass
class _Stream:
    sent_ns: int
    done: asyncio.Future[None]
    first_ns: int | None = None
    status: int = 0
    grpc_status: int | None = None
    served_by: str | None = None


def _header_map(headers: list[tuple[bytes, bytes]] | None) -> dict[bytes, bytes]:
    return dict(headers or [])


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        try:
            events = self.conn.receive_data(data)
        except H2Error as err:
            self._fail_all(f"protocol error: {err}")
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None and stream.first_ns is None:
                    stream.first_ns = now
                    self._read_headers(stream, _header_map(event.headers))
            elif isinstance(event, TrailersReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self._read_headers(stream, _header_map(event.headers))
            elif isinstance(event, DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._finish(event.stream_id)
            elif isinstance(event, StreamReset):
                self._finish(event.stream_id, f"stream reset ({event.error_code!r})")
            elif isinstance(event, ConnectionTerminated):
                self._fail_all(f"GOAWAY ({event.error_code!r})")
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all("connection closed")
        if not self.closed.done():
            self.closed.set_result(None)

    @staticmethod
    def _read_headers(stream: _Stream, headers: dict[bytes, bytes]) -> None:
        if b":status" in headers:
            stream.status = int(headers[b":status"])
        if b"grpc-status" in headers:
            stream.grpc_status = int(headers[b"grpc-status"])
        if b"x-served-by" in headers:
            stream.served_by = headers[b"x-served-by"].decode("latin-1")

    def _finish(self, stream_id: int, error: str | None = None) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.done.done():
            if error is None:
                stream.done.set_result(None)
            else:
                stream.done.set_exception(ConnectionError(error))

    def _fail_all(self, why: str) -> None:
        self.error = self.error or why
        for stream_id in list(self.streams):
            self._finish(stream_id, why)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, headers: list[tuple[bytes, bytes]], body: bytes | None) -> _Stream:
        if self.error is not None or self.transport is None or self.transport.is_closing():
            raise ConnectionError(self.error or "connection closed")
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        stream = _Stream(time.monotonic_ns(), asyncio.get_running_loop().create_future())
        self.streams[stream_id] = stream
        self.transport.write(self.conn.data_to_send())
        stream.done.add_done_callback(lambda done: self._forget(stream_id, done))
        return stream

    def _forget(self, stream_id: int, done: asyncio.Future[None]) -> None:
        self.streams.pop(stream_id, None)
        if not done.cancelled():
            done.exception()  # retrieved: a caller that timed out no longer waits


@dataclass
class H2cClient:
    """One h2c connection to `host:port`; `samples` holds every request's sample."""

    host: str
    port: int
    path: str = "/"
    grpc: bool = False
    timeout_s: float = 10.0
    samples: list[StreamSample] = field(default_factory=list)
    _protocol: _Protocol | None = None
    _transport: asyncio.Transport | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(_Protocol, self.host, self.port)
        self._transport, self._protocol = transport, protocol

    async def close(self) -> None:
        if self._protocol is not None and self._transport is not None:
            with contextlib.suppress(H2Error):
                self._protocol.conn.close_connection()
                self._protocol._flush()
            self._transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._protocol.closed

    async def __aenter__(self) -> H2cClient:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._transport is not None, "not connected"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    def _request(self) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        authority = f"{self.host}:{self.port}".encode()
        if not self.grpc:
            return [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", authority),
                (b":path", self.path.encode()),
            ], None
        payload = b"{}"
        return [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", authority),
            (b":path", (self.path if self.path != "/" else GRPC_METHOD).encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ], struct.pack(">BI", 0, len(payload)) + payload

    async def request(self) -> StreamSample:
        """One request on the connection (others may be open at the same time)."""
        assert self._protocol is not None, "not connected"
        headers, body = self._request()
        sent = time.monotonic_ns()
        stream: _Stream | None = None
        try:
            stream = self._protocol.send(headers, body)
            sent = stream.sent_ns
            async with asyncio.timeout(self.timeout_s):
                await asyncio.shield(stream.done)
        except (ConnectionError, TimeoutError, H2Error) as err:
            first_ns = None if stream is None else stream.first_ns
            sample = StreamSample(
                sent,
                None if first_ns is None else (first_ns - sent) / 1e9,
                0 if stream is None else stream.status,
                error=str(err) or type(err).__name__,
            )
        else:
            assert stream.first_ns is not None
            sample = StreamSample(
                sent,
                (stream.first_ns - sent) / 1e9,
                stream.status,
                stream.grpc_status if self.grpc else None,
                stream.served_by,
                None if stream.status else "no status",
            )
        self.samples.append(sample)
        return sample

    async def run(self, streams: int, requests: int, duration_s: float) -> list[StreamSample]:
        """`streams` concurrent requests at a time until `requests` were sent or
        `duration_s` passed; this run's samples."""
        first = len(self.samples)
        deadline = time.monotonic() + duration_s
        budget = [requests]

        async def worker() -> None:
            while budget[0] > 0 and time.monotonic() < deadline:
                budget[0] -= 1
                sample = await self.request()
                if sample.error is not None and self._protocol and self._protocol.error:
                    return  # the connection is gone; its failures are recorded

        await asyncio.gather(*(worker() for _ in range(max(1, streams))))
        return self.samples[first:]
