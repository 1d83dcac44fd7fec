"""Client traffic through a Service address: one new TCP connection per request, the
way a client behind kube-proxy is balanced, so routing changes show at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aviator.box.stats import Sample, Summary, summarize

Address = tuple[str, int]
Connector = Callable[[Address], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _open(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*address)


async def request_once(
    address: Address, path: str = "/", timeout_s: float = 5.0, connect: Connector = _open
) -> Sample:
    """GET path on a new connection; the latency includes connecting, as a client sees it."""
    start = time.monotonic()
    host, _port = address
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await connect(address)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status_line = await reader.readline()
                served_by = None
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "x-served-by":
                        served_by = value.strip()
                await reader.read()
            finally:
                writer.close()
        parts = status_line.split()
        ok = len(parts) >= 2 and parts[1] == b"200"
        error = None if ok else f"status {status_line.decode(errors='replace').strip()!r}"
        return Sample(time.monotonic(), time.monotonic() - start, ok, served_by, error)
    except (OSError, TimeoutError, ValueError) as err:
        return Sample(time.monotonic(), time.monotonic() - start, False, None, type(err).__name__)


class Load:
    """`concurrency` closed-loop clients against whatever address `target()` gives.

    Keeps the samples of the last `keep_s` seconds. `target()` may return None (not
    reachable yet): the clients then wait briefly and ask again.
    """

    def __init__(
        self,
        target: Callable[[], Address | None],
        concurrency: int = 4,
        timeout_s: float = 5.0,
        keep_s: float = 600.0,
        pause_s: float = 0.0,
        connect: Connector = _open,
    ) -> None:
        self.target = target
        self.connect = connect
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.keep_s = keep_s
        self.pause_s = pause_s
        self.samples: deque[Sample] = deque()
        self._sample_added = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Load:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._client(), name=f"load client {i}")
            for i in range(self.concurrency)
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []

    async def _client(self) -> None:
        while True:
            address = self.target()
            if address is None:
                await asyncio.sleep(0.2)
                continue
            sample = await request_once(address, timeout_s=self.timeout_s, connect=self.connect)
            self.samples.append(sample)
            self._sample_added.set()
            horizon = sample.at - self.keep_s
            while self.samples and self.samples[0].at < horizon:
                self.samples.popleft()
            if not sample.ok:
                await asyncio.sleep(0.05)  # do not spin on a refused connection
            elif self.pause_s:
                await asyncio.sleep(self.pause_s)

    def since(self, t: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= t]

    def summary(self, since: float = 0.0) -> Summary:
        return summarize(self.since(since))

    async def started_window(self, t: float, count: int, timeout_s: float) -> Summary:
        """The first `count` requests sent at or after `t`, once they have all ended
        (requests sent earlier are left out however late they end); TimeoutError if
        `count` of them have not ended within `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while len(started := [s for s in self.samples if s.at - s.latency_s >= t]) < count:
                self._sample_added.clear()
                await self._sample_added.wait()
        return summarize(sorted(started, key=lambda s: s.at - s.latency_s)[:count])

    def mark(self) -> float:
        return time.monotonic()
