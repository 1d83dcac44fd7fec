"""The agent's probes of its node's pods: keep-warm for idle pods, and the probe-only
latency source.

Keep-warm: a pod that receives no traffic (for instance because it is not selected)
produces no samples, so nobody would notice it got fast again. Each report interval
the agent asks for `min_samples - observed` GETs to every target that saw fewer
samples; the eBPF program measures those requests like any others and counts them as
keep-warm (requests from the agent's own connections: `EndpointWindow.keepwarm`); the
prober's own timings are ignored.

Keep-warm probes speak the protocol the eBPF program saw on the endpoint
(`ProbeTarget.protocol`, `keep_warm_protocol`): an HTTP/1.1 GET of probePath when it
saw HTTP/1.1 or nothing yet; an h2c GET of probePath for `h2`; for `grpc` a unary call
(aviator.latency.h2probing: probePath when it names a gRPC method, else the standard
health check). An `opaque` endpoint (TLS, or framing the program does not know) gets
no keep-warm probes: nothing the agent could send would be an answerable request.

Probe mode (no eBPF): the prober IS the latency source. Each target gets
`min_samples` probes per interval and the prober keeps cumulative counters per target
in the same shape as the kernel maps (`read()`), so the agent diffs them into windows
the same way. What a probe times, keep-alive, and how a failure is recorded (at the
timeout value, counted as aborted) are the shared probe's: `aviator.latency.probing`.

Load is bounded three ways: a token bucket over all probes (`rate_per_s`), a limit
on concurrent probes, and at most one running batch per target (a batch's probes go
one after another over one keep-alive connection).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from aviator.agent.targets import TargetKey
from aviator.latency.h2probing import H2Prober, names_grpc_method
from aviator.latency.probing import HttpProber, ProbeCounters, ProbeTarget
from aviator.latency.schema import AppProtocol, Role

KeepWarm = Literal["http1", "h2", "grpc"]


def keep_warm_protocol(seen: AppProtocol | None, path: str = "/") -> KeepWarm | None:
    """What a keep-warm probe of an endpoint speaks, given what the eBPF program saw on
    it (None: nothing yet) and the policy's probePath; None: no keep-warm probes
    (`opaque`). An endpoint that served nothing yet is probed in gRPC when the path can
    only name a gRPC method, else in HTTP/1.1: a gRPC server answers an HTTP/1.1 request
    at once with a GOAWAY, a sample that is not its latency."""
    if seen is None and names_grpc_method(path):
        return "grpc"
    if seen is None or seen == "http1":
        return "http1"
    if seen == "opaque":
        return None
    return seen


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


@dataclass
class ProbeStats:
    sent: int = 0
    failed: int = 0
    skipped_busy: int = 0  # a target's previous batch was still running
    skipped_opaque: int = 0  # keep-warm wanted, but the endpoint's protocol is opaque
    rate_limited: int = 0  # probes not sent for lack of tokens


class NodeProber:
    """Sends probe batches to the targeted pods of this node; keeps cumulative
    results per target."""

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
        self._http = HttpProber(
            timeout_s=timeout_s, concurrency=concurrency, user_agent="aviator-agent-probe"
        )
        self._h2 = H2Prober(
            timeout_s=timeout_s, semaphore=self._http.semaphore, user_agent="aviator-agent-probe"
        )
        self._bucket = TokenBucket(rate_per_s, burst if burst is not None else rate_per_s, clock)
        self._counters: dict[TargetKey, ProbeCounters] = {}
        self._running: dict[TargetKey, asyncio.Task[None]] = {}
        self.stats = ProbeStats()

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
        every target gets `min_samples`). Each batch speaks `keep_warm_protocol` of the
        target's protocol; opaque targets get none. Returns the number of probes started.

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
            speak = keep_warm_protocol(target.protocol, target.path)
            if speak is None:
                self.stats.skipped_opaque += 1
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
                self._batch(target, speak, granted, counters), name=f"probe-{target.url}"
            )
            self._running[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
            started += granted
        return started

    def _finished(self, key: TargetKey, _task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)

    async def _batch(
        self, target: ProbeTarget, speak: KeepWarm, n: int, counters: ProbeCounters
    ) -> None:
        self.stats.sent += n
        if speak == "http1":
            failed = await self._http.probe_times(target, n, counters)
        else:
            failed = await self._h2.probe_times(target, n, counters, grpc=speak == "grpc")
        self.stats.failed += failed  # after the await: other batches add meanwhile

    async def wait_idle(self) -> None:
        """Wait for every running batch (tests, shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*list(self._running.values()), return_exceptions=True)
        await self._http.close()
