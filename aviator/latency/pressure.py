"""Which nodes' agents cannot measure every pod: their BPF maps are full.

An agent's snapshot names the maps that dropped data lately (`Snapshot.maps_full`:
`endpoints`, `h2conns`); a pod of such a node that has no latency data may simply never
get any, and the policy's status should say so rather than "no data yet". `MapPressure`
keeps, per node (the node the agent's token names, never the message's), the maps its
latest snapshot called full, for as long as that snapshot is fresh. One entry per node
that reported a full map: bounded by the cluster's nodes.
"""

from __future__ import annotations


class MapPressure:
    """Per node: the maps its agent last reported full, and when."""

    def __init__(self, fresh_s: float) -> None:
        self.fresh_s = fresh_s
        self._full: dict[str, tuple[tuple[str, ...], float]] = {}

    def note(self, node: str, maps: tuple[str, ...], now: float) -> None:
        """A snapshot of `node` arrived at `now`, calling `maps` full (maybe none)."""
        if maps:
            self._full[node] = (maps, now)
        else:
            self._full.pop(node, None)

    def full(self, node: str, now: float) -> tuple[str, ...]:
        """The maps `node`'s agent reported full in a snapshot still fresh at `now`."""
        entry = self._full.get(node)
        if entry is None or now - entry[1] > self.fresh_s:
            return ()
        return entry[0]

    def any_full(self, now: float) -> bool:
        """Whether any node's agent reported a full map in a snapshot still fresh at
        `now` (a reader of thousands of pods skips asking for each one when none did)."""
        return any(now - at <= self.fresh_s for _, at in self._full.values())

    def nodes(self) -> list[str]:
        return list(self._full)
