"""How many connections a hand-off ends now (pure).

A hand-off spreads its connections over its period so that their clients re-dial
gradually instead of all at once onto the remaining pods: the number ended by time t
follows a straight ramp from 0 at the start to all of them at the end of the period
(`due`). On top, a per-pod token bucket (`RateLimit`) caps the rate whatever the
period and the number of connections are; once the period is over, what is left is
ended as fast as the bucket allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def due(*, ended: int, remaining: int, started: float, period_s: float, now: float) -> int:
    """How many more to end at `now`: the ramp's share of all (ended + remaining) so
    far, less those already ended; never more than `remaining`."""
    if remaining <= 0:
        return 0
    if period_s <= 0 or now - started >= period_s:
        return remaining
    fraction = max(0.0, now - started) / period_s
    allowed = math.ceil(fraction * (ended + remaining))
    return max(0, min(remaining, allowed - ended))


@dataclass
class RateLimit:
    """A token bucket: `rate` per second, at most `burst` at once."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        if self.tokens < 0:
            self.tokens = self.burst

    def available(self, now: float) -> int:
        if self.at is not None and now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now if self.at is None else max(self.at, now)
        return int(self.tokens)

    def take(self, n: int, now: float) -> int:
        """Take up to `n` tokens; returns how many were taken."""
        got = min(n, self.available(now))
        self.tokens -= got
        return got
