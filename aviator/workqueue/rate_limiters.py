"""Rate limiters: how long to wait before an item may be retried (client-go semantics).

Pure logic: no asyncio, no I/O. Time, where it matters, comes from an injected
`clock` (a callable returning monotonic seconds).

- `ItemExponentialFailureRateLimiter`: base · 2^failures per item, capped; `forget`
  resets the item.
- `BucketRateLimiter`: one token bucket for all items (qps, burst); `when` reserves a
  token and returns how long until it is available, like golang.org/x/time/rate's
  `Reserve().Delay()`: reservations queue up, so the n-th call in a burst of calls waits
  (n - burst) / qps.
- `MaxOfRateLimiter`: the longest wait of several limiters (all of them record the call).
- `default_controller_rate_limiter()`: max(exponential 5 ms → 1000 s, bucket 10/s burst 100).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Protocol

Now = Callable[[], float]


class RateLimiter(Protocol):
    """Decides retry delays per item."""

    def when(self, item: Hashable) -> float:
        """Record a retry of item and return the seconds to wait before it."""

    def forget(self, item: Hashable) -> None:
        """Stop tracking item (it succeeded): its next failure starts from scratch."""

    def num_requeues(self, item: Hashable) -> int:
        """How many retries of item are being tracked."""


class ItemExponentialFailureRateLimiter:
    """Per-item exponential backoff: base_s · 2^(failures so far), at most max_s."""

    def __init__(self, base_s: float = 0.005, max_s: float = 1000.0) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError("need 0 < base_s <= max_s")
        self.base_s = base_s
        self.max_s = max_s
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        exponent = self._failures.get(item, 0)
        self._failures[item] = exponent + 1
        # Past 2^1023 a float overflows; long before that the cap applies.
        if exponent >= 1000:
            return self.max_s
        return min(self.max_s, math.ldexp(self.base_s, exponent))

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class BucketRateLimiter:
    """A token bucket shared by all items: qps tokens per second, at most burst stored.

    Starts full. Each `when` takes one token; when the bucket is empty the token is
    borrowed from the future and the returned delay is when it will exist.
    """

    def __init__(self, qps: float = 10.0, burst: int = 100, *, clock: Now = time.monotonic) -> None:
        if not qps > 0:
            raise ValueError("qps must be > 0 (math.inf for no limit)")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last: float | None = None

    def when(self, item: Hashable) -> float:
        if math.isinf(self.qps):
            return 0.0
        now = self._clock()
        tokens = self._tokens_at(now) - 1.0
        self._tokens = tokens
        self._last = now if self._last is None else max(self._last, now)
        return -tokens / self.qps if tokens < 0 else 0.0

    def _tokens_at(self, now: float) -> float:
        if self._last is None:
            return self._tokens
        # A clock that steps back adds nothing (x/time/rate does the same).
        elapsed = max(0.0, now - self._last)
        return min(float(self.burst), self._tokens + elapsed * self.qps)

    def forget(self, item: Hashable) -> None:
        pass

    def num_requeues(self, item: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    """The longest delay of its limiters; every limiter records every call."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("need at least one limiter")
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        return max([limiter.when(item) for limiter in self.limiters])

    def forget(self, item: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


def default_controller_rate_limiter(*, clock: Now = time.monotonic) -> MaxOfRateLimiter:
    """Per-item exponential 5 ms → 1000 s, and overall 10 retries/s with a burst of 100."""
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(0.005, 1000.0),
        BucketRateLimiter(qps=10.0, burst=100, clock=clock),
    )
