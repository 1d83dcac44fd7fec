"""The agent's map upkeep (aviator.agent.upkeep): which pods count as departed, when,
and what the passes add up to."""

from __future__ import annotations

import asyncio

from aviator.agent.sources import MapState, PodIps
from aviator.agent.upkeep import MapUpkeep


class Source:
    """Records what each pass was handed; answers with a fixed state."""

    def __init__(self, state: MapState) -> None:
        self.state = state
        self.calls: list[PodIps] = []

    async def maintain(self, pods: PodIps) -> MapState:
        self.calls.append(pods)
        return self.state


def test_a_pod_is_departed_once_gone_for_idle_s_unless_its_address_came_back() -> None:
    source = Source(MapState(("endpoints",), {"endpoints": 2, "sockets": 1}))
    u = MapUpkeep(idle_s=10.0, every_s=5.0)

    def run(ips: set[str], now: float) -> PodIps:
        asyncio.run(u.run(source, ips, now))  # type: ignore[arg-type]
        return source.calls[-1]

    assert u.due(0.0)
    assert list(run({"10.0.0.1", "10.0.0.2", "10.0.0.3"}, 0.0).departed) == []
    assert not u.due(4.9) and u.due(5.0)
    assert list(run({"10.0.0.1"}, 5.0).departed) == []  # .2 and .3 left at 5 s
    assert list(run({"10.0.0.1", "10.0.0.3"}, 10.0).departed) == []  # .3 is back
    assert list(run({"10.0.0.1"}, 15.0).departed) == ["10.0.0.2"]  # gone 10 s
    assert list(run({"10.0.0.1"}, 20.0).departed) == []  # handed over once
    assert list(run({"10.0.0.1"}, 25.0).departed) == ["10.0.0.3"]  # gone again at 15 s
    assert source.calls[-1].local == {"10.0.0.1"} and source.calls[-1].idle_s == 10.0
    assert u.full == ("endpoints",)
    assert u.pruned == {"endpoints": 12, "sockets": 6}
