"""Work queues for controllers (client-go's util/workqueue, in asyncio).

`Queue` (never two workers on one item, adds collapse, re-add while processing requeues
on done) → `DelayingQueue` (`add_after`) → `RateLimitingQueue` (`add_rate_limited`,
`forget`, `num_requeues`), rate limiters, clocks and Prometheus metrics.
"""

from aviator.workqueue.clock import Clock, FakeClock, RealClock, Timer
from aviator.workqueue.delaying_queue import DelayingQueue
from aviator.workqueue.metrics import MetricsProvider, NoopQueueMetrics, QueueMetrics
from aviator.workqueue.queue import Queue, ShutDown
from aviator.workqueue.rate_limiters import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimiter,
    default_controller_rate_limiter,
)
from aviator.workqueue.rate_limiting_queue import RateLimitingQueue

__all__ = [
    "BucketRateLimiter",
    "Clock",
    "DelayingQueue",
    "FakeClock",
    "ItemExponentialFailureRateLimiter",
    "MaxOfRateLimiter",
    "MetricsProvider",
    "NoopQueueMetrics",
    "Queue",
    "QueueMetrics",
    "RateLimiter",
    "RateLimitingQueue",
    "RealClock",
    "ShutDown",
    "Timer",
    "default_controller_rate_limiter",
]
