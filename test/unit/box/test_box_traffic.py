"""Load.started_window: a window of the requests sent after a moment, however long the
requests sent before it take to end."""

from __future__ import annotations

import asyncio

from aviator.box.traffic import Load


async def test_requests_sent_before_the_mark_are_left_out_even_if_they_end_after() -> None:
    served_by = "old"
    delay_s = 0.5
    held: list[str] = []
    three_held = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name, wait = served_by, delay_s  # fixed when the request arrives
        await reader.readuntil(b"\r\n\r\n")
        held.append(name)
        if held.count("old") >= 3:
            three_held.set()
        await asyncio.sleep(wait)
        writer.write(
            f"HTTP/1.1 200 OK\r\nX-Served-By: {name}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Load(lambda: ("127.0.0.1", port), concurrency=3) as load:
        # every client has an "old" request in flight (they take 0.5 s)
        await asyncio.wait_for(three_held.wait(), timeout=10)
        served_by, delay_s = "new", 0.0
        mark = load.mark()
        window = await load.started_window(mark, count=10, timeout_s=10)
        assert window.count == 10 and set(window.by_pod) == {"new"}, window
        # the old requests in flight at the mark did end after it
        assert any(s.at >= mark and s.served_by == "old" for s in load.samples)
