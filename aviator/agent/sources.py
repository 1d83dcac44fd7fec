"""Where the agent's latency data comes from: the BPF program, or its own probes.

Both are a `CounterSource`: cumulative per-endpoint counters (`read()`), so the rest
of the agent does not care which one runs. `open_source("auto")` tries eBPF and falls back to probing,
logging why eBPF is unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from aviator.agent.prober import NodeProber
from aviator.agent.targets import TargetKey
from aviator.agent.windows import CountersLike, EndpointKeyLike
from aviator.latency.schema import Source

log = logging.getLogger(__name__)

SourceChoice = Literal["auto", "ebpf", "probe"]


class CounterSource(Protocol):
    """Cumulative per-endpoint counters, read once per report interval; between
    intervals, the ages of open requests (`open_ages`: cheaper than a read)."""

    name: Source

    async def read(self) -> Iterable[tuple[EndpointKeyLike, CountersLike]]: ...

    async def open_ages(self, ips: Collection[str]) -> Iterable[tuple[EndpointKeyLike, int]]:
        """(endpoint, age in µs of its oldest open request) for the endpoints of `ips`
        with a request open."""
        ...

    async def maintain(self, pods: PodIps) -> MapState:
        """Prune what no local pod needs and say how full the maps are."""
        ...

    async def stats(self) -> dict[str, int]: ...

    def set_probes(
        self,
        ports: Mapping[TargetKey, Iterable[str]],
        addresses: Iterable[str],
        grpc: Iterable[TargetKey] = (),
    ) -> None:
        """What the kubelet probes ((pod IP, port) → paths; `grpc`: its gRPC probes'
        (pod IP, port)s) and the node's addresses, so the source can tell those requests
        apart (aviator.agent.kubelet)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class PodIps:
    """The node's pods as the source's upkeep needs them: `local` the IPs of its pods
    now; `departed` those of pods gone for at least `idle_s` with no successor;
    endpoints of other IPs idle for `idle_s` are pruned."""

    local: Collection[str]
    departed: Collection[str]
    idle_s: float


@dataclass(frozen=True)
class MapState:
    """What one upkeep pass found: maps that dropped data since the last pass (full),
    and what it removed."""

    full: tuple[str, ...] = ()
    pruned: dict[str, int] = field(default_factory=dict)


class BpfSource:
    """The kernel's counters; map reads run in a thread so the event loop keeps going."""

    name: Source = "ebpf"

    def __init__(self, bpf: object) -> None:
        from aviator.agent.bpf import BpfLatencySource

        assert isinstance(bpf, BpfLatencySource)
        self.bpf = bpf

    async def read(self) -> Iterable[tuple[EndpointKeyLike, CountersLike]]:
        return (await asyncio.to_thread(self.bpf.read)).items()

    async def open_ages(self, ips: Collection[str]) -> Iterable[tuple[EndpointKeyLike, int]]:
        return (await asyncio.to_thread(self.bpf.open_ages, ips)).items()

    async def maintain(self, pods: PodIps) -> MapState:
        def run() -> MapState:
            local = set(pods.local)
            done = self.bpf.prune(local.__contains__, pods.idle_s, pods.departed)
            pruned = {"endpoints": done.endpoints, "sockets": done.sockets}
            pruned["h2conns"], pruned["listeners"] = done.h2conns, done.listeners
            return MapState(self.bpf.full_maps(), pruned)

        return await asyncio.to_thread(run)

    async def stats(self) -> dict[str, int]:
        return await asyncio.to_thread(self.bpf.stats)

    def set_probes(
        self,
        ports: Mapping[TargetKey, Iterable[str]],
        addresses: Iterable[str],
        grpc: Iterable[TargetKey] = (),
    ) -> None:
        self.bpf.set_probes(ports, addresses, grpc)

    def close(self) -> None:
        self.bpf.close()


class ProbeSource:
    """The prober's own measurements (probe-only mode)."""

    name: Source = "probe"

    def __init__(self, prober: NodeProber) -> None:
        self.prober = prober

    async def read(self) -> Iterable[tuple[EndpointKeyLike, CountersLike]]:
        return self.prober.read().items()

    async def open_ages(self, ips: Collection[str]) -> Iterable[tuple[EndpointKeyLike, int]]:
        return [(k, c.oldest_open_us) for k, c in self.prober.read().items() if c.oldest_open_us]

    async def maintain(self, pods: PodIps) -> MapState:
        return MapState()

    async def stats(self) -> dict[str, int]:
        return {}

    def set_probes(
        self,
        ports: Mapping[TargetKey, Iterable[str]],
        addresses: Iterable[str],
        grpc: Iterable[TargetKey] = (),
    ) -> None:
        pass  # the prober's own requests are all it measures

    def close(self) -> None:
        pass


class SourceUnavailable(RuntimeError):
    """--latency-source ebpf was demanded and cannot run."""


async def open_source(
    choice: SourceChoice,
    prober: NodeProber,
    *,
    max_sockets: int,
    max_endpoints: int,
    max_h2_conns: int = 4096,
) -> tuple[CounterSource, str | None]:
    """The latency source to use, and why eBPF is not used (None when it is)."""
    if choice == "probe":
        return ProbeSource(prober), "probe mode requested (--latency-source probe)"
    try:
        from aviator.agent.bpf import BpfLatencySource, BpfUnavailable
    except ImportError as exc:  # a build of the agent without the BPF part
        reason = f"BPF support not installed: {exc}"
        if choice == "ebpf":
            raise SourceUnavailable(reason) from exc
        log.warning("eBPF unavailable (%s); measuring with HTTP probes instead", reason)
        return ProbeSource(prober), reason
    # Said before it starts: compiling takes seconds (minutes on a busy node), and an
    # agent killed meanwhile (its memory limit, its startup probe) leaves this line last.
    log.info("compiling and loading the eBPF program")
    began = time.monotonic()
    try:
        # Compiling with BCC takes seconds: keep the loop (health endpoints) responsive.
        bpf = await asyncio.to_thread(
            BpfLatencySource.load,
            max_sockets=max_sockets,
            max_endpoints=max_endpoints,
            max_h2_conns=max_h2_conns,
        )
    except BpfUnavailable as exc:
        if choice == "ebpf":
            raise SourceUnavailable(exc.reason) from exc
        log.warning("eBPF unavailable (%s); measuring with HTTP probes instead", exc.reason)
        return ProbeSource(prober), exc.reason
    log.info(
        "eBPF program loaded in %.1fs (send hook %s, receive hook %s)",
        time.monotonic() - began,
        bpf.send_hook,
        bpf.recv_hook,
    )
    return BpfSource(bpf), None
