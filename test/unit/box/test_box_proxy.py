"""The box proxy's per-Service listener on 127/8: random spread over ready backends,
following changes at once, refusing connections when nothing is ready."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from aviator.box.netns import HostNetwork
from aviator.box.proxy import PortListener
from aviator.box.traffic import request_once

HOST = "127.0.0.1"


async def _backend(name: str) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(
            f"HTTP/1.1 200 OK\r\nX-Served-By: {name}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, HOST, 0)


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, tuple[str, int]]]:
    servers = {name: await _backend(name) for name in ("a", "b", "c")}
    try:
        yield {n: (HOST, s.sockets[0].getsockname()[1]) for n, s in servers.items()}
    finally:
        for s in servers.values():
            s.close()


@pytest.fixture
async def listener() -> AsyncIterator[PortListener]:
    lst = PortListener(HostNetwork(), "ns/svc", "http", HOST, 0)
    try:
        yield lst
    finally:
        await lst.close()


def _address(lst: PortListener) -> tuple[str, int]:
    assert lst._server is not None
    return (HOST, lst._server.sockets[0].getsockname()[1])


async def test_spreads_new_connections_over_ready_backends(
    listener: PortListener, backends: dict[str, tuple[str, int]]
) -> None:
    await listener.set_backends(list(backends.values()))
    address = _address(listener)
    samples = await asyncio.gather(*(request_once(address) for _ in range(90)))
    served = Counter(s.served_by for s in samples)
    assert set(served) == {"a", "b", "c"}
    assert min(served.values()) >= 10  # 90 random picks over 3: a miss is ~1e-6 likely


async def test_follows_backend_changes_for_the_next_connection(
    listener: PortListener, backends: dict[str, tuple[str, int]]
) -> None:
    await listener.set_backends(list(backends.values()))
    address = _address(listener)
    await listener.set_backends([backends["b"]])
    samples = await asyncio.gather(*(request_once(address) for _ in range(20)))
    assert {s.served_by for s in samples} == {"b"}


async def test_refuses_when_no_backend_is_ready(
    listener: PortListener, backends: dict[str, tuple[str, int]]
) -> None:
    await listener.set_backends([backends["a"]])
    address = _address(listener)
    await listener.set_backends([])
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*address)
    listener.port = address[1]  # listen again on the same address
    await listener.set_backends([backends["c"]])
    assert (await request_once(address)).served_by == "c"


async def test_unreachable_backend_resets_the_client(listener: PortListener) -> None:
    await listener.set_backends([(HOST, 1)])  # nothing listens on port 1
    sample = await request_once(_address(listener))
    assert not sample.ok


async def test_holds_each_open_relay_until_it_ends(listener: PortListener) -> None:
    """asyncio's server drops its reference to a connection's task once the client's
    transport is gone; the listener keeps its own, so a relay is never collected as
    garbage while it still copies (one such task, destroyed while pending, came just
    before a box crash)."""
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        reached.set()  # the relay is connected, its task registered before it dialled
        await release.wait()
        writer.write(b"late\n")
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(held, HOST, 0)
    try:
        await listener.set_backends([(HOST, backend.sockets[0].getsockname()[1])])
        reader, writer = await asyncio.open_connection(*_address(listener))
        writer.write(b"hello\n")
        writer.write_eof()  # the client is done sending; the backend still owes it
        await asyncio.wait_for(reached.wait(), 10)
        gc.collect()
        (relay,) = listener.relays
        assert not relay.done()
        release.set()
        assert await reader.read() == b"late\n"
        await asyncio.wait_for(relay, 10)
        assert not listener.relays
        writer.close()
    finally:
        backend.close()
