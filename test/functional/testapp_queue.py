"""The test app's queue mode: a fixed number of slots, a FIFO queue, and its gauge.

With `SLOTS` set (a positive number), at most that many requests are served at once;
the others wait in arrival order (a model server's batch slots and waiting queue).
The latency is each request's service time once it has a slot, so a pod with fewer
slots queues sooner and its clients wait longer. With `METRICS_PORT` set, the app also
serves the Prometheus text exposition on `GET /metrics` of that port (plain HTTP/1.1):

  testapp_queue_length  requests waiting for a slot (gauge)
  testapp_slots_busy    slots serving a request now (gauge)
  testapp_slots         the number of slots (gauge)
  testapp_requests_total requests answered or being answered (counter)

Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol


class Slots:
    """At most `size` holders at once; the others wait first come, first served."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"SLOTS must be at least 1, not {size}")
        self.size = size
        self.busy = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.busy < self.size and not self._waiting:
            self.busy += 1
        else:
            ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(ticket)
            try:
                await ticket  # the releaser hands its slot over: busy stays counted
            except asyncio.CancelledError:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                elif not ticket.cancelled():
                    self._release()  # handed a slot while being cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            ticket = self._waiting.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return
        self.busy -= 1


class Counted(Protocol):
    requests: int


def exposition(slots: Slots | None, app: Counted) -> str:
    """The /metrics text."""
    lines = [
        "# HELP testapp_requests_total Requests answered or being answered.",
        "# TYPE testapp_requests_total counter",
        f"testapp_requests_total {app.requests}",
    ]
    if slots is not None:
        lines += [
            "# HELP testapp_queue_length Requests waiting for a slot.",
            "# TYPE testapp_queue_length gauge",
            f"testapp_queue_length {slots.waiting}",
            "# HELP testapp_slots_busy Slots serving a request now.",
            "# TYPE testapp_slots_busy gauge",
            f"testapp_slots_busy {slots.busy}",
            "# HELP testapp_slots The number of slots.",
            "# TYPE testapp_slots gauge",
            f"testapp_slots {slots.size}",
        ]
    return "\n".join(lines) + "\n"


async def serve_metrics(
    slots: Slots | None, app: Counted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One HTTP/1.1 connection of the metrics port: GET /metrics, else 404."""
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            found = len(parts) == 3 and parts[1].split("?")[0] == "/metrics"
            body = (exposition(slots, app) if found else "not found\n").encode()
            writer.write(
                (
                    f"HTTP/1.1 {'200 OK' if found else '404 Not Found'}\r\n"
                    "Content-Type: text/plain; version=0.0.4\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            await writer.drain()
    except (ConnectionError, ValueError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()
