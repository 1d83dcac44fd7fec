"""The agent's Prometheus metrics, in a registry of its own (one per agent instance).

Per-pod request latency histograms are exported with a `pod` label ("ns/name") and a
`port` label, with the pod's protocol (http1, h2, grpc, opaque: what its latency
means) and its responses whose status was read, and of those the errors. The histogram's
buckets are those of aviator/agent/promfold.py (`buckets_per_octave` of them per power
of two): exact folds of the log-linear ones, fine enough by default that a
`histogram_quantile` p99 stays within 3.125 % of the agent's own. Their number is capped (`max_pods`): pods beyond the cap are counted in
`aviator_agent_pod_series_dropped` instead of creating series, and a pod's series go
away when it leaves the node, so a busy node cannot blow up the scrape.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from aviator.agent.prober import ProbeStats
from aviator.agent.promfold import DEFAULT_PER_OCTAVE, BucketLayout
from aviator.agent.stream import StreamFanout
from aviator.latency.histogram import Histogram
from aviator.latency.schema import AppProtocol, Snapshot


@dataclass
class _PodSeries:
    hist: Histogram = field(default_factory=Histogram)
    sum_us: int = 0
    statuses: int = 0
    errors: int = 0
    protocol: AppProtocol = "opaque"


def _metric_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


class AgentMetrics(Collector):
    def __init__(
        self, *, max_pods: int = 256, buckets_per_octave: int = DEFAULT_PER_OCTAVE
    ) -> None:
        self.registry = CollectorRegistry()
        self.max_pods = max_pods
        self.buckets = BucketLayout(buckets_per_octave)
        r = self.registry
        ProcessCollector(registry=r)  # the agent's own CPU and memory
        self.reports = Counter(
            "aviator_agent_reports_total", "Report intervals completed", registry=r
        )
        self.report_seconds = PromHistogram(
            "aviator_agent_report_duration_seconds",
            "Time to read the latency source and build one snapshot",
            registry=r,
        )
        self.requests = Counter(
            "aviator_agent_requests_total",
            "Requests measured, by endpoint role",
            ["role"],
            registry=r,
        )
        self.aborted = Counter(
            "aviator_agent_requests_aborted_total",
            "Requests abandoned before a response",
            registry=r,
        )
        self.window_endpoints = Gauge(
            "aviator_agent_window_endpoints", "Endpoints reported in the last window", registry=r
        )
        self.stream_windows = Counter(
            "aviator_agent_stream_windows_total",
            "Endpoint windows sent to the controllers (sent), or held back to go out merged "
            "with a later one (held: --steady-report-interval)",
            ["outcome"],
            registry=r,
        )
        self._handoff_pods: set[str] = set()  # pods with hand-off series
        self.handed_off = Counter(
            "aviator_agent_connections_handed_off_total",
            "Idle client connections of a pod ended because it left a policy's routed set",
            ["pod"],
            registry=r,
        )
        self.drained = Counter(
            "aviator_agent_connections_drained_total",
            "Busy HTTP/2 client connections of a pod sent a graceful GOAWAY because it left "
            "a policy's routed set",
            ["pod"],
            registry=r,
        )
        self.counter_resets = Counter(
            "aviator_agent_counter_resets_total",
            "Endpoints whose cumulative counters went backwards (program reloaded)",
            registry=r,
        )
        self.source = Gauge(
            "aviator_agent_latency_source",
            "The latency source in use (value 1)",
            ["source"],
            registry=r,
        )
        self._source_stats: dict[str, int] = {}
        self._pods: dict[tuple[str, int], _PodSeries] = {}
        self.pod_series_dropped = 0
        self.probe_stats: ProbeStats | None = None
        self.stream: StreamFanout | None = None
        r.register(self)

    # --- feeding ------------------------------------------------------------------------

    def set_source(self, name: str) -> None:
        self.source.labels(name).set(1)

    def set_source_stats(self, stats: dict[str, int]) -> None:
        self._source_stats = dict(stats)

    @property
    def source_stats(self) -> dict[str, int]:
        """The source's statistics as last refreshed."""
        return dict(self._source_stats)

    def observe(self, snapshot: Snapshot) -> None:
        """Account one window."""
        self.reports.inc()
        self.window_endpoints.set(len(snapshot.endpoints))
        for ep in snapshot.endpoints:
            if ep.count:
                self.requests.labels(ep.role).inc(ep.count)
            if ep.aborted:
                self.aborted.inc(ep.aborted)
            if ep.role != "server" or ep.pod is None or not ep.hist:
                continue
            key = (ep.pod, ep.port)
            series = self._pods.get(key)
            if series is None:
                if len(self._pods) >= self.max_pods:
                    self.pod_series_dropped += 1
                    continue
                series = self._pods[key] = _PodSeries()
            series.hist.update(ep.hist)
            series.sum_us += ep.sum_us
            series.statuses += ep.statuses
            series.errors += ep.errors
            series.protocol = ep.protocol

    def count_handoff(self, pod: str, ended: int = 0, drained: int = 0) -> None:
        """Connections of `pod` ended (idle) or drained (GOAWAY) by hand-off."""
        self._handoff_pods.add(pod)
        if ended:
            self.handed_off.labels(pod=pod).inc(ended)
        if drained:
            self.drained.labels(pod=pod).inc(drained)

    def retain_pods(self, keep: Callable[[str], bool]) -> None:
        """Drop the series of pods for which `keep(pod)` is false (left the node): their
        latency series and their hand-off counters, so pod churn cannot grow the scrape."""
        for key in [k for k in self._pods if not keep(k[0])]:
            del self._pods[key]
        for pod in [p for p in self._handoff_pods if not keep(p)]:
            self._handoff_pods.discard(pod)
            for counter in (self.handed_off, self.drained):
                with contextlib.suppress(KeyError):
                    counter.remove(pod)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- collecting (scrape time) -------------------------------------------------------

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        for key, value in sorted(self._source_stats.items()):
            yield GaugeMetricFamily(
                f"aviator_agent_bpf_{_metric_name(key)}",
                f"BPF program statistic {key}",
                value=value,
            )
        yield from self._pod_histograms()
        yield GaugeMetricFamily(
            "aviator_agent_pod_series_dropped",
            "Pod latency series not exported because of the cap on pods",
            value=self.pod_series_dropped,
        )
        if self.probe_stats is not None:
            s = self.probe_stats
            probes = CounterMetricFamily(
                "aviator_agent_probes", "Probes by outcome", labels=["result"]
            )
            probes.add_metric(["sent"], s.sent)
            probes.add_metric(["failed"], s.failed)
            probes.add_metric(["rate_limited"], s.rate_limited)
            probes.add_metric(["skipped_busy"], s.skipped_busy)
            probes.add_metric(["skipped_opaque"], s.skipped_opaque)
            yield probes
        if self.stream is not None:
            yield from self._stream_metrics(self.stream)

    def _pod_histograms(
        self,
    ) -> Iterable[HistogramMetricFamily | GaugeMetricFamily | CounterMetricFamily]:
        fam = HistogramMetricFamily(
            "aviator_agent_pod_request_duration_seconds",
            "Request latency per local pod, measured on the pod's own socket",
            labels=["pod", "port"],
        )
        protocol = GaugeMetricFamily(
            "aviator_agent_pod_protocol",
            "What a local pod's requests were recognised as (value 1): http1, h2 and grpc "
            "are per request or stream, opaque is first bytes in to first bytes out",
            labels=["pod", "port", "protocol"],
        )
        statuses = CounterMetricFamily(
            "aviator_agent_pod_response_statuses",
            "Responses of a local pod whose status was read",
            labels=["pod", "port"],
        )
        errors = CounterMetricFamily(
            "aviator_agent_pod_response_errors",
            "Of those, errors: HTTP 5xx, gRPC status other than OK",
            labels=["pod", "port"],
        )
        fold = self.buckets.fold
        for (pod, port), series in sorted(self._pods.items()):
            fam.add_metric([pod, str(port)], fold(series.hist), sum_value=series.sum_us / 1e6)
            protocol.add_metric([pod, str(port), series.protocol], 1.0)
            statuses.add_metric([pod, str(port)], series.statuses)
            errors.add_metric([pod, str(port)], series.errors)
        yield from (fam, protocol, statuses, errors)

    @staticmethod
    def _stream_metrics(stream: StreamFanout) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily(
            "aviator_agent_stream_connected", "Connected to this controller replica", labels=["url"]
        )
        sent = CounterMetricFamily(
            "aviator_agent_stream_sent", "Snapshots sent to this controller replica", labels=["url"]
        )
        dropped = CounterMetricFamily(
            "aviator_agent_stream_dropped",
            "Snapshots dropped because this controller replica fell behind",
            labels=["url"],
        )
        for url, conn in sorted(stream.connections.items()):
            up.add_metric([url], 1.0 if conn.connected else 0.0)
            sent.add_metric([url], conn.sent)
            dropped.add_metric([url], conn.dropped)
        yield from (up, sent, dropped)
