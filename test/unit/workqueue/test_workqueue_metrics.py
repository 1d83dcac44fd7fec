"""Workqueue metrics on an isolated registry, timed by a fake clock."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, generate_latest

from aviator.workqueue import (
    DelayingQueue,
    FakeClock,
    MetricsProvider,
    Queue,
    RateLimitingQueue,
)


def sample(registry: CollectorRegistry, metric: str, name: str) -> float | None:
    return registry.get_sample_value(metric, {"name": name})


def test_adds_depth_durations_and_in_flight() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    q: Queue[str] = Queue("pods", clock=clock, metrics=MetricsProvider.for_registry(registry))
    q.add("a")
    q.add("a")  # collapses: not counted
    q.add("b")
    assert sample(registry, "workqueue_adds_total", "pods") == 2
    assert sample(registry, "workqueue_depth", "pods") == 2
    clock.advance(2)
    a = q.get_nowait()
    assert a == "a"
    assert sample(registry, "workqueue_depth", "pods") == 1
    assert sample(registry, "workqueue_queue_duration_seconds_count", "pods") == 1
    assert sample(registry, "workqueue_queue_duration_seconds_sum", "pods") == 2
    clock.advance(3)
    assert sample(registry, "workqueue_unfinished_work_seconds", "pods") == 3
    assert sample(registry, "workqueue_longest_running_processor_seconds", "pods") == 3
    b = q.get_nowait()
    assert b == "b"
    clock.advance(1)
    assert sample(registry, "workqueue_unfinished_work_seconds", "pods") == 4 + 1
    assert sample(registry, "workqueue_longest_running_processor_seconds", "pods") == 4
    q.done(a)
    assert sample(registry, "workqueue_work_duration_seconds_count", "pods") == 1
    assert sample(registry, "workqueue_work_duration_seconds_sum", "pods") == 4
    q.done(b)
    assert sample(registry, "workqueue_unfinished_work_seconds", "pods") == 0


def test_retries_count_delayed_and_rate_limited_adds() -> None:
    registry = CollectorRegistry()
    provider = MetricsProvider.for_registry(registry)
    q: RateLimitingQueue[str] = RateLimitingQueue("p", clock=FakeClock(), metrics=provider)
    q.add_after("a", 1)
    q.add_rate_limited("b")
    assert sample(registry, "workqueue_retries_total", "p") == 2


def test_many_queues_and_repeated_names_share_one_registry() -> None:
    registry = CollectorRegistry()
    provider = MetricsProvider.for_registry(registry)
    assert MetricsProvider.for_registry(registry) is provider
    queues: list[DelayingQueue[str]] = [
        DelayingQueue(name, clock=FakeClock(), metrics=provider) for name in ["x", "y", "x"]
    ]
    for q in queues:
        q.add("k")
    assert sample(registry, "workqueue_adds_total", "x") == 2
    assert sample(registry, "workqueue_adds_total", "y") == 1


def test_same_name_on_the_default_registry_twice_is_fine() -> None:
    first: Queue[str] = Queue("test-default-registry")
    second: Queue[str] = Queue("test-default-registry")
    first.add("k")
    second.add("k")


def test_unnamed_queues_report_nothing_and_dead_queues_leave_the_gauges() -> None:
    registry = CollectorRegistry()
    provider = MetricsProvider.for_registry(registry)
    q: Queue[str] = Queue(metrics=provider)
    q.add("a")
    assert registry.get_sample_value("workqueue_adds_total", {"name": ""}) is None
    named: Queue[str] = Queue("gone", clock=FakeClock(), metrics=provider)
    named.add("a")
    named.get_nowait()
    assert sample(registry, "workqueue_unfinished_work_seconds", "gone") == 0
    del named
    gc.collect()
    assert sample(registry, "workqueue_unfinished_work_seconds", "gone") is None


def test_exposition_has_cumulative_buckets_and_counters_outlive_their_queue() -> None:
    registry = CollectorRegistry()
    clock = FakeClock(start=0.0)
    q: Queue[str] = Queue("pods", clock=clock, metrics=MetricsProvider.for_registry(registry))
    q.add("a")
    clock.advance(0.1)  # exactly a bucket bound: counted in le="0.1" (bounds are inclusive)
    q.get_nowait()
    del q
    gc.collect()
    text = generate_latest(registry).decode()
    assert 'workqueue_adds_total{name="pods"} 1.0' in text
    assert 'workqueue_queue_duration_seconds_bucket{le="0.01",name="pods"} 0.0' in text
    assert 'workqueue_queue_duration_seconds_bucket{le="0.1",name="pods"} 1.0' in text
    assert 'workqueue_queue_duration_seconds_bucket{le="+Inf",name="pods"} 1.0' in text
    assert 'workqueue_queue_duration_seconds_count{name="pods"} 1.0' in text
    assert 'workqueue_depth{name="pods"} 0.0' in text
