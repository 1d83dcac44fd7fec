"""One endpoint's window in the latency store (aviator.latency.store): the deltas received
within it, their running sums, and what the latest report said.

Adding a delta and expiring old ones keep the sums (histogram, statuses, errors,
keep-warm samples) and
the count of held buckets exact, so an estimate costs a pass over one histogram and
the store's memory accounting is one subtraction per expired delta.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aviator.latency.histogram import Histogram
from aviator.latency.schema import AppProtocol, EndpointWindow, Source

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(slots=True)
class Window:
    """One endpoint's recent deltas and their sum."""

    pod: str | None
    source: Source
    last_seen: float
    keep_s: float  # deltas older than this leave the window
    stale_s: float  # unheard of for longer than this: unknown
    owner: str  # the agent (node) charged for it, CONTROLLER_OWNER for probe windows
    rif: int = 0
    oldest_open_us: int = 0  # latest report
    protocol: AppProtocol = "opaque"  # latest report
    # (arrival, histogram delta, statuses, errors, keep-warm samples)
    deltas: deque[tuple[float, Histogram, int, int, int]] = field(default_factory=deque)
    total: Histogram = field(default_factory=Histogram)
    statuses: int = 0  # over `deltas`
    errors: int = 0
    keepwarm: int = 0  # of total.count: the agent's keep-warm probes
    buckets: int = 0  # non-empty buckets over `deltas` (what the limits count)
    # p50/p90/p99 in µs of `total` as it was when `cached_of` was taken: recomputed
    # only when the total differs (a steady pod's window adds the delta it expires).
    cached: tuple[float, float, float] | None = None
    cached_of: Histogram | None = None

    def add(self, at: float, ep: EndpointWindow, max_deltas: int) -> int:
        """Add an endpoint window's delta; returns the change in held buckets."""
        delta = ep.hist
        if not delta:
            return 0
        self.deltas.append((at, delta, ep.statuses, ep.errors, ep.keepwarm))
        self.total.update(delta)
        self.statuses += ep.statuses
        self.errors += ep.errors
        self.keepwarm += ep.keepwarm
        added = len(delta)
        self.buckets += added
        if len(self.deltas) > max_deltas:
            added -= self._pop()
        return added

    def expire(self, before: float) -> int:
        """Drop deltas from `before` or earlier; returns the buckets freed."""
        freed = 0
        deltas = self.deltas
        while deltas and deltas[0][0] <= before:
            freed += self._pop()
        return freed

    def _pop(self) -> int:
        _, old, statuses, errors, keepwarm = self.deltas.popleft()
        self.total.subtract(old)
        self.statuses -= statuses
        self.errors -= errors
        self.keepwarm -= keepwarm
        self.buckets -= len(old)
        return len(old)

    def quantiles_us(self) -> tuple[float, float, float] | None:
        if not self.total:
            return None
        if self.cached is None or self.cached_of != self.total:
            qs = self.total.quantiles(QUANTILES)
            assert qs is not None
            self.cached = (qs[0], qs[1], qs[2])
            self.cached_of = self.total.copy()
        return self.cached
