"""Exponential backoff that forgets past failures after a healthy stretch (pure logic)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of initial_s, doubling on each failure up to max_s.

    A failure that comes more than reset_after_s after the previous one starts again
    from initial_s: the connection was healthy in between (client-go's
    ExponentialBackoffManager with 0.8 s / 30 s / 2 min for reflectors). `jitter` adds
    up to that fraction on top, so many watchers reconnecting to a restarted server
    spread out, but never beyond max_s.
    """

    initial_s: float = 0.8
    max_s: float = 30.0
    factor: float = 2.0
    reset_after_s: float = 120.0
    jitter: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    _current_s: float | None = None
    _last_failure: float | None = None

    def failure(self, now: float) -> float:
        """Record a failure at `now` (monotonic seconds); return how long to wait."""
        if (
            self._current_s is None
            or self._last_failure is None
            or now - self._last_failure > self.reset_after_s
        ):
            self._current_s = self.initial_s
        else:
            self._current_s = min(self._current_s * self.factor, self.max_s)
        self._last_failure = now
        delay = self._current_s * (1.0 + self.jitter * self.rng.random())
        return min(delay, self.max_s)

    def reset(self) -> None:
        self._current_s = None
        self._last_failure = None
