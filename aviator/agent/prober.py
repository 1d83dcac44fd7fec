"""HTTP probes of local pods: keep-warm for idle pods, and the probe-only latency source.

Keep-warm: a pod that receives no traffic (for instance because it is not selected)
produces no samples, so nobody would notice it got fast again. Each report interval
the agent asks for `min_samples - observed` GETs to every target that saw fewer
samples; the eBPF program measures those requests like any others, and the prober's
own timings are ignored.

Probe mode (no eBPF): the prober IS the latency source. Each target gets
`min_samples` probes per interval and the prober keeps cumulative counters per target
in the same shape as the kernel maps (`read()`), so the agent diffs them into windows
the same way. A probe's latency is the time from sending the request to receiving
the response headers. A timeout, a connection error or a status >= 500 counts as
aborted and is recorded at the timeout value, so a failing pod looks as slow as it
behaves for a client rather than unknown.

Load is bounded three ways: a token bucket over all probes (`rate_per_s`), a limit
on concurrent probes, and at most one running batch per target (a batch's probes go
one after another over one keep-alive connection).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from aviator.agent.targets import ProbeTarget, TargetKey
from aviator.latency.histogram import Histogram
from aviator.latency.schema import Role

log = logging.getLogger(__name__)

_MAX_BODY = 64 * 1024  # read and discard at most this much of a probe's response


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up (pure; injectable clock)."""

    def __init__(
        self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self, wanted: int) -> int:
        """Take up to `wanted` whole tokens; returns how many were granted."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return max(0, granted)


@dataclass(frozen=True, slots=True)
class ProbeKey:
    """A probed endpoint, in the shape of aviator.agent.bpf.EndpointKey."""

    ip: str
    port: int
    role: Role = "server"


@dataclass(slots=True)
class ProbeCounters:
    """Cumulative results for one target (the shape of the kernel's counters)."""

    hist: Histogram = field(default_factory=Histogram)
    sum_us: int = 0
    max_us: int = 0
    rif: int = 0
    aborted: int = 0

    @property
    def buckets(self) -> list[int]:
        return self.hist.counts

    @property
    def count(self) -> int:
        return self.hist.count

    def record(self, latency_us: int) -> None:
        self.hist.record(latency_us)
        self.sum_us += latency_us
        self.max_us = max(self.max_us, latency_us)

    def frozen(self) -> ProbeCounters:
        return ProbeCounters(self.hist.copy(), self.sum_us, self.max_us, self.rif, self.aborted)


@dataclass
class ProbeStats:
    sent: int = 0
    failed: int = 0
    skipped_busy: int = 0  # a target's previous batch was still running
    rate_limited: int = 0  # probes not sent for lack of tokens


class Prober:
    """Sends probe batches to targets; keeps cumulative results per target."""

    def __init__(
        self,
        *,
        min_samples: int = 3,
        timeout_s: float = 2.0,
        concurrency: int = 16,
        rate_per_s: float = 100.0,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_samples = min_samples
        self.timeout_s = timeout_s
        self._sem = asyncio.Semaphore(concurrency)
        self._bucket = TokenBucket(rate_per_s, burst if burst is not None else rate_per_s, clock)
        self._counters: dict[TargetKey, ProbeCounters] = {}
        self._running: dict[TargetKey, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.stats = ProbeStats()

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=2, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                auto_decompress=False,
                headers={"User-Agent": "aviator-agent-probe"},
            )
        return self._session

    # --- the probe-mode latency source ------------------------------------------------

    def read(self) -> dict[ProbeKey, ProbeCounters]:
        """Cumulative counters per target (copies), like BpfLatencySource.read()."""
        return {ProbeKey(ip, port): c.frozen() for (ip, port), c in self._counters.items()}

    # --- scheduling ---------------------------------------------------------------------

    def schedule(
        self,
        targets: Mapping[TargetKey, ProbeTarget],
        observed: Mapping[TargetKey, int] | None = None,
    ) -> int:
        """Start batches for targets with fewer than `min_samples` observed samples in
        the last window (`observed` None = probe-only mode: nothing else measures, so
        every target gets `min_samples`). Returns the number of probes started.

        Counters of targets no longer wanted (and not running) are dropped.
        """
        for key in [k for k in self._counters if k not in targets and k not in self._running]:
            del self._counters[key]
        started = 0
        for key, target in targets.items():
            seen = 0 if observed is None else observed.get(key, 0)
            wanted = self.min_samples - seen
            if wanted <= 0:
                continue
            if key in self._running:
                self.stats.skipped_busy += 1
                continue
            granted = self._bucket.take(wanted)
            self.stats.rate_limited += wanted - granted
            if granted == 0:
                continue
            counters = self._counters.setdefault(key, ProbeCounters())
            task = asyncio.get_running_loop().create_task(
                self._batch(target, granted, counters), name=f"probe-{target.url}"
            )
            self._running[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
            started += granted
        return started

    def _finished(self, key: TargetKey, _task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)

    async def _batch(self, target: ProbeTarget, n: int, counters: ProbeCounters) -> None:
        for _ in range(n):
            async with self._sem:
                await self._probe_once(target, counters)

    async def _probe_once(self, target: ProbeTarget, counters: ProbeCounters) -> None:
        session = self._session_or_new()
        counters.rif += 1
        self.stats.sent += 1
        t0 = time.perf_counter()
        ok = False
        latency_us = 0
        try:
            async with session.get(target.url, allow_redirects=False) as resp:
                latency_us = int((time.perf_counter() - t0) * 1e6)
                ok = resp.status < 500
                # Drain (bounded) so the keep-alive connection can be reused.
                await resp.content.read(_MAX_BODY)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("probe %s failed: %s", target.url, exc)
        finally:
            counters.rif -= 1
        if ok:
            counters.record(latency_us)
        else:
            self.stats.failed += 1
            counters.aborted += 1
            counters.record(int(self.timeout_s * 1e6))

    async def wait_idle(self) -> None:
        """Wait for every running batch (tests, shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*list(self._running.values()), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
