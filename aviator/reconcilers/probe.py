"""Controller-side HTTP probes for policies with `latencySource: probe`.

Works with no agents at all: every evaluation, each eligible pod gets a few GET
requests (bounded concurrency across all pods, a per-request timeout). A timeout, a
connection error or a status >= 500 is a failure and is recorded as the timeout
itself, so failing pods look as slow as they behave for a client and the circuit
breaker can eject them. Results live in a sliding window of per-round histograms
per pod (keyed by IP:port), so p50/p99 come from the same histogram math as eBPF data.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from aviator.latency.histogram import Histogram

MAX_FAILURE_LOG = 64


@dataclass(frozen=True)
class ProbeTarget:
    ip: str
    port: int
    path: str = "/"

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class ProbeEstimate:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    samples: int
    failures: int
    age_s: float


@dataclass
class _Window:
    rounds: deque[tuple[float, Histogram, int]] = field(default_factory=deque)
    keep_s: float = 30.0

    def add(self, at: float, hist: Histogram, failures: int, keep_s: float) -> None:
        self.keep_s = keep_s
        self.rounds.append((at, hist, failures))
        self.age(at)

    def age(self, now: float) -> None:
        # Aged on read too: a target that is not probed for a while must not keep
        # reporting its old (e.g. slow) samples forever.
        while self.rounds and self.rounds[0][0] < now - self.keep_s:
            self.rounds.popleft()


class Prober:
    """Probes pods and keeps a window of results per target."""

    def __init__(
        self,
        *,
        concurrency: int = 32,
        timeout_s: float = 1.0,
        samples_per_round: int = 3,
        window_s: float = 30.0,
        forget_after_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sem = asyncio.Semaphore(concurrency)
        self.timeout_s = timeout_s
        self.samples_per_round = samples_per_round
        self.window_s = window_s
        self.forget_after_s = forget_after_s
        self._clock = clock
        self._windows: dict[ProbeTarget, _Window] = {}
        self._session: aiohttp.ClientSession | None = None

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No keep-alive: each probe pays connection setup like a new client would,
            # and a pod's slowness is not hidden behind a warm pooled connection.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _probe_once(self, target: ProbeTarget) -> tuple[int, bool]:
        """(latency µs, ok). Failures report the timeout as their latency."""
        start = time.perf_counter()
        timeout_us = int(self.timeout_s * 1e6)
        try:
            async with (
                self._sem,
                self._session_or_new().get(
                    target.url,
                    timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                    allow_redirects=False,
                ) as resp,
            ):
                await resp.read()
                ok = resp.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return timeout_us, False
        elapsed = int((time.perf_counter() - start) * 1e6)
        return (elapsed if ok else timeout_us), ok

    async def _probe_target(self, target: ProbeTarget, keep_s: float) -> None:
        hist = Histogram()
        failures = 0
        for _ in range(self.samples_per_round):
            value, ok = await self._probe_once(target)
            hist.record(max(0, value))
            failures += 0 if ok else 1
        self._windows.setdefault(target, _Window()).add(self._clock(), hist, failures, keep_s)

    async def probe_round(
        self, targets: Iterable[ProbeTarget], window_s: float | None = None
    ) -> None:
        """One round over `targets` (concurrent, bounded). Their estimates cover the
        last `window_s` (default: the prober's). Several policies share one prober, so
        targets are forgotten only when nobody has probed them for `forget_after_s`."""
        wanted = set(targets)
        keep = window_s if window_s is not None else self.window_s
        await asyncio.gather(*(self._probe_target(t, keep) for t in wanted))
        horizon = self._clock() - self.forget_after_s
        for target in [
            t for t, w in self._windows.items() if not w.rounds or w.rounds[-1][0] < horizon
        ]:
            del self._windows[target]

    def _rounds(self, target: ProbeTarget) -> deque[tuple[float, Histogram, int]]:
        """The target's rounds still inside its window (aged as of now)."""
        window = self._windows.get(target)
        if window is None:
            return deque()
        window.age(self._clock())
        return window.rounds

    def histogram(self, target: ProbeTarget) -> Histogram:
        return Histogram.merge_all(h for _, h, _ in self._rounds(target))

    def estimate(self, target: ProbeTarget) -> ProbeEstimate | None:
        rounds = self._rounds(target)
        if not rounds:
            return None
        hist = Histogram.merge_all(h for _, h, _ in rounds)
        qs = hist.quantiles((0.5, 0.9, 0.99))
        if qs is None:
            return None
        p50, p90, p99 = qs
        return ProbeEstimate(
            p50_ms=p50 / 1000.0,
            p90_ms=p90 / 1000.0,
            p99_ms=p99 / 1000.0,
            samples=hist.count,
            failures=sum(f for _, _, f in rounds),
            age_s=self._clock() - rounds[-1][0],
        )
