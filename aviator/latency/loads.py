"""The loads pods report themselves (a queue's length, KV-cache use), as the
controller last heard them from each node's agent.

Every agent snapshot carries all the gauges the agent read from its node's pods
(`Snapshot.loads`); `LoadBoard.note` replaces what that node said before, so a pod or
metric missing from the latest snapshot has no reported load. The receiver hands in
only the loads of the token's node's own pods (`admit_loads`, on the same rule as the
endpoint windows: aviator.latency.admission). A node's loads count while its latest
snapshot is fresh (`fresh_s`). Bounded: at most `MAX_LOADS` per node (the schema's
bound), one entry per node that reported any.
"""

from __future__ import annotations

from collections.abc import Iterable

from aviator.latency.admission import PodLocator, place_of
from aviator.latency.schema import PodLoad


def admit_loads(loads: Iterable[PodLoad], node: str, locate: PodLocator) -> list[PodLoad]:
    """The loads of `loads` that the agent of `node` may report: its own pods'."""
    return [x for x in loads if not isinstance(place_of(locate(x.ip), node), str)]


class LoadBoard:
    """Per node: the loads its agent last reported, and when."""

    def __init__(self, fresh_s: float) -> None:
        self.fresh_s = fresh_s
        self._nodes: dict[str, tuple[dict[tuple[str, str], float], float]] = {}
        self._where: dict[tuple[str, str], str] = {}  # (ip, metric) -> the node saying it

    def note(self, node: str, loads: Iterable[PodLoad], now: float) -> None:
        """`node`'s agent reported `loads` (all of them; maybe none) at `now`."""
        old = self._nodes.pop(node, None)
        if old is not None:
            for key in old[0]:
                if self._where.get(key) == node:
                    del self._where[key]
        values = {(x.ip, x.metric): x.value for x in loads}
        if values:
            self._nodes[node] = (values, now)
            for key in values:
                self._where[key] = node

    def load(self, ip: str, metric: str, now: float) -> float | None:
        """The value of `metric` the pod at `ip` reported in a snapshot still fresh at
        `now`; None: none."""
        node = self._where.get((ip, metric))
        if node is None:
            return None
        values, at = self._nodes[node]
        if now - at > self.fresh_s:
            return None
        return values.get((ip, metric))

    def __len__(self) -> int:
        return len(self._where)
