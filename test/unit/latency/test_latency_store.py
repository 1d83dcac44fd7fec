"""The controller's latency store: windows, staleness, roles, bounded memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.latency.histogram import Histogram
from aviator.latency.schema import EndpointWindow, Role, Snapshot, Source
from aviator.latency.store import LatencyStore


def ep(
    ip: str,
    values: list[int],
    *,
    port: int = 8080,
    role: Role = "server",
    pod: str | None = "default/p",
    rif: int = 0,
) -> EndpointWindow:
    h = Histogram.from_values(values)
    return EndpointWindow(
        ip, port, role, pod, h, h.count, sum(values), max(values, default=0), rif, 0
    )


def snap(*eps: EndpointWindow, source: Source = "ebpf", node: str = "n1") -> Snapshot:
    return Snapshot(node=node, source=source, time=0.0, window_s=1.0, endpoints=eps)


def test_estimate_reports_window_quantiles_in_ms() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    values = [10_000] * 90 + [500_000] * 10
    assert store.ingest(snap(ep("10.0.0.1", values, rif=3)), now=100.0) == 1
    est = store.estimate("10.0.0.1", now=101.0)
    assert est is not None
    h = Histogram.from_values(values)
    assert est.p50_ms == h.quantile(0.5) / 1000  # type: ignore[operator]
    assert est.p99_ms == h.quantile(0.99) / 1000  # type: ignore[operator]
    assert abs(est.p50_ms - 10) <= 10 / 32 and abs(est.p99_ms - 500) <= 500 / 32
    assert (est.rif, est.samples, est.age_s, est.source) == (3, 100, 1.0, "ebpf")
    assert store.estimate("10.0.0.2", now=101.0) is None


def test_stale_data_is_unknown_never_fast() -> None:
    store = LatencyStore(window_s=60, stale_after_s=5)
    store.ingest(snap(ep("10.0.0.1", [1000])), now=0.0)
    assert store.estimate("10.0.0.1", now=5.0) is not None
    assert store.estimate("10.0.0.1", now=5.1) is None
    assert store.merged(["10.0.0.1"], now=5.1).count == 0


def test_old_deltas_leave_the_window() -> None:
    store = LatencyStore(window_s=3, stale_after_s=100)
    store.ingest(snap(ep("10.0.0.1", [1000] * 5)), now=0.0)
    store.ingest(snap(ep("10.0.0.1", [200_000] * 2)), now=2.0)
    est = store.estimate("10.0.0.1", now=2.5)
    assert est is not None and est.samples == 7
    est = store.estimate("10.0.0.1", now=3.5)  # the first delta is now older than 3 s
    assert est is not None and est.samples == 2 and est.p50_ms > 190
    # A fresh endpoint with an empty window has no latency to report.
    assert store.estimate("10.0.0.1", now=5.0) is None


def test_server_data_wins_over_client_data() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest(snap(ep("10.0.0.1", [900_000], role="client")), now=0.0)
    client_only = store.estimate("10.0.0.1", now=0.0)
    assert client_only is not None and client_only.p50_ms > 800
    store.ingest(snap(ep("10.0.0.1", [1000], role="server")), now=1.0)
    est = store.estimate("10.0.0.1", now=1.0)
    assert est is not None and est.p50_ms < 1.1 and est.samples == 1
    assert store.merged(["10.0.0.1"], now=1.0).count == 1


def test_ports_are_separate_and_merged_when_unspecified() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest(
        snap(ep("10.0.0.1", [1000], port=80, rif=1), ep("10.0.0.1", [3000] * 3, port=81, rif=2)),
        now=0,
    )
    one = store.estimate("10.0.0.1", now=0, port=80)
    both = store.estimate("10.0.0.1", now=0)
    assert one is not None and (one.samples, one.rif) == (1, 1)
    assert both is not None and (both.samples, both.rif) == (4, 3)
    assert both.p50_ms == Histogram.from_values([3000]).quantile(0.5) / 1000  # type: ignore[operator]
    assert store.estimate("10.0.0.1", now=0, port=82) is None


def test_ip_reused_by_a_new_pod_starts_a_new_window() -> None:
    store = LatencyStore(window_s=60, stale_after_s=60)
    store.ingest(snap(ep("10.0.0.1", [900_000] * 10, pod="ns/old")), now=0)
    store.ingest(snap(ep("10.0.0.1", [1000], pod="ns/new")), now=1)
    est = store.estimate("10.0.0.1", now=1)
    assert est is not None and est.samples == 1


def test_unseen_endpoints_are_forgotten() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5, forget_after_s=30)
    store.ingest(snap(ep("10.0.0.1", [1000]), ep("10.0.0.2", [1000])), now=0)
    assert len(store) == 2
    store.ingest(snap(ep("10.0.0.2", [1000])), now=20)
    assert store.prune(now=31) == 1
    assert len(store) == 1
    store.forget("10.0.0.2")
    assert len(store) == 0 and store.estimate("10.0.0.2", now=31) is None


def test_window_length_is_bounded() -> None:
    store = LatencyStore(window_s=1e6, stale_after_s=1e6, max_deltas=4)
    for t in range(10):
        store.ingest(snap(ep("10.0.0.1", [1000 + t])), now=float(t))
    est = store.estimate("10.0.0.1", now=10)
    assert est is not None and est.samples == 4


def test_merged_spans_pods() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest(snap(ep("10.0.0.1", [1000] * 3), ep("10.0.0.2", [2000] * 2)), now=0)
    store.ingest(snap(ep("10.0.0.3", [9000])), now=0)
    m = store.merged(["10.0.0.1", "10.0.0.2", "10.0.0.404"], now=1)
    assert m == Histogram.from_values([1000] * 3 + [2000] * 2)


# (time step, ip index, values) for a model-based check of the window arithmetic.
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=3.0),
        st.integers(min_value=0, max_value=2),
        st.lists(st.integers(min_value=1, max_value=2_000_000), max_size=8),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(steps, st.floats(min_value=0.5, max_value=8.0), st.floats(min_value=0.5, max_value=8.0))
def test_store_matches_a_naive_window(
    plan: list[tuple[float, int, list[int]]], window_s: float, stale_s: float
) -> None:
    store = LatencyStore(window_s=window_s, stale_after_s=stale_s)
    log: list[tuple[float, str, list[int]]] = []
    now = 0.0
    for step, which, values in plan:
        now += step
        ip = f"10.0.0.{which}"
        store.ingest(snap(ep(ip, values)), now=now)
        log.append((now, ip, values))
        for probe_ip in ("10.0.0.0", "10.0.0.1", "10.0.0.2"):
            seen = [t for t, i, _ in log if i == probe_ip]
            window = [v for t, i, vs in log if i == probe_ip and t > now - window_s for v in vs]
            est = store.estimate(probe_ip, now=now)
            if not seen or seen[-1] < now - stale_s or not window:
                assert est is None
            else:
                assert est is not None
                expected = Histogram.from_values(window)
                assert est.samples == len(window)
                assert est.p99_ms == expected.quantile(0.99) / 1000  # type: ignore[operator]


def test_origins_never_mix() -> None:
    """An agent's data (eBPF or its probe fallback) and the controller's probes of the
    same pod are separate: each reader gets only the origin it names."""
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest(snap(ep("10.0.0.1", [1000] * 4), source="probe"), now=0.0)
    store.ingest_probes([ep("10.0.0.1", [300_000] * 3)], now=0.0, keep_s=3.0)
    agent = store.estimate("10.0.0.1", now=0.5)
    controller = store.estimate("10.0.0.1", now=0.5, origin="controller")
    assert agent is not None and (agent.samples, agent.source) == (4, "probe")
    assert agent.p99_ms < 2
    assert controller is not None and (controller.samples, controller.source) == (3, "probe")
    assert controller.p99_ms > 290
    assert store.merged(["10.0.0.1"], now=0.5).count == 4
    assert store.merged(["10.0.0.1"], now=0.5, origin="controller").count == 3
    assert store.estimate("10.0.0.2", now=0.5, origin="controller") is None
    store.forget("10.0.0.1")  # the pod is gone: both go
    assert len(store) == 0


def test_probe_rounds_age_by_their_own_span() -> None:
    """A probe window spans `keep_s` whatever the store's agent window and staleness;
    a pod not probed again ages out by the clock (stale slow samples must not pin an
    ejected pod's p99)."""
    store = LatencyStore(window_s=10, stale_after_s=1)
    store.ingest_probes([ep("10.0.0.1", [200_000] * 3)], now=0.0, keep_s=3.0)
    store.ingest_probes([ep("10.0.0.1", [1000] * 3)], now=2.0, keep_s=3.0)
    est = store.estimate("10.0.0.1", now=2.5, origin="controller")
    assert est is not None and est.samples == 6 and est.age_s == 0.5
    est = store.estimate("10.0.0.1", now=3.5, origin="controller")
    assert est is not None and est.samples == 3 and est.p99_ms < 2
    assert store.estimate("10.0.0.1", now=5.5, origin="controller") is None
    assert store.merged(["10.0.0.1"], now=5.5, origin="controller").count == 0
