"""When each agent (by the node it speaks for) reported to this replica (pure).

The latency store (aviator.latency.store) reads these to tell why a pod has no data:

- `last(owner)`, `resumed(owner)`: an agent's latest report, and when it last began a
  new stream or reported after a silence longer than the staleness bound (`heard`).
  Data that lapsed before that lapsed for want of a reporter (`LatencyStore.silent`).
- `warming(node, now)`: a replica that just started holds nothing of what agents
  measured before it. From when it can take reports (`begin`), it cannot yet tell a
  pod of a node it has no data for from one measured before, until that node's
  agent, first heard within the connect grace of `begin`, has reported for a window;
  or, for a node not heard of, until the grace is over (every agent retries a replica
  within `RECONNECT_MAX_S`, give or take its jitter; the grace is that, or the
  staleness bound if longer: past it, a node never heard of has no agent).

Times are the store's clock.
"""

from __future__ import annotations

from aviator.latency.schema import RECONNECT_JITTER, RECONNECT_MAX_S


class Reporters:
    """Who reported when; see the module docstring."""

    def __init__(self, window_s: float, stale_after_s: float) -> None:
        self.window_s = window_s
        self.stale_after_s = stale_after_s
        self._last: dict[str, float] = {}  # owner -> its latest report
        self._resumed: dict[str, float] = {}  # owner -> a new stream, or after a silence
        self._first: dict[str, float] = {}  # owner -> its first report (`warming`)
        self._began: float | None = None  # `begin` (None: never `warming`)

    def heard(self, owner: str, now: float, *, anew: bool = False) -> None:
        """`owner` reported; `anew`: the first report of a new stream (its agent
        started, or reconnected)."""
        last = self._last.get(owner)
        if last is None:
            self._first.setdefault(owner, now)
        if anew or (last is not None and now - last > self.stale_after_s):
            self._resumed[owner] = now
        self._last[owner] = now

    def last(self, owner: str) -> float:
        return self._last.get(owner, 0.0)

    def resumed(self, owner: str) -> float:
        return self._resumed.get(owner, 0.0)

    def forget(self, cutoff: float) -> None:
        """Forget the owners not heard of since `cutoff`."""
        for owner in [o for o, t in self._last.items() if t <= cutoff]:
            del self._last[owner]
            self._resumed.pop(owner, None)
            self._first.pop(owner, None)

    def begin(self, now: float) -> None:
        """The replica can take agents' reports from `now` on (its caches listed, its
        server listening): `warming` counts from here."""
        self._began = now

    def warming(self, node: str, now: float) -> bool:
        """Whether a pod of `node`'s without data may yet be one measured before this
        replica began (module docstring)."""
        began = self._began
        if began is None:
            return False
        grace = max(self.stale_after_s, RECONNECT_MAX_S * (1 + RECONNECT_JITTER))
        first = self._first.get(node)
        if first is None:
            return now - began < grace
        return first - began <= grace and now - first < self.window_s
