"""The agent's upkeep of its latency source's maps: which pods left the node, when to
prune, and what the last pass found.

Every `every_s` (at a report interval) `MapUpkeep.run` hands the source the IPs of the
node's pods now, the IPs of pods gone for at least `idle_s` with no successor at that
address, and `idle_s` (`CounterSource.maintain`: endpoints of IPs that are no local
pod's and idle that long leave the maps, and the departed pods' idle connections and
listening addresses); it keeps what the pass found: the maps that dropped data since
the previous pass (`full`, which every snapshot then carries) and the entries removed
so far per map (`pruned`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aviator.agent.sources import CounterSource, MapState, PodIps

log = logging.getLogger(__name__)


class MapUpkeep:
    def __init__(self, idle_s: float, every_s: float) -> None:
        self.idle_s = idle_s
        self.every_s = every_s
        self.last = MapState()  # the last pass
        self.pruned: dict[str, int] = {}  # entries removed so far, per map
        self._next = 0.0
        self._local: set[str] = set()
        self._departed: dict[str, float] = {}  # pod IP -> when it left the node

    @property
    def full(self) -> tuple[str, ...]:
        return self.last.full

    def due(self, now: float) -> bool:
        return now >= self._next

    async def run(self, source: CounterSource, local_ips: Iterable[str], now: float) -> MapState:
        """One pass; `local_ips`: the IPs of the node's pods now."""
        self._next = now + self.every_s
        local = set(local_ips)
        for ip in self._local - local:
            self._departed[ip] = now
        for ip in local:
            self._departed.pop(ip, None)
        self._local = local
        ripe = [ip for ip, since in self._departed.items() if now - since >= self.idle_s]
        self.last = await source.maintain(PodIps(local, ripe, self.idle_s))
        for ip in ripe:
            del self._departed[ip]
        for name, n in self.last.pruned.items():
            self.pruned[name] = self.pruned.get(name, 0) + n
        if self.last.full:
            log.warning(
                "BPF maps full: %s; requests of pods not in them are not measured",
                ", ".join(self.last.full),
            )
        return self.last
