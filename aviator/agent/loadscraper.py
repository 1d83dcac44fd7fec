"""Reading the loads pods report: the agent's scrapes of their gauges, bounded.

`LoadScraper.round(targets)` reads every target (aviator.agent.loads) once over plain
HTTP and keeps what it read; the agent starts a round at its report tick when none is
running (so at most one per report interval, never two at once) and sends, with every
snapshot, the values of the last round (`current`). Bounds on the cost, whatever the
pods do: at most `concurrency` scrapes at once, each within `timeout_s` (connect to last
byte), each body at most `max_bytes` (a larger one is a failure, not read further), no
compression asked for. A target that failed, or whose text lacks a wanted metric, has no
value for it after the round: a pod whose load cannot be read is ranked by its requests
in flight (aviator.selection.modes), never as idle.

Only the pods a policy asks it of are read: no policy naming a load, no scrape at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiohttp

from aviator.agent.loads import LoadTarget, gauge_values
from aviator.latency.schema import MAX_LOADS, PodLoad

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 0.5
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_BYTES = 1024 * 1024


class TooLarge(Exception):
    """A body over the size limit."""


class LoadScraper:
    """Scrapes the load gauges of the targets it is given, one round at a time."""

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.max_bytes = max_bytes
        self.scrapes = 0
        self.failures = 0
        self._values: tuple[PodLoad, ...] = ()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def current(self) -> tuple[PodLoad, ...]:
        """What the last finished round read."""
        return self._values

    def start(self, targets: Sequence[LoadTarget]) -> None:
        """Start a round in the background unless one is running; no targets: forget
        what was read (nobody asks for it any more)."""
        if not targets:
            self._values = ()
            return
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.get_running_loop().create_task(self._round_logged(targets))

    async def _round_logged(self, targets: Sequence[LoadTarget]) -> None:
        try:
            await self.round(targets)
        except Exception:  # a bug here must not leave the agent without reports
            log.exception("reading the pods' loads failed")

    async def round(self, targets: Sequence[LoadTarget]) -> tuple[PodLoad, ...]:
        """Scrape every target once (bounded, see the module docstring); keep and
        return what was read."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(target: LoadTarget) -> list[PodLoad]:
            async with gate:
                values = await self._scrape(target)
            return [PodLoad(target.ip, m, v) for m, v in sorted(values.items())]

        found = await asyncio.gather(*(one(t) for t in targets))
        loads: dict[tuple[str, str], PodLoad] = {}
        for batch in found:
            for load in batch:
                loads.setdefault((load.ip, load.metric), load)
        self._values = tuple(loads.values())[:MAX_LOADS]
        return self._values

    async def _scrape(self, target: LoadTarget) -> dict[str, float]:
        self.scrapes += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                text = await self._fetch(target.url)
        except (aiohttp.ClientError, OSError, TimeoutError, TooLarge, UnicodeDecodeError) as exc:
            self.failures += 1
            log.debug("load of %s not read: %s", target.url, exc or type(exc).__name__)
            return {}
        return gauge_values(text, target.metrics)

    async def _fetch(self, url: str) -> str:
        session = self._session_or_new()
        async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status != 200:
                raise aiohttp.ClientError(f"status {resp.status}")
            if (resp.content_length or 0) > self.max_bytes:
                raise TooLarge(f"{resp.content_length} bytes")
            body = bytearray()
            while chunk := await resp.content.read(64 * 1024):
                body += chunk
                if len(body) > self.max_bytes:
                    raise TooLarge(f"over {self.max_bytes} bytes")
            return body.decode("utf-8")

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                auto_decompress=False,
                headers={"User-Agent": "aviator-agent-load"},
            )
        return self._session

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
