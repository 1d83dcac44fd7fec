"""`BpfLatencySource`: the agent's handle on the loaded latency program."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping

from aviator.agent.bpf.iterend import KernelEnder, load_kernel_ender
from aviator.agent.bpf.loader import LoadedProgram, load_program
from aviator.agent.bpf.model import EndpointCounters, EndpointKey, SocketState
from aviator.agent.bpf.probemaps import ProbeMaps
from aviator.agent.bpf.reader import (
    count_entries,
    read_counters,
    read_endpoints,
    read_server_cut,
    read_socket,
    read_sockets,
    with_oldest_open,
)
from aviator.agent.bpf.runstats import RunStatsEnabler, prog_run_stats
from aviator.agent.bpf.seed import Listener, listening_sockets
from aviator.agent.bpf.tracked import PruneStats, TrackedEndpoints, open_starts

# Maps whose being full leaves requests unmeasured, and the counter that says so.
_FULL_COUNTERS = {"endpoints": "endpoints_full_drops", "h2conns": "h2_conns_full_drops"}


class BpfLatencySource:
    """Per-endpoint request latency measured in the kernel (see bpf/latency.bpf.c).

    `load()` compiles and attaches the program, seeds the listening sockets of every
    network namespace, then lets the program adopt sockets older than itself.
    `read()` returns cumulative counters, decoding only the endpoints that changed
    (aviator.agent.bpf.tracked); nothing is ever reset in the kernel. `prune()` removes
    what no local pod needs. Not thread-safe: one call at a time.
    """

    def __init__(
        self,
        program: LoadedProgram,
        *,
        max_sockets: int,
        max_endpoints: int,
        max_h2_conns: int = 4096,
    ) -> None:
        self._program = program
        self._max_sockets = max_sockets
        self._max_endpoints = max_endpoints
        self._max_h2_conns = max_h2_conns
        self._run_stats: RunStatsEnabler | None = None
        self._closed = False
        self.probe_maps = ProbeMaps(program.bpf, program.abi)
        self.tracked = TrackedEndpoints()
        self._drops = {name: 0 for name in _FULL_COUNTERS}

    @classmethod
    def load(
        cls,
        *,
        max_sockets: int = 65536,
        max_endpoints: int = 16384,
        max_listeners: int = 16384,
        max_h2_conns: int = 4096,
        listeners: set[Listener] | None = None,
        allow_raw_send: bool = True,
        allow_raw_recv: bool = True,
    ) -> BpfLatencySource:
        """Load and attach, or raise BpfUnavailable(reason).

        `listeners` replaces the /proc scan (tests); by default every network
        namespace's listening TCP sockets are seeded. `allow_raw_send=False` forces
        the `sock:sock_send_length` send hook (the fallback for older kernels);
        `allow_raw_recv=False` attaches tcp_probe as a classic tracepoint.
        """
        if min(max_sockets, max_endpoints, max_listeners, max_h2_conns) < 1:
            raise ValueError("map sizes must be positive")
        program = load_program(
            max_sockets=max_sockets,
            max_endpoints=max_endpoints,
            max_listeners=max_listeners,
            max_h2_conns=max_h2_conns,
            allow_raw_send=allow_raw_send,
            allow_raw_recv=allow_raw_recv,
        )
        try:
            program.seed_listeners(listening_sockets() if listeners is None else listeners)
            program.set_agent(os.getpid())
            program.start_adopting()
        except BaseException:
            program.close()
            raise
        return cls(
            program,
            max_sockets=max_sockets,
            max_endpoints=max_endpoints,
            max_h2_conns=max_h2_conns,
        )

    @property
    def send_hook(self) -> str:
        """Which hook marks sends: the raw tracepoint or the sock_send_length fallback."""
        return self._program.send_hook

    @property
    def recv_hook(self) -> str:
        """Which hook marks received data: tcp_probe as a raw or a classic tracepoint."""
        return self._program.recv_hook

    def read(self) -> dict[EndpointKey, EndpointCounters]:
        """Cumulative snapshot of every endpoint in the map, with the age of each
        one's oldest open request (`oldest_open_us`, against the program's clock)."""
        bpf, abi = self._program.bpf, self._program.abi
        counters = self.tracked.refresh(bpf, abi)
        oldest = open_starts(bpf, abi)
        # bpf_ktime_get_ns is CLOCK_MONOTONIC.
        return with_oldest_open(counters, oldest, time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def read_all(self) -> dict[EndpointKey, EndpointCounters]:
        """Every endpoint of the map decoded, without ages: what each read cost before
        reads went by change (benchmarks and tests compare the two)."""
        return read_endpoints(self._program.bpf, self._program.abi)

    def open_ages(self, ips: Collection[str]) -> dict[EndpointKey, int]:
        """The age (µs) of the oldest open request of each endpoint of `ips` that has
        one: the sockets map only, no endpoint decoded (the urgent look)."""
        if not ips:
            return {}
        starts = open_starts(self._program.bpf, self._program.abi, ips)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return {key: max(0, now - start) // 1000 for key, start in starts.items()}

    def prune(
        self, is_local_pod: Callable[[str], bool], idle_s: float, departed: Collection[str] = ()
    ) -> PruneStats:
        """Remove endpoints and connections no local pod needs (see tracked.py)."""
        return self.tracked.prune(
            self._program.bpf,
            self._program.abi,
            is_local_pod=is_local_pod,
            idle_s=idle_s,
            departed=departed,
        )

    def full_maps(self) -> tuple[str, ...]:
        """The maps that dropped a sample or a connection since the last call (full):
        requests of endpoints or HTTP/2 connections not in them go unmeasured."""
        table = self._program.bpf[b"counters"]
        names = self._program.abi.counter_names
        out: list[str] = []
        for name, counter in _FULL_COUNTERS.items():
            n = int(table.sum(table.Key(names.index(counter))).value)
            if n > self._drops[name]:
                out.append(name)
            self._drops[name] = n
        return tuple(out)

    def sockets(self) -> list[SocketState]:
        """Every connection the program tracks, with its request state."""
        return read_sockets(self._program.bpf, self._program.abi)

    def socket(self, sk: int) -> SocketState | None:
        """One connection's current state (None once it is closed)."""
        return read_socket(self._program.bpf, self._program.abi, sk)

    def kernel_ender(self) -> KernelEnder:
        """Ends a quiet connection in one step inside the kernel (bpf/handoff.h), for
        the hand-off; BpfUnavailable (with the reason) where this kernel cannot."""
        return load_kernel_ender(self._program)

    def server_cut(self, sk: int) -> int | None:
        """Where the server's bytes of one HTTP/2 connection stop (0: between frames);
        None when no HTTP/2 is parsed on it (see read_server_cut)."""
        return read_server_cut(self._program.bpf, sk)

    def set_probes(
        self,
        ports: Mapping[tuple[str, int], Iterable[str]],
        addresses: Iterable[str],
        grpc: Iterable[tuple[str, int]] = (),
    ) -> None:
        """What the kubelet probes ((pod IP, port) → paths) and the node's addresses:
        requests from those addresses to those ports and paths are the endpoint's
        probes (role `probe`), not its traffic; so are the HTTP/2 streams from those
        addresses to the `grpc` (pod IP, port)s on connections not the agent's (see
        aviator.agent.kubelet)."""
        self.probe_maps.sync(ports, addresses, grpc)

    def stats(self) -> dict[str, int]:
        """Event counters and map occupancy (reads the socket map in batches)."""
        out = read_counters(self._program.bpf, self._program.abi)
        out["probe_endpoints"] = self.probe_maps.stats.endpoints
        out["probe_node_addresses"] = self.probe_maps.stats.addresses
        out["probe_entries_left_out"] = self.probe_maps.stats.left_out
        out["sockets_tracked"] = count_entries(self._program.bpf, "sockets", batch=True)
        out["sockets_capacity"] = self._max_sockets
        out["endpoints_tracked"] = len(self.tracked)
        out["endpoints_capacity"] = self._max_endpoints
        out["endpoints_read_last"] = self.tracked.last.decoded
        out["h2conns_tracked"] = count_entries(self._program.bpf, "h2conns")
        out["h2conns_capacity"] = self._max_h2_conns
        pruned = self.tracked.pruned
        out["endpoints_pruned"] = pruned.endpoints
        out["sockets_pruned"] = pruned.sockets
        out["h2conns_pruned"] = pruned.h2conns
        out["listeners_pruned"] = pruned.listeners
        return out

    def enable_run_stats(self) -> None:
        """Ask the kernel to count BPF run time (off by default: it costs a little)."""
        if self._run_stats is None:
            self._run_stats = RunStatsEnabler()

    def disable_run_stats(self) -> None:
        if self._run_stats is not None:
            self._run_stats.close()
            self._run_stats = None

    def run_stats(self) -> dict[str, tuple[int, int]]:
        """(run count, run time ns) per program, counted while run stats are enabled."""
        out: dict[str, tuple[int, int]] = {}
        for name, fd in self._program.prog_fds().items():
            s = prog_run_stats(fd)
            out[name] = (s.run_cnt, s.run_time_ns)
        return out

    def detach(self) -> None:
        """Stop measuring without unloading (maps are kept); `attach()` resumes."""
        self._program.detach()

    def attach(self) -> None:
        self._program.attach()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._run_stats is not None:
            self._run_stats.close()
            self._run_stats = None
        self._program.close()

    def __enter__(self) -> BpfLatencySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
