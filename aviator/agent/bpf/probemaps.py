"""Writing what the program needs to tell the kubelet's probes apart (bpf/latency.h,
ROLE_PROBE): `probe_ports` (per pod endpoint, the hashes of its probes' paths, and
whether its gRPC probes reach it) and `node_addrs` (the node's own addresses).

`ProbeMaps.sync` makes the maps hold exactly what it is given, writing only what
changed since its previous call (the agent calls it every report interval). What does
not fit is left out and counted: endpoints beyond MAX_PROBE_PORTS, paths beyond
PROBE_PATHS per endpoint, paths longer than PROBE_PATH_MAX bytes (their requests are
then traffic), addresses beyond MAX_NODE_ADDRS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aviator.agent.bpf.abi import LatencyAbi
from aviator.agent.bpf.model import ip_to_raw16
from aviator.agent.kubelet import path_hash


@dataclass
class ProbeMapStats:
    endpoints: int = 0  # endpoints in probe_ports
    addresses: int = 0  # addresses in node_addrs
    left_out: int = 0  # endpoints, paths or addresses that did not fit (last sync)


class ProbeMaps:
    """The two maps of one loaded program."""

    def __init__(self, bpf: Any, abi: LatencyAbi) -> None:
        self._bpf = bpf
        const = abi.header.const
        self._offset = const("PATH_HASH_OFFSET")
        self._prime = const("PATH_HASH_PRIME")
        self._max_len = const("PROBE_PATH_MAX")
        self._paths = const("PROBE_PATHS")
        self._max_ports = const("MAX_PROBE_PORTS")
        self._max_addrs = const("MAX_NODE_ADDRS")
        self._ports: dict[tuple[str, int], tuple[tuple[int, ...], bool]] = {}
        self._addrs: set[str] = set()
        self.stats = ProbeMapStats()

    def hashes(self, paths: Iterable[str]) -> tuple[int, ...]:
        """The distinct hashes of `paths` the program can match, sorted."""
        out = {
            path_hash(p, offset=self._offset, prime=self._prime, max_len=self._max_len)
            for p in paths
        }
        return tuple(sorted(h for h in out if h is not None))

    def sync(
        self,
        ports: Mapping[tuple[str, int], Iterable[str]],
        addresses: Iterable[str],
        grpc: Iterable[tuple[str, int]] = (),
    ) -> None:
        """Make the maps hold `ports` ((pod IP, port) → probe paths), `grpc` (the
        (pod IP, port)s of gRPC probes) and `addresses`."""
        left_out = 0
        grpc_keys = set(grpc)
        want: dict[tuple[str, int], tuple[tuple[int, ...], bool]] = {}
        for key in sorted(set(ports) | grpc_keys):
            paths = list(ports.get(key, ()))
            hashes = self.hashes(paths)
            left_out += len(set(paths)) - len(hashes)
            if len(hashes) > self._paths:
                left_out += len(hashes) - self._paths
                hashes = hashes[: self._paths]
            if len(want) >= self._max_ports:
                left_out += 1
                continue
            want[key] = (hashes, key in grpc_keys)
        table = self._bpf[b"probe_ports"]
        for key in [k for k in self._ports if k not in want]:
            table.__delitem__(self._port_key(table, key))
            del self._ports[key]
        for key, entry in want.items():
            if self._ports.get(key) == entry:
                continue
            hashes, by_grpc = entry
            leaf = table.Leaf()
            for i, h in enumerate(hashes):
                leaf.hashes[i] = h
            leaf.count = len(hashes)
            leaf.grpc = int(by_grpc)
            table[self._port_key(table, key)] = leaf
            self._ports[key] = entry
        addrs = sorted(set(addresses))
        if len(addrs) > self._max_addrs:
            left_out += len(addrs) - self._max_addrs
            addrs = addrs[: self._max_addrs]
        table = self._bpf[b"node_addrs"]
        for addr in self._addrs - set(addrs):
            table.__delitem__(self._addr_key(table, addr))
        for addr in set(addrs) - self._addrs:
            table[self._addr_key(table, addr)] = table.Leaf(1)
        self._addrs = set(addrs)
        self.stats = ProbeMapStats(len(self._ports), len(self._addrs), left_out)

    @staticmethod
    def _port_key(table: Any, key: tuple[str, int]) -> Any:
        k = table.Key()
        for i, byte in enumerate(ip_to_raw16(key[0])):
            k.addr[i] = byte
        k.port = key[1]
        return k

    @staticmethod
    def _addr_key(table: Any, addr: str) -> Any:
        k = table.Key()
        for i, byte in enumerate(ip_to_raw16(addr)):
            k.addr[i] = byte
        return k
