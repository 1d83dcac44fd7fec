"""The program's maps kept small and read by change: the endpoints it marked since the
last read, the open requests of the pods that have a threshold, and pruning of what no
longer belongs to a local pod.

`TrackedEndpoints` keeps a decoded copy of the `endpoints` map. A read drains the
`ep_dirty` map (the keys the program marked since the previous drain, in one
BPF_MAP_LOOKUP_AND_DELETE_BATCH) and looks up only those, plus the ones marked the read
before: the program marks an endpoint when it looks it up to change it, so a change can
land just after the drain that took its mark (the next read sees it). Every `resync_s`
it reads the whole map instead (nothing is missed for longer even if a mark was lost).
So a read costs what changed, not what the map holds: a node with 10,000 idle
endpoints and 10 busy ones decodes 10 histograms per interval, not 10,000.

Pruning (`prune`): an endpoint whose IP is not a local pod's and whose counters have not
changed for `idle_s` leaves the map (a pod's final requests have long been read by
then; an endpoint that is busy again comes back on its next sample, as a new baseline).
Connections still in `sockets` whose endpoint is the IP of a pod that left the node, and
are idle, leave it too, as do that IP's `listeners` (the program adds listening
addresses and never removes one), and `h2conns` entries whose connection is no longer in `sockets`
(its close was missed, or the socket's entry was evicted) are removed at the second
pass that finds them so. Pruning is what keeps the maps bounded under pod churn: the
program itself deletes nothing from `endpoints`.

`open_starts` is the cheap read of open-request ages: one batched walk of `sockets`,
keeping the connections with a request or HTTP/2 stream open (of the IPs asked about),
and a lookup of `h2conns` for those with streams only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from aviator.agent.bpf.abi import LatencyAbi
from aviator.agent.bpf.model import EndpointCounters, EndpointKey, ip_from_raw16
from aviator.agent.bpf.reader import decode_endpoint, decode_key

DEFAULT_RESYNC_S = 60.0


def _batch(table: Any, *, delete: bool = False) -> Iterable[tuple[Any, Any]]:
    """A map's entries in a few batch calls (deleting them when `delete`); per key where
    the kernel has no batch operations (BCC raises a bare Exception)."""
    try:
        if delete:
            return list(table.items_lookup_and_delete_batch())
        return list(table.items_lookup_batch())
    except Exception:
        items = list(table.items())
        if delete:
            for key, _ in items:
                with contextlib.suppress(KeyError):
                    del table[key]
        return items


def _u64(key: Any) -> int:
    # Batch reads give u64 keys as ints, item walks as ctypes values.
    return key if isinstance(key, int) else int(key.value)


@dataclass
class ReadStats:
    """What the last read cost: endpoints decoded, and whether it was a full read."""

    decoded: int = 0
    full: bool = False
    reads: int = 0
    full_reads: int = 0


@dataclass
class PruneStats:
    """Entries removed so far, per map."""

    endpoints: int = 0
    sockets: int = 0
    h2conns: int = 0
    listeners: int = 0


class TrackedEndpoints:
    """A decoded copy of `endpoints`, current as of the last `refresh`."""

    def __init__(
        self, *, resync_s: float = DEFAULT_RESYNC_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.resync_s = resync_s
        self._clock = clock
        self._entries: dict[EndpointKey, EndpointCounters] = {}
        self._raw: dict[EndpointKey, bytes] = {}  # the kernel's key bytes
        self._changed: dict[EndpointKey, float] = {}  # when its counters last moved
        self._previous: list[bytes] = []  # keys marked at the previous read
        self._next_full = 0.0
        self._h2_orphans: set[int] = set()  # seen without a socket at the last pass
        self.last = ReadStats()
        self.pruned = PruneStats()

    def __len__(self) -> int:
        return len(self._entries)

    def refresh(self, bpf: Any, abi: LatencyAbi) -> dict[EndpointKey, EndpointCounters]:
        """The current counters of every endpoint (the returned dict is this object's:
        read it, do not change it)."""
        now = self._clock()
        table, dirty = bpf[b"endpoints"], bpf[b"ep_dirty"]
        if now >= self._next_full:
            self._full(table, dirty, abi, now)
            self._next_full = now + self.resync_s
            return self._entries
        marked = [bytes(k) for k, _ in _batch(dirty, delete=True)]
        decoded = 0
        for raw in dict.fromkeys(marked + self._previous):
            try:
                value = table[table.Key.from_buffer_copy(raw)]
            except KeyError:
                self._forget_raw(table, raw, abi)
                continue
            entry = decode_endpoint(abi, table.Key.from_buffer_copy(raw), value)
            decoded += 1
            if entry is None:
                continue
            key, counters = entry
            if self._entries.get(key) != counters:
                self._changed[key] = now
            self._entries[key] = counters
            self._raw[key] = raw
        self._previous = marked
        self.last = ReadStats(decoded, False, self.last.reads + 1, self.last.full_reads)
        return self._entries

    def _full(self, table: Any, dirty: Any, abi: LatencyAbi, now: float) -> None:
        _batch(dirty, delete=True)  # everything is read below
        entries: dict[EndpointKey, EndpointCounters] = {}
        raws: dict[EndpointKey, bytes] = {}
        for k, v in table.items():
            entry = decode_endpoint(abi, k, v)
            if entry is None:
                continue
            key, counters = entry
            entries[key] = counters
            raws[key] = bytes(k)
            if self._entries.get(key) != counters:
                self._changed[key] = now
        self._changed = {k: self._changed.get(k, now) for k in entries}
        self._entries, self._raw, self._previous = entries, raws, []
        self.last = ReadStats(len(entries), True, self.last.reads + 1, self.last.full_reads + 1)

    def _forget_raw(self, table: Any, raw: bytes, abi: LatencyAbi) -> None:
        key = decode_key(abi, table.Key.from_buffer_copy(raw))
        if key is not None:
            self._entries.pop(key, None)
            self._raw.pop(key, None)
            self._changed.pop(key, None)

    def idle_for(self, key: EndpointKey) -> float:
        """Seconds since the endpoint's counters last moved (as of the last refresh)."""
        return self._clock() - self._changed.get(key, self._clock())

    def prune(
        self,
        bpf: Any,
        abi: LatencyAbi,
        *,
        is_local_pod: Callable[[str], bool],
        idle_s: float,
        departed: Collection[str] = (),
    ) -> PruneStats:
        """Remove what no local pod needs (see the module docstring); what this pass
        removed, per map. `departed`: IPs of pods that left the node at least `idle_s`
        ago and have no successor (their idle connections go too)."""
        now = self._clock()
        done = PruneStats()
        table, dirty = bpf[b"endpoints"], bpf[b"ep_dirty"]
        for key in [k for k in self._entries if not is_local_pod(k.ip)]:
            if now - self._changed.get(key, now) < idle_s:
                continue
            raw = self._raw[key]
            for t in (table, dirty):
                with contextlib.suppress(KeyError):
                    del t[t.Key.from_buffer_copy(raw)]
            del self._entries[key], self._raw[key], self._changed[key]
            done.endpoints += 1
        live: set[int] = set()
        gone = set(departed)
        sockets = bpf[b"sockets"]
        for key, value in _batch(sockets):
            sk = _u64(key)
            live.add(sk)
            if not gone or value.start_ns or value.streams > 0:
                continue
            if ip_from_raw16(bytes(value.ep.addr)) in gone:
                try:
                    del sockets[sockets.Key(sk)]
                    done.sockets += 1
                    live.discard(sk)
                except KeyError:
                    pass
        if gone:
            listeners = bpf[b"listeners"]
            for key, _ in _batch(listeners):
                if ip_from_raw16(bytes(key.addr)) in gone:
                    with contextlib.suppress(KeyError):
                        del listeners[key]
                        done.listeners += 1
        h2 = bpf[b"h2conns"]
        orphans = {_u64(k) for k in h2} - live
        for sk in orphans & self._h2_orphans:
            try:
                del h2[h2.Key(sk)]
                done.h2conns += 1
            except KeyError:
                pass
        self._h2_orphans = orphans - self._h2_orphans
        self.pruned.endpoints += done.endpoints
        self.pruned.sockets += done.sockets
        self.pruned.h2conns += done.h2conns
        self.pruned.listeners += done.listeners
        return done


def open_starts(
    bpf: Any, abi: LatencyAbi, ips: Collection[str] | None = None
) -> dict[EndpointKey, int]:
    """Per endpoint (of `ips`, when given), the start (CLOCK_MONOTONIC ns) of its oldest
    open request: open HTTP/1 and opaque requests from `sockets`, open HTTP/2 streams
    from the `h2conns` entries of the connections that have some. Entries may change
    under the walk (a request that ends during it may still be seen open: at most one
    read late)."""
    out: dict[EndpointKey, int] = {}
    h2conns = bpf[b"h2conns"]
    for key, value in _batch(bpf[b"sockets"]):
        start, streams = int(value.start_ns), int(value.streams)
        if not start and streams <= 0:
            continue
        role = abi.roles.get(int(value.ep.role))
        ip = ip_from_raw16(bytes(value.ep.addr))
        if role is None or (ips is not None and ip not in ips):
            continue
        ep = EndpointKey(ip, int(value.ep.port), role)
        if streams > 0:
            try:
                conn = h2conns[h2conns.Key(_u64(key))]
            except KeyError:
                conn = None
            if conn is not None:
                for slot in conn.slots:
                    s = int(slot.start_ns)
                    if slot.sid and s and (not start or s < start):
                        start = s
        if start and (ep not in out or start < out[ep]):
            out[ep] = start
    return out
