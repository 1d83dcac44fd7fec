"""An HTTP/2 client without TLS (h2c, prior knowledge) that multiplexes many concurrent
streams on ONE connection, timing each stream where the bytes cross the socket.

Tests and benchmarks of per-stream measurement need the client-side truth of every
stream, taken the way the agent defines a request (DESIGN §10): from the request's
HEADERS leaving the client to the first response HEADERS arriving on that stream.
The connection is an `aviator.testing.stamped.StampedConnection`: a request is timed
from the kernel's software timestamp of the send that carried the last byte of its
HEADERS (and body) to that of the read whose data completed its first response
HEADERS (every response HEADERS in one read share the read's stamp: they arrived
together), so the client's own delay in waking up is not counted. Without kernel
stamps (`kernel_stamps` False) the loop's clock at the socket calls stands in.
`h2` (sans-IO) does the framing.

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

from aviator.testing.stamped import StampedConnection

GRPC_METHOD = "/aviator.testapp.TestApp/Call"


@dataclass(frozen=True, slots=True)
class StreamSample:
    """One request: when its HEADERS were sent (CLOCK_REALTIME ns), the time to its
    first response HEADERS (None when none came), the HTTP status (0: none), the gRPC status
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
    end: int  # stream offset just past the request's bytes
    written_ns: int  # the app's clock at the write (when the kernel gives no stamp)
    done: asyncio.Future[None]
    sent_ns: int | None = None
    first_ns: int | None = None
    status: int = 0
    grpc_status: int | None = None
    served_by: str | None = None


def _header_map(headers: list[tuple[bytes, bytes]] | None) -> dict[bytes, bytes]:
    return dict(headers or [])


class _Session:
    """The h2 state machine over one stamped connection."""

    def __init__(self) -> None:
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.wire: StampedConnection | None = None
        self.streams: dict[int, _Stream] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: str | None = None

    async def open(self, host: str, port: int) -> None:
        self.wire = await StampedConnection.open(host, port, self.data_received, self.lost)
        self.conn.initiate_connection()
        self.wire.write(self.conn.data_to_send())

    def data_received(self, data: bytes, stamp_ns: int) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error as err:
            self._fail_all(f"protocol error: {err}")
            self._flush()
            if self.wire is not None:
                self.wire.close()
            self.lost("protocol error")
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None and stream.first_ns is None:
                    stream.first_ns = stamp_ns
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

    def lost(self, why: str) -> None:
        self._fail_all(why)
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
        if stream is None or stream.done.done():
            return
        if self.wire is not None:
            stream.sent_ns = self.wire.sent_at(stream.end)
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
        if data and self.wire is not None:
            self.wire.write(data)

    def send(self, headers: list[tuple[bytes, bytes]], body: bytes | None) -> _Stream:
        if self.error is not None or self.wire is None or self.wire.closed:
            raise ConnectionError(self.error or "connection closed")
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        data = self.conn.data_to_send()
        written = time.time_ns()
        end = self.wire.write(data)
        stream = _Stream(end, written, asyncio.get_running_loop().create_future())
        self.streams[stream_id] = stream
        stream.done.add_done_callback(lambda done: self._forget(stream_id, done))
        return stream

    def _forget(self, stream_id: int, done: asyncio.Future[None]) -> None:
        self.streams.pop(stream_id, None)
        if self.wire is not None:
            ends = [s.end for s in self.streams.values()]
            self.wire.forget_before(min(ends) if ends else self.wire.written)
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
    _session: _Session | None = None

    async def connect(self) -> None:
        session = _Session()
        await session.open(self.host, self.port)
        self._session = session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is None or session.wire is None:
            return
        with contextlib.suppress(H2Error):
            session.conn.close_connection()
            session._flush()
        session.wire.close()
        session.lost("closed by the client")

    async def __aenter__(self) -> H2cClient:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def kernel_stamps(self) -> bool:
        """Whether requests are timed by the kernel's stamps (else the loop's clock)."""
        return self._session is not None and bool(self._session.wire and self._session.wire.stamped)

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._session is not None and self._session.wire is not None, "not connected"
        return self._session.wire.local_address

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
        assert self._session is not None, "not connected"
        headers, body = self._request()
        stream: _Stream | None = None
        error: str | None = None
        try:
            stream = self._session.send(headers, body)
            async with asyncio.timeout(self.timeout_s):
                await asyncio.shield(stream.done)
        except (ConnectionError, TimeoutError, H2Error) as err:
            error = str(err) or type(err).__name__
        if stream is None:
            sample = StreamSample(time.time_ns(), None, 0, error=error)
        else:
            sent = stream.sent_ns or stream.written_ns
            sample = StreamSample(
                sent,
                None if stream.first_ns is None else (stream.first_ns - sent) / 1e9,
                stream.status,
                stream.grpc_status if self.grpc else None,
                stream.served_by,
                error or (None if stream.status else "no status"),
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
                if sample.error is not None and self._session and self._session.error:
                    return  # the connection is gone; its failures are recorded

        await asyncio.gather(*(worker() for _ in range(max(1, streams))))
        return self.samples[first:]
