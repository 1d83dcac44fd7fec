"""Agent metrics: per-pod histograms folded into Prometheus buckets, capped series."""

from __future__ import annotations

from aviator.agent.metrics import AgentMetrics
from aviator.agent.promfold import series_per_endpoint
from aviator.latency.histogram import Histogram
from aviator.latency.schema import EndpointWindow, Snapshot


def window(
    pod: str | None, values: list[int], *, role: str = "server", port: int = 80
) -> EndpointWindow:
    h = Histogram.from_values(values)
    return EndpointWindow("10.0.0.1", port, role, pod, h, h.count, sum(values), max(values), 0, 1)  # type: ignore[arg-type]


def test_histogram_buckets_follow_the_chosen_resolution() -> None:
    for per_octave in (16, 2):
        m = AgentMetrics(buckets_per_octave=per_octave)
        m.observe(Snapshot("n", "ebpf", 0.0, 1.0, (window("ns/a", [100, 900, 3000, 20_000_000]),)))
        lines = [
            line
            for line in m.render().decode().splitlines()
            if line.startswith("aviator_agent_pod_request_duration_seconds")
        ]
        # Buckets, +Inf, _sum and _count: what docs/agent.md states per endpoint.
        assert len(lines) == series_per_endpoint(per_octave)
        assert 'le="+Inf",pod="ns/a",port="80"} 4.0' in "\n".join(lines)
        # 20 s is above the top bound (16.8 s): only +Inf holds it.
        top = [line for line in lines if 'le="16.7772155"' in line]
        assert top and top[0].endswith(" 3.0")


def test_pod_series_are_capped_and_follow_the_pods() -> None:
    m = AgentMetrics(max_pods=2)
    snap = Snapshot(
        "n",
        "ebpf",
        0.0,
        1.0,
        (
            window("ns/a", [1000]),
            window("ns/b", [2000]),
            window("ns/c", [3000]),  # over the cap
            window(None, [4000]),  # unmapped: never a series
            window("ns/x", [5000], role="client"),
        ),
    )
    m.observe(snap)
    text = m.render().decode()
    assert 'aviator_agent_pod_request_duration_seconds_count{pod="ns/a",port="80"} 1.0' in text
    assert 'pod="ns/b"' in text and 'pod="ns/c"' not in text
    assert "aviator_agent_pod_series_dropped 1.0" in text
    assert 'aviator_agent_requests_total{role="server"} 4.0' in text
    assert "aviator_agent_requests_aborted_total 5.0" in text
    m.retain_pods(lambda pod: pod != "ns/a")
    m.observe(Snapshot("n", "ebpf", 0.0, 1.0, (window("ns/c", [3000]),)))
    text = m.render().decode()
    assert 'pod="ns/a"' not in text and 'pod="ns/c"' in text
    m.set_source_stats({"events.seen": 7})
    assert "aviator_agent_bpf_events_seen 7.0" in m.render().decode()


def test_pod_protocol_statuses_and_errors() -> None:
    from dataclasses import replace

    m = AgentMetrics()
    grpc = replace(window("ns/g", [1000, 2000]), protocol="grpc", statuses=2, errors=1)
    m.observe(Snapshot("n", "ebpf", 0.0, 1.0, (grpc, window("ns/o", [1000]))))
    m.observe(Snapshot("n", "ebpf", 1.0, 2.0, (replace(grpc, statuses=1, errors=0),)))
    text = m.render().decode()
    assert 'aviator_agent_pod_protocol{pod="ns/g",port="80",protocol="grpc"} 1.0' in text
    assert 'aviator_agent_pod_protocol{pod="ns/o",port="80",protocol="opaque"} 1.0' in text
    assert 'aviator_agent_pod_response_statuses_total{pod="ns/g",port="80"} 3.0' in text
    assert 'aviator_agent_pod_response_errors_total{pod="ns/g",port="80"} 1.0' in text


def test_handoff_series_leave_with_their_pods() -> None:
    """Hand-off counters are per pod: under churn they must go with the pods, as the
    latency series do, or every pod ever handed off stays in the scrape."""
    m = AgentMetrics()
    m.count_handoff("ns/a", ended=3)
    m.count_handoff("ns/b", ended=1, drained=2)
    text = m.render().decode()
    assert 'aviator_agent_connections_handed_off_total{pod="ns/a"} 3.0' in text
    assert 'aviator_agent_connections_drained_total{pod="ns/b"} 2.0' in text
    m.retain_pods(lambda pod: pod == "ns/a")
    text = m.render().decode()
    assert 'pod="ns/b"' not in text
    assert 'aviator_agent_connections_handed_off_total{pod="ns/a"} 3.0' in text
    m.retain_pods(lambda pod: False)
    assert 'pod="ns/a"' not in m.render().decode()
