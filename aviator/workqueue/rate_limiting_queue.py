"""A delaying queue whose retries wait as long as a rate limiter says.

`add_rate_limited(item)` = `add_after(item, limiter.when(item))`; `forget(item)` tells the
limiter the item succeeded (resetting its backoff) and `num_requeues(item)` reports the
retries the limiter is tracking. Forgetting does not remove a pending add.
"""

from __future__ import annotations

from aviator.workqueue.clock import Clock
from aviator.workqueue.delaying_queue import DelayingQueue
from aviator.workqueue.metrics import MetricsProvider
from aviator.workqueue.queue import T
from aviator.workqueue.rate_limiters import RateLimiter, default_controller_rate_limiter


class RateLimitingQueue(DelayingQueue[T]):
    """DelayingQueue plus rate-limited retries (default: the controller default limiter).

    Without an explicit limiter the default one reads time from the queue's clock.
    """

    def __init__(
        self,
        name: str = "",
        *,
        rate_limiter: RateLimiter | None = None,
        clock: Clock | None = None,
        metrics: MetricsProvider | None = None,
    ) -> None:
        super().__init__(name, clock=clock, metrics=metrics)
        self.rate_limiter: RateLimiter = (
            rate_limiter
            if rate_limiter is not None
            else default_controller_rate_limiter(clock=self.clock.now)
        )

    def add_rate_limited(self, item: T) -> None:
        """Add item after the delay the rate limiter assigns to this retry."""
        if self.shutting_down():
            return
        self.add_after(item, self.rate_limiter.when(item))

    def forget(self, item: T) -> None:
        """The item succeeded: reset its retry history."""
        self.rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self.rate_limiter.num_requeues(item)
