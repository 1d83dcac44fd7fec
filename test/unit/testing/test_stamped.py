"""The stamped connection: kernel timestamps of what it sends and receives, matched to
stream offsets, and a parser of ancillary data that never trips on what it is given."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from hypothesis import given
from hypothesis import strategies as st

from aviator.testing.stamped import (
    SO_TIMESTAMPING,
    StampedConnection,
    _stamp_id,
    scm_timestamp,
)


def _timestamping(sec: int, nsec: int) -> tuple[int, int, bytes]:
    return socket.SOL_SOCKET, SO_TIMESTAMPING, struct.pack("qqqqqq", sec, nsec, 0, 0, 0, 0)


def test_ancillary_data_is_read() -> None:
    ee = struct.pack("IBBBBII", 42, 4, 4, 0, 0, 1, 1234)  # ENOMSG, ORIGIN_TIMESTAMPING, id
    anc = [_timestamping(5, 7), (socket.IPPROTO_IP, 11, ee)]
    assert scm_timestamp(anc) == 5_000_000_007
    assert _stamp_id(anc) == 1234
    assert scm_timestamp([_timestamping(0, 0)]) is None  # an empty slot
    assert _stamp_id([_timestamping(1, 1)]) is None


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 100), st.binary(max_size=80))))
def test_any_ancillary_data_parses_without_error(anc: list[tuple[int, int, bytes]]) -> None:
    stamp, ident = scm_timestamp(anc), _stamp_id(anc)
    assert stamp is None or stamp > 0
    assert ident is None or 0 <= ident < 2**32


async def test_sends_and_receives_carry_kernel_stamps() -> None:
    received: list[tuple[bytes, int]] = []
    got = asyncio.Event()

    async def echo_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.readexactly(10)
            await asyncio.sleep(0.05)
            writer.write(data)
            await writer.drain()
            await reader.read()
        except ConnectionError:
            pass  # the client closed first
        finally:
            writer.close()

    def on_data(data: bytes, stamp: int) -> None:
        received.append((data, stamp))
        got.set()

    server = await asyncio.start_server(echo_later, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    before = time.time_ns()
    conn = await StampedConnection.open("127.0.0.1", port, on_data, lambda why: None)
    try:
        assert conn.stamped
        assert conn.write(b"0123456789") == 10 and conn.written == 10
        async with asyncio.timeout(10):
            await got.wait()
        sent = conn.sent_at(10)
        assert sent is not None and before <= sent
        assert conn.sent_at(11) is None  # nothing sent past the tenth byte
        (data, stamp), *_ = received
        assert data == b"0123456789"
        assert stamp - sent >= 50_000_000  # the server held it 50 ms
        conn.forget_before(11)
        assert conn.sent_at(10) is None
    finally:
        conn.close()
        server.close()
