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

Queues count into plain per-name numbers that one collector per `CollectorRegistry`
turns into metric families when scraped. That keeps the hot path free of locks and label
lookups (a queue lives on one event loop; a scrape from another thread only reads), lets
any number of queues, also several with one name, share a registry without
duplicate-registration errors, and computes the in-flight gauges without a background
task. Counters of a name outlive its queues, so they never go backwards. A test isolates
itself with `MetricsProvider.for_registry(CollectorRegistry())`.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import ClassVar, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Upper bounds (inclusive) of the duration buckets: 10 ns … 1000 s, as client-go.
DURATION_BUCKETS = tuple(float(f"1e{exponent}") for exponent in range(-8, 4))


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


class DurationHistogram:
    """Bucket counts (last one is +Inf) and the sum of observed seconds."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        bounds = [*(floatToGoString(b) for b in DURATION_BUCKETS), "+Inf"]
        out, running = [], 0
        for bound, count in zip(bounds, list(self.counts), strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class NameStats:
    """The counters of every queue with one name."""

    __slots__ = ("adds", "depth", "latency", "retries", "work")

    def __init__(self) -> None:
        self.adds = 0
        self.depth = 0
        self.retries = 0
        self.latency = DurationHistogram()
        self.work = DurationHistogram()


class PrometheusQueueMetrics:
    """One named queue's recorder: shared per-name counters plus its own in-flight times."""

    def __init__(self, name: str, stats: NameStats, now: Callable[[], float]) -> None:
        self.name = name
        self._stats = stats
        self._now = now
        self._add_times: dict[Hashable, float] = {}
        self._start_times: dict[Hashable, float] = {}

    def add(self, item: Hashable) -> None:
        self._stats.adds += 1
        self._stats.depth += 1
        if item not in self._add_times:
            self._add_times[item] = self._now()

    def get(self, item: Hashable) -> None:
        now = self._now()
        self._stats.depth -= 1
        self._start_times[item] = now
        added = self._add_times.pop(item, None)
        if added is not None:
            self._stats.latency.observe(max(0.0, now - added))

    def done(self, item: Hashable) -> None:
        started = self._start_times.pop(item, None)
        if started is not None:
            self._stats.work.observe(max(0.0, self._now() - started))

    def retry(self) -> None:
        self._stats.retries += 1

    def in_flight(self) -> tuple[float, float]:
        """(summed age, oldest age) of the items handed out and not yet done, in seconds."""
        now = self._now()
        ages = [max(0.0, now - t) for t in list(self._start_times.values())]
        return sum(ages), max(ages, default=0.0)


class MetricsProvider(Collector):
    """The workqueue collector of one registry; get it with `for_registry`."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, MetricsProvider]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self._stats: dict[str, NameStats] = {}
        self._queues: weakref.WeakSet[PrometheusQueueMetrics] = weakref.WeakSet()

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> MetricsProvider:
        """The one provider of `registry` (default: prometheus_client's global REGISTRY)."""
        registry = REGISTRY if registry is None else registry
        provider = cls._by_registry.get(registry)
        if provider is None:
            provider = cls()
            registry.register(provider)
            cls._by_registry[registry] = provider
        return provider

    def queue_metrics(self, name: str, now: Callable[[], float]) -> PrometheusQueueMetrics:
        """A recorder for one queue called `name`, timing with `now` (monotonic seconds)."""
        stats = self._stats.setdefault(name, NameStats())
        metrics = PrometheusQueueMetrics(name, stats, now)
        self._queues.add(metrics)
        return metrics

    # -- Collector --------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        depth, adds, latency, work, retries, unfinished, longest = self._families()
        for name, stats in sorted(list(self._stats.items())):
            depth.add_metric([name], stats.depth)
            adds.add_metric([name], stats.adds)
            retries.add_metric([name], stats.retries)
            latency.add_metric([name], stats.latency.cumulative(), stats.latency.total)
            work.add_metric([name], stats.work.cumulative(), stats.work.total)
        in_flight: dict[str, tuple[float, float]] = {}
        for queue in list(self._queues):
            total, oldest = queue.in_flight()
            seen_total, seen_oldest = in_flight.get(queue.name, (0.0, 0.0))
            in_flight[queue.name] = (seen_total + total, max(seen_oldest, oldest))
        for name, (total, oldest) in sorted(in_flight.items()):
            unfinished.add_metric([name], total)
            longest.add_metric([name], oldest)
        yield from (depth, adds, latency, work, retries, unfinished, longest)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
    ]:
        labels = ["name"]
        return (
            GaugeMetricFamily("workqueue_depth", "Current depth of the workqueue.", labels=labels),
            CounterMetricFamily(
                "workqueue_adds", "Total adds handled by the workqueue.", labels=labels
            ),
            HistogramMetricFamily(
                "workqueue_queue_duration_seconds",
                "Seconds an item stays in the workqueue before being handed out.",
                labels=labels,
            ),
            HistogramMetricFamily(
                "workqueue_work_duration_seconds",
                "Seconds processing an item from the workqueue takes.",
                labels=labels,
            ),
            CounterMetricFamily(
                "workqueue_retries", "Total retries handled by the workqueue.", labels=labels
            ),
            GaugeMetricFamily(
                "workqueue_unfinished_work_seconds",
                "Seconds of work in flight not yet observed by work_duration; "
                "large values indicate stuck workers.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "workqueue_longest_running_processor_seconds",
                "Seconds the longest running item of the queue has been in flight.",
                labels=labels,
            ),
        )
