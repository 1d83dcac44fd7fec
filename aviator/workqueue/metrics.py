"""Prometheus metrics of work queues, labelled by queue name (client-go's names).

| metric | type | meaning |
|---|---|---|
| workqueue_depth | gauge | items waiting to be handed out (incl. re-adds of items in flight) |
| workqueue_adds_total | counter | adds that made an item pending (collapsed adds do not count) |
| workqueue_queue_duration_seconds | histogram | time from the first add to the hand-out |
| workqueue_work_duration_seconds | histogram | time from the hand-out to done() |
| workqueue_retries_total | counter | add_after / add_rate_limited calls |
| workqueue_unfinished_work_seconds | gauge | summed age of the work in flight (a stuck worker makes it grow) |
| workqueue_longest_running_processor_seconds | gauge | age of the oldest work in flight |

The two in-flight gauges are computed when scraped, so no background task keeps them
current. Metric families are created once per `CollectorRegistry`
(`MetricsProvider.for_registry`), so any number of queues, also several with the same
name, share them without duplicate-registration errors; a test isolates itself by passing
a fresh registry. Several live queues with one name add up (max for the oldest work).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import ClassVar, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# 10 ns … 1000 s, as client-go.
DURATION_BUCKETS = tuple(1e-8 * 10**i for i in range(12))


class QueueMetrics(Protocol):
    """What a queue reports; each call is O(1) and never fails."""

    def add(self, item: Hashable) -> None:
        """The item became pending (not a collapsed duplicate)."""

    def get(self, item: Hashable) -> None:
        """The item was handed to a worker."""

    def done(self, item: Hashable) -> None:
        """The worker finished the item."""

    def retry(self) -> None:
        """A delayed or rate-limited re-add was requested."""


class NoopQueueMetrics:
    """Metrics of an unnamed queue: nothing is recorded."""

    def add(self, item: Hashable) -> None:
        pass

    def get(self, item: Hashable) -> None:
        pass

    def done(self, item: Hashable) -> None:
        pass

    def retry(self) -> None:
        pass


class PrometheusQueueMetrics:
    """One named queue's view onto its registry's metric families."""

    def __init__(self, provider: MetricsProvider, name: str, now: Callable[[], float]) -> None:
        self.name = name
        self._now = now
        self._depth = provider.depth.labels(name)
        self._adds = provider.adds.labels(name)
        self._latency = provider.latency.labels(name)
        self._work = provider.work_duration.labels(name)
        self._retries = provider.retries.labels(name)
        self._add_times: dict[Hashable, float] = {}
        self._start_times: dict[Hashable, float] = {}

    def add(self, item: Hashable) -> None:
        self._adds.inc()
        self._depth.inc()
        self._add_times.setdefault(item, self._now())

    def get(self, item: Hashable) -> None:
        now = self._now()
        self._depth.dec()
        self._start_times[item] = now
        added = self._add_times.pop(item, None)
        if added is not None:
            self._latency.observe(max(0.0, now - added))

    def done(self, item: Hashable) -> None:
        started = self._start_times.pop(item, None)
        if started is not None:
            self._work.observe(max(0.0, self._now() - started))

    def retry(self) -> None:
        self._retries.inc()

    def in_flight(self) -> tuple[float, float]:
        """(summed age, oldest age) of the items handed out and not yet done, in seconds."""
        now = self._now()
        ages = [max(0.0, now - t) for t in list(self._start_times.values())]
        return sum(ages), max(ages, default=0.0)


class _InFlightCollector(Collector):
    """Computes the in-flight gauges of every live queue at scrape time."""

    UNFINISHED = "workqueue_unfinished_work_seconds"
    LONGEST = "workqueue_longest_running_processor_seconds"

    def __init__(self) -> None:
        self.queues: weakref.WeakSet[PrometheusQueueMetrics] = weakref.WeakSet()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                self.UNFINISHED,
                "Seconds of work in flight that has not been observed by work_duration; "
                "large values indicate stuck workers.",
                labels=["name"],
            ),
            GaugeMetricFamily(
                self.LONGEST,
                "Seconds the longest running item of the queue has been in flight.",
                labels=["name"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        unfinished, longest = self._families()
        by_name: dict[str, tuple[float, float]] = {}
        for queue in list(self.queues):
            total, oldest = queue.in_flight()
            seen_total, seen_oldest = by_name.get(queue.name, (0.0, 0.0))
            by_name[queue.name] = (seen_total + total, max(seen_oldest, oldest))
        for name, (total, oldest) in sorted(by_name.items()):
            unfinished.add_metric([name], total)
            longest.add_metric([name], oldest)
        yield unfinished
        yield longest


class MetricsProvider:
    """The workqueue metric families of one registry; get it with `for_registry`."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, MetricsProvider]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["name"]
        self.registry = registry
        self.depth = Gauge(
            "workqueue_depth", "Current depth of the workqueue.", labels, registry=registry
        )
        self.adds = Counter(
            "workqueue_adds_total",
            "Total adds handled by the workqueue.",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            "workqueue_queue_duration_seconds",
            "Seconds an item stays in the workqueue before being handed out.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "Seconds processing an item from the workqueue takes.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "workqueue_retries_total",
            "Total retries handled by the workqueue.",
            labels,
            registry=registry,
        )
        self._in_flight = _InFlightCollector()
        registry.register(self._in_flight)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> MetricsProvider:
        """The one provider of `registry` (default: prometheus_client's global REGISTRY)."""
        registry = REGISTRY if registry is None else registry
        provider = cls._by_registry.get(registry)
        if provider is None:
            provider = cls(registry)
            cls._by_registry[registry] = provider
        return provider

    def queue_metrics(self, name: str, now: Callable[[], float]) -> PrometheusQueueMetrics:
        """Metrics for one queue called `name`, timing with `now` (monotonic seconds)."""
        metrics = PrometheusQueueMetrics(self, name, now)
        self._in_flight.queues.add(metrics)
        return metrics
