"""A minimal HTTP/2 client connection without TLS (h2c, prior knowledge), sans I/O.

What the agent's keep-warm probes need to speak to pods that serve only HTTP/2 or
gRPC, and nothing more (no dependency on `h2`, which is an optional extra):

- `H2cConnection.start()`: the client preface and a SETTINGS frame (server push off,
  stream windows large enough that a probe's response never waits on flow control);
- `request(path, grpc=...)`: the bytes of one request on a new stream: a HEADERS frame
  of literal-without-indexing fields (`aviator.latency.hpack.literal`) ending the
  stream for a GET; for gRPC a POST (`content-type: application/grpc`, `te:
  trailers`) followed by one DATA frame holding an empty message (the 5-byte prefix:
  not compressed, length 0) that ends the stream;
- `receive(data)`: frames read from the socket (any split) → events for the caller
  (`Response`: a stream's first response HEADERS; `Ended`: the stream ended, with the
  `:status` and `grpc-status` read; `Reset`: RST_STREAM or the connection ended before
  the stream did) plus bytes to send back (`data_to_send`): SETTINGS ACK, PING ACK,
  WINDOW_UPDATE for the DATA received.

Anything malformed (a frame over the advertised maximum size, a bad SETTINGS or PING,
a header block that is not HPACK, CONTINUATION out of order, a PUSH_PROMISE after
push was turned off) ends the connection: `closed` is set, every open stream gets a
`Reset` and later input is ignored. GOAWAY resets the streams the server did not take
and refuses new requests. The work per call is linear in the bytes given and the
memory bounded (`MAX_HEADER_BLOCK`, frames of at most `MAX_FRAME` bytes); the caller
bounds the time (the probe's timeout).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aviator.latency.hpack import Decoder, HpackError, literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's default, which we keep
MAX_HEADER_BLOCK = 64 * 1024
STREAM_WINDOW = (1 << 31) - 1

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4

GRPC_EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream & 0x7FFFFFFF)
        + payload
    )


@dataclass(frozen=True, slots=True)
class Response:
    """The first (non-informational) response HEADERS of `stream` arrived."""

    stream: int
    status: int  # :status, 0 when absent or not a number


@dataclass(frozen=True, slots=True)
class Ended:
    """`stream` ended (END_STREAM from the server)."""

    stream: int
    status: int  # :status of its response, 0 when none came
    grpc_status: int | None  # grpc-status from the trailers (or a trailers-only response)


@dataclass(frozen=True, slots=True)
class Reset:
    """`stream` will not end normally: RST_STREAM (`code`), GOAWAY or a broken
    connection (`reason` says which)."""

    stream: int
    reason: str


Event = Response | Ended | Reset


class ProtocolError(Exception):
    pass


@dataclass(slots=True)
class _Stream:
    status: int = 0
    grpc_status: int | None = None
    answered: bool = False


def _number(value: bytes) -> int | None:
    return int(value) if value.isdigit() and len(value) <= 9 else None


class H2cConnection:
    """One client connection's state (see the module docstring)."""

    def __init__(self, authority: str, user_agent: str = "aviator-agent-probe") -> None:
        self.authority = authority.encode()
        self.user_agent = user_agent.encode()
        self.closed = False  # no more events, no new requests
        self.going_away = False  # GOAWAY seen: no new requests
        self._next_id = 1
        self._streams: dict[int, _Stream] = {}
        self._buf = bytearray()
        self._out = bytearray()
        self._block = bytearray()  # a header block waiting for CONTINUATION
        self._block_stream = 0
        self._block_ends = False
        self._in_block = False  # a header block waits for CONTINUATION
        self._decoder = Decoder()

    @property
    def usable(self) -> bool:
        return not self.closed and not self.going_away and self._next_id < (1 << 31)

    def start(self) -> bytes:
        settings = struct.pack(
            ">HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW
        )
        return PREFACE + frame(SETTINGS, 0, 0, settings)

    def request(self, path: str, *, grpc: bool = False) -> tuple[int, bytes]:
        """A new stream's request: (stream id, bytes to send)."""
        if not self.usable:
            raise ProtocolError("connection not usable for new requests")
        stream = self._next_id
        self._next_id += 2
        fields = [
            (b":method", b"POST" if grpc else b"GET"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", self.authority),
        ]
        if grpc:
            fields += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        fields.append((b"user-agent", self.user_agent))
        block = b"".join(literal(n, v) for n, v in fields)
        if len(block) > MAX_FRAME:
            raise ProtocolError("request headers too large")
        self._streams[stream] = _Stream()
        if grpc:
            data = frame(HEADERS, END_HEADERS, stream, block)
            return stream, data + frame(DATA, END_STREAM, stream, GRPC_EMPTY_MESSAGE)
        return stream, frame(HEADERS, END_HEADERS | END_STREAM, stream, block)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive(self, data: bytes) -> list[Event]:
        """Frames from the server (any split) → events; see data_to_send for replies."""
        if self.closed:
            return []
        events: list[Event] = []
        self._buf += data
        try:
            while len(self._buf) >= 9:
                length = int.from_bytes(self._buf[0:3], "big")
                if length > MAX_FRAME:
                    raise ProtocolError(f"frame of {length} bytes")
                if len(self._buf) < 9 + length:
                    break
                kind, flags = self._buf[3], self._buf[4]
                stream = int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
                payload = bytes(self._buf[9 : 9 + length])
                del self._buf[: 9 + length]
                self._frame(kind, flags, stream, payload, events)
        except (ProtocolError, HpackError) as err:
            self.close(f"protocol error: {err}", events)
        return events

    def close(self, reason: str, events: list[Event] | None = None) -> list[Event]:
        """The connection is over (also for the caller's EOF or error): every open
        stream is reset."""
        out = [] if events is None else events
        self.closed = True
        for stream in sorted(self._streams):
            out.append(Reset(stream, reason))
        self._streams.clear()
        self._buf.clear()
        return out

    # --- frames -----------------------------------------------------------------------

    def _frame(
        self, kind: int, flags: int, stream: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._in_block and kind != CONTINUATION:
            raise ProtocolError("header block interrupted")
        if kind == DATA:
            self._data(flags, stream, payload, events)
        elif kind == HEADERS:
            if stream == 0:
                raise ProtocolError("HEADERS on stream 0")
            payload = self._unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise ProtocolError("short HEADERS priority")
                payload = payload[5:]
            self._block_stream, self._block_ends = stream, bool(flags & END_STREAM)
            self._fragment(flags, payload, events)
        elif kind == CONTINUATION:
            if not self._in_block or stream != self._block_stream:
                raise ProtocolError("CONTINUATION out of order")
            self._fragment(flags, payload, events)
        elif kind == RST_STREAM:
            if stream == 0 or len(payload) != 4:
                raise ProtocolError("bad RST_STREAM")
            if self._streams.pop(stream, None) is not None:
                code = int.from_bytes(payload, "big")
                events.append(Reset(stream, f"RST_STREAM {code}"))
        elif kind == SETTINGS:
            if stream != 0 or len(payload) % 6 or (flags & ACK and payload):
                raise ProtocolError("bad SETTINGS")
            if not flags & ACK:
                self._out += frame(SETTINGS, ACK, 0)
        elif kind == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE with push disabled")
        elif kind == PING:
            if stream != 0 or len(payload) != 8:
                raise ProtocolError("bad PING")
            if not flags & ACK:
                self._out += frame(PING, ACK, 0, payload)
        elif kind == GOAWAY:
            if stream != 0 or len(payload) < 8:
                raise ProtocolError("bad GOAWAY")
            last = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
            self.going_away = True
            for sid in sorted(s for s in self._streams if s > last):
                del self._streams[sid]
                events.append(Reset(sid, "GOAWAY"))
        # PRIORITY, WINDOW_UPDATE and unknown types: nothing to do for a probe.

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ProtocolError("bad padding")
        return payload[1 : len(payload) - payload[0]]

    def _data(self, flags: int, stream: int, payload: bytes, events: list[Event]) -> None:
        if stream == 0:
            raise ProtocolError("DATA on stream 0")
        if payload:
            # Give the connection window back at once (stream windows are large).
            self._out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload)))
        self._unpad(flags, payload)
        if flags & END_STREAM:
            self._end(stream, events)

    def _fragment(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._block += payload
        if len(self._block) > MAX_HEADER_BLOCK:
            raise ProtocolError("header block too large")
        if not flags & END_HEADERS:
            self._in_block = True
            return
        self._in_block = False
        fields = self._decoder.decode(bytes(self._block))
        self._block.clear()
        state = self._streams.get(self._block_stream)
        if state is None:
            return  # a stream we did not open, or already reset
        headers = dict(fields)
        if not state.answered:
            status = _number(headers.get(b":status", b"")) or 0
            if 100 <= status < 200:
                return  # informational: the response is still to come
            state.answered, state.status = True, status
            events.append(Response(self._block_stream, status))
        grpc = headers.get(b"grpc-status")
        if grpc is not None:
            state.grpc_status = _number(grpc)
        if self._block_ends:
            self._end(self._block_stream, events)

    def _end(self, stream: int, events: list[Event]) -> None:
        state = self._streams.pop(stream, None)
        if state is not None:
            events.append(Ended(stream, state.status, state.grpc_status))
