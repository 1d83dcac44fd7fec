"""HTTP probes of pods: the one timing primitive the agent and the controller share.

The agent probes the pods of its node (keep-warm probes for idle pods, and the probe
fallback when eBPF cannot run); the controller probes every pod of a policy with
`latencySource: probe`. Both send their probes through an `HttpProber`, so a probe
means the same thing wherever it was sent:

- **What is timed**: one `GET http://<ip>:<port><path>`, from the moment its request
  headers are written on an open connection to the moment the response headers
  arrive: the pod's request latency plus one network round trip.
- **Keep-alive, not a connection per probe.** Aviator measures request latency: the
  time a pod takes to answer a request, first request bytes in to first response
  bytes out on its socket (the design, §5; docs/measurement.md). The eBPF program
  times exactly that on established connections, and the agent's keep-warm probes
  exist to give it requests to time. The agent's probe fallback and the controller's
  probe mode stand in for the eBPF program, so they must measure the same thing, or
  a pod's numbers would change with the source. Connection setup (the handshake, the
  listen backlog) is the kernel's and the network's work, not the pod's answer, so
  probes reuse connections (a target's probes go one after another over one
  connection), and when a connection has to be opened, its setup is not timed.
  Reuse also keeps probes light: no handshake and no TIME_WAIT socket per probe when
  thousands of pods are probed every interval. A slow pod is no less slow on a warm
  connection.
- **Failures**: a timeout (`timeout_s` for the whole probe, connecting included), a
  connection error or a status >= 500 is a failure. It is recorded as a sample AT
  the timeout value and counted as aborted, so a failing pod looks as slow as it
  behaves for a client that gives up after `timeout_s`, rather than unknown (unknown
  pods are kept serving); the eBPF program likewise records an abandoned request as
  a sample of the time it was open.

Results go into `ProbeCounters`, cumulative counters in the shape of the kernel's
per-endpoint counters, so the agent diffs its probes into windows like eBPF data and
the controller turns one round's counters into one window.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from dataclasses import dataclass, field, replace

import aiohttp

from aviator.latency.histogram import Histogram
from aviator.latency.schema import AppProtocol

log = logging.getLogger(__name__)

_MAX_BODY = 64 * 1024  # read and discard at most this much of a probe's response


def probe_url(ip: str, port: int, path: str) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A pod's address to probe, and the pod ("namespace/name").

    `protocol` is what the agent's eBPF program recognised on the endpoint (None: no
    request seen yet); the agent's keep-warm probes speak it (aviator.agent.prober).
    """

    ip: str
    port: int
    path: str
    pod: str
    protocol: AppProtocol | None = None

    @property
    def url(self) -> str:
        return probe_url(self.ip, self.port, self.path)


@dataclass(slots=True)
class ProbeCounters:
    """Cumulative results of the probes of one target (the kernel's counters' shape)."""

    hist: Histogram = field(default_factory=Histogram)
    sum_us: int = 0
    max_us: int = 0
    rif: int = 0  # probes in flight
    aborted: int = 0  # failed probes (each also a sample at the timeout)
    # The kernel counters' other fields: probes read their answer's status (a 5xx is an
    # error); `oldest_open_us` is the age of the oldest probe in flight, set by `frozen`
    # (the read) from `open_since` (perf_counter() starts of the probes in flight).
    statuses: int = 0
    errors: int = 0
    protocol: AppProtocol = "http1"
    oldest_open_us: int = 0
    keepwarm: int = 0  # never: in probe mode the probes are the measurement
    open_since: list[float] = field(default_factory=list)

    @property
    def buckets(self) -> list[int]:
        return self.hist.counts

    @property
    def count(self) -> int:
        return self.hist.count

    def record(self, latency_us: int) -> None:
        latency_us = max(0, latency_us)
        self.hist.record(latency_us)
        self.sum_us += latency_us
        self.max_us = max(self.max_us, latency_us)

    def begin(self) -> float:
        """A probe starts: in flight until `end` (returns its start, perf_counter())."""
        started = time.perf_counter()
        self.rif += 1
        self.open_since.append(started)
        return started

    def end(self, started: float, latency_us: int | None, timeout_us: int) -> None:
        """The probe begun at `started` is over: `latency_us` when it succeeded, None
        when it failed (a sample at the timeout, counted as aborted)."""
        self.rif -= 1
        self.open_since.remove(started)
        if latency_us is not None:
            self.record(latency_us)
        else:
            self.aborted += 1
            self.record(timeout_us)

    def frozen(self) -> ProbeCounters:
        """A copy as of now, with the oldest probe in flight's age."""
        oldest = min(self.open_since, default=None)
        age_us = 0 if oldest is None else max(1, int((time.perf_counter() - oldest) * 1e6))
        return replace(self, hist=self.hist.copy(), open_since=[], oldest_open_us=age_us)


async def _headers_sent(
    _session: aiohttp.ClientSession,
    ctx: types.SimpleNamespace,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    # The clock starts once the request is on an open connection (see the docstring).
    ctx.trace_request_ctx.sent_at = time.perf_counter()


class _Timing:
    __slots__ = ("sent_at",)

    def __init__(self) -> None:
        self.sent_at: float | None = None


class HttpProber:
    """Sends probes over keep-alive connections, at most `concurrency` at once."""

    def __init__(
        self,
        *,
        timeout_s: float,
        concurrency: int,
        user_agent: str,
        connections_per_host: int = 2,
        idle_s: float = 30.0,
    ) -> None:
        if timeout_s <= 0 or concurrency < 1:
            raise ValueError("timeout_s must be > 0 and concurrency >= 1")
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self._sem = asyncio.Semaphore(concurrency)
        self._per_host = connections_per_host
        self._idle_s = idle_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def timeout_us(self) -> int:
        return int(self.timeout_s * 1e6)

    @property
    def semaphore(self) -> asyncio.Semaphore:
        """The bound on probes at once (other probers of the same owner share it)."""
        return self._sem

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_headers_sent)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, limit_per_host=self._per_host, keepalive_timeout=self._idle_s
                ),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                auto_decompress=False,
                headers={"User-Agent": self.user_agent},
                trace_configs=[trace],
            )
        return self._session

    async def probe(self, target: ProbeTarget, counters: ProbeCounters) -> bool:
        """One probe of `target`, recorded into `counters`; True when it succeeded."""
        async with self._sem:
            session = self._session_or_new()
            timing = _Timing()
            ok = False
            latency_us = 0
            started = counters.begin()
            try:
                async with session.get(
                    target.url, allow_redirects=False, trace_request_ctx=timing
                ) as resp:
                    sent_at = timing.sent_at if timing.sent_at is not None else started
                    latency_us = int((time.perf_counter() - sent_at) * 1e6)
                    ok = resp.status < 500
                    counters.statuses += 1
                    counters.errors += int(not ok)
                    # Drain (bounded) so the connection can be reused.
                    await resp.content.read(_MAX_BODY)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("probe %s failed: %s", target.url, exc)
            finally:
                counters.end(started, latency_us if ok else None, self.timeout_us)
        return ok

    async def probe_times(self, target: ProbeTarget, n: int, counters: ProbeCounters) -> int:
        """`n` probes of `target` one after another (over one connection); returns
        how many failed."""
        failed = 0
        for _ in range(n):
            if not await self.probe(target, counters):
                failed += 1
        return failed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
