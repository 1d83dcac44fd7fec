"""The controller's latency store: windows, staleness, roles, bounded memory."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.latency.histogram import Histogram
from aviator.latency.quota import (
    AGENT_BUCKETS,
    AGENT_ENDPOINTS,
    STORE_BUCKETS,
    STORE_ENDPOINTS,
    StoreLimits,
)
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


def test_silent_tells_a_pod_whose_agent_stopped_reporting_from_one_never_measured() -> None:
    store = LatencyStore(window_s=60, stale_after_s=5, forget_after_s=100)
    assert not store.silent("10.0.0.1", now=0.0)  # never measured
    store.ingest(snap(ep("10.0.0.1", [1000], port=8080)), now=0.0)
    store.ingest(snap(ep("10.0.0.1", [1000], port=9090), node="n2"), now=4.0)
    assert not store.silent("10.0.0.1", now=5.0)  # fresh
    assert store.silent("10.0.0.1", now=5.1, ports=[8080])
    assert not store.silent("10.0.0.1", now=5.1)  # the 9090 window is still fresh
    assert store.silent("10.0.0.1", now=9.1) and store.estimate("10.0.0.1", now=9.1) is None
    assert not store.silent("10.0.0.1", now=9.1, origin="controller")
    # n1 comes back after 9 s of silence (restarted) and has not measured it again yet.
    store.heard("n1", now=9.0)
    assert store.silent("10.0.0.1", now=9.1, ports=[8080])
    store.heard("n1", now=10.0)
    assert store.silent("10.0.0.1", now=14.1, ports=[8080])
    store.ingest(snap(ep("10.0.0.1", [1000], port=8080)), now=15.0)
    assert not store.silent("10.0.0.1", now=15.1, ports=[8080])
    # Then no traffic for it while n1 keeps reporting: idle, not silent.
    for t in range(16, 24):
        store.heard("n1", now=float(t))
    assert not store.silent("10.0.0.1", now=23.1, ports=[8080])
    assert not store.silent("10.0.0.1", now=115.1)  # past forget_after_s: as if never seen
    store.ingest(snap(ep("10.0.0.2", [1000], role="probe")), now=0.0)
    assert not store.silent("10.0.0.2", now=9.0)  # the kubelet's probes are not its latency


def test_a_pod_whose_data_lapses_after_its_agent_stopped_is_silent_when_it_lapses() -> None:
    """An agent restart: the agent stops 2 s after a standby pod's last keep-warm
    sample. The pod's data lapses 8 s after the agent's last report, and it is silent
    then (its agent stopped before it lapsed), not stale_after_s after that report."""
    store = LatencyStore(window_s=10, stale_after_s=10)
    store.ingest(snap(ep("10.0.0.1", [1000])), now=0.0)
    store.ingest(snap(ep("10.0.0.2", [1000])), now=2.0)  # the agent's last report
    assert store.estimate("10.0.0.1", now=10.1) is None
    assert store.silent("10.0.0.1", now=10.1)
    assert not store.silent("10.0.0.2", now=10.1)  # its data has not lapsed yet
    assert store.silent("10.0.0.2", now=12.1)


def test_samples_leave_with_later_reports_and_lapse_like_staleness() -> None:
    """A window shorter than the staleness bound empties first while its agent still
    sends the endpoint (empty): the later reports cover the window, the samples leave,
    the pod is idle (not silent). An agent that stops leaves its last report standing
    until the endpoint goes stale: then the pod is silent."""
    store = LatencyStore(window_s=4, stale_after_s=10)
    store.ingest(snap(ep("10.0.0.2", [1000])), now=0.0)
    for t in (1.0, 2.0):
        store.ingest(snap(ep("10.0.0.2", [])), now=t)
    assert store.estimate("10.0.0.2", now=4.1) is not None  # n1 stopped at 2
    assert store.estimate("10.0.0.2", now=12.1) is None
    assert store.silent("10.0.0.2", now=12.1)
    store.heard("n1", now=13.0, anew=True)  # a new stream: n1's agent restarted
    store.ingest(snap(ep("10.0.0.2", [])), now=13.0)
    assert store.silent("10.0.0.2", now=13.1)  # not measured since: unknown to the new agent
    store.ingest(snap(ep("10.0.0.2", [1000])), now=14.0)
    assert store.estimate("10.0.0.2", now=14.1) is not None
    store2 = LatencyStore(window_s=4, stale_after_s=10)
    store2.ingest(snap(ep("10.0.0.2", [1000])), now=0.0)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):
        store2.ingest(snap(ep("10.0.0.2", [])), now=t)
    assert store2.estimate("10.0.0.2", now=5.1) is None
    assert not store2.silent("10.0.0.2", now=5.1)  # its agent kept reporting: no traffic


def test_a_restarted_agents_first_report_that_takes_the_samples_out_leaves_the_pod_silent() -> None:
    """An agent restarted within the staleness bound: its first report comes a gap
    after the old one's last, and takes out, with half that gap's slack, deltas
    sooner than a window after they came. The pod's data lapsed then, when its agent
    had just come back and had not measured it: silent (it keeps its place), not a
    pod with no traffic that fails open."""
    store = LatencyStore(window_s=10, stale_after_s=10)
    for t in (0.0, 1.0, 2.0):  # a slow pod's keep-warm samples, one a report
        store.ingest(snap(ep("10.0.0.2", [500_000])), now=t)
    store.heard("n1", now=9.0, anew=True)  # the new agent's stream, 7 s later
    store.ingest(snap(ep("10.0.0.2", [])), now=9.0)  # no sample of it yet
    assert store.estimate("10.0.0.2", now=9.5) is None  # 9 - 10 + 3.5 took out 0, 1 and 2
    assert store.silent("10.0.0.2", now=9.5)
    store.ingest(snap(ep("10.0.0.2", [500_000])), now=10.0)
    assert store.estimate("10.0.0.2", now=10.5) is not None


def test_a_new_store_is_warming_until_each_nodes_agent_reported_for_a_window() -> None:
    """A replica that just started cannot tell a pod it has no data for from one its
    predecessor measured: per node, until that node's agent (first heard within the
    connect grace of the start: an agent retries within 36 s) has reported for a
    window; a node not heard of within the grace has no agent."""
    store = LatencyStore(window_s=10, stale_after_s=5)
    assert not store.reporters.warming("n1", now=100.0)  # not begun: never warming
    store.reporters.begin(100.0)
    assert store.reporters.warming("n1", now=100.0) and store.reporters.warming("n2", now=135.9)
    assert not store.reporters.warming("n2", now=136.0)  # no agent has spoken for n2
    store.heard("n1", now=101.0, anew=True)
    store.ingest(snap(ep("10.0.0.1", [1000])), now=102.0)
    assert store.reporters.warming("n1", now=110.9)
    assert not store.reporters.warming("n1", now=111.0)  # a window of n1's reports
    store.heard("n1", now=130.0, anew=True)  # n1's agent restarts: `silent`'s to say
    assert not store.reporters.warming("n1", now=130.0)
    store.heard("n3", now=134.0)  # an agent in its longest backoff
    assert store.reporters.warming("n3", now=143.9) and not store.reporters.warming("n3", now=144.0)
    store.heard("n4", now=137.0)  # a node that joins later is no predecessor's
    assert not store.reporters.warming("n4", now=137.0)
    long_bound = LatencyStore(window_s=10, stale_after_s=60)
    long_bound.reporters.begin(0.0)
    assert long_bound.reporters.warming("n1", now=59.9)  # the staleness bound, when longer


def test_old_deltas_leave_the_window_as_later_reports_come() -> None:
    store = LatencyStore(window_s=4, stale_after_s=100)
    store.ingest(snap(ep("10.0.0.1", [1000] * 5)), now=0.0)
    store.ingest(snap(ep("10.0.0.1", [200_000] * 2)), now=2.0)
    est = store.estimate("10.0.0.1", now=2.5)
    assert est is not None and est.samples == 7
    # No report since: the window is as the last report left it, whatever the clock.
    assert store.estimate("10.0.0.1", now=4.5) == est
    # The next report: the first delta is a window old (give or take half the gap).
    store.ingest(snap(ep("10.0.0.1", [])), now=4.0)
    est = store.estimate("10.0.0.1", now=4.5)
    assert est is not None and est.samples == 2 and est.p50_ms > 190
    # A fresh endpoint with an empty window has no latency to report.
    store.ingest(snap(ep("10.0.0.1", [])), now=6.0)
    assert store.estimate("10.0.0.1", now=6.0) is None


def test_a_window_holds_the_same_reports_whatever_the_jitter() -> None:
    """Reports a little late or early leave the same deltas as reports on time: a
    window holds the same number of reports (and a steady pod the same estimate)
    whatever the jitter of its agent's ticks; a pod held while steady and sent every
    5 s, however late, keeps its last two reports in a 10 s window."""
    store = LatencyStore(window_s=10, stale_after_s=20)
    at = 0.0
    estimates = []
    for jitter in [0.0, 0.1, -0.1, 0.05, 0.1, -0.1, 0.08, 0.0, -0.05, 0.1, -0.1, 0.0, 0.1]:
        at += 1.0 + jitter
        store.ingest(snap(ep("10.0.0.1", [1000] * 5)), now=at)
        estimates.append(store.estimate("10.0.0.1", now=at))
    assert [e.samples for e in estimates[10:] if e is not None] == [50, 50, 50]
    assert estimates[10] is estimates[11] is estimates[12]  # the same figures: the same object
    paced = LatencyStore(window_s=10, stale_after_s=20)
    for k, late in enumerate([0.0, 0.6, 1.2, 0.1, 0.9, 0.0]):
        paced.ingest(snap(ep("10.0.0.1", [1000] * 25)), now=5.0 * k + late)
        est = paced.estimate("10.0.0.1", now=5.0 * k + late)
        assert est is not None and est.samples == (25 if k == 0 else 50)


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
        # Repeated values too: a window that adds what it expires keeps its total.
        st.lists(
            st.integers(min_value=1, max_value=2_000_000) | st.sampled_from([1_000, 50_000]),
            max_size=8,
        ),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(steps, st.floats(min_value=0.5, max_value=8.0), st.floats(min_value=0.5, max_value=8.0))
def test_store_matches_a_naive_window(
    plan: list[tuple[float, int, list[int]]], window_s: float, stale_s: float
) -> None:
    """The window of an endpoint, worked out from its reports alone: at each report
    the values that arrived a window before it leave, give or take half the time since
    the previous report, and a report after a stale spell starts afresh."""
    store = LatencyStore(window_s=window_s, stale_after_s=stale_s)
    reports: dict[str, list[tuple[float, list[int]]]] = {}  # (arrival, values)
    last: dict[str, float] = {}
    now = 0.0
    for step, which, values in plan:
        now += step
        ip = f"10.0.0.{which}"
        store.ingest(snap(ep(ip, values)), now=now)
        held = reports.get(ip, [])
        if ip in last and now - last[ip] > stale_s:
            held = []
        if ip in last:
            before = now - window_s + min(now - last[ip], window_s) / 2
            held = [(t, vs) for t, vs in held if t > before]
        reports[ip] = [*held, (now, values)]
        last[ip] = now
        for probe_ip in ("10.0.0.0", "10.0.0.1", "10.0.0.2"):
            window = [v for _, vs in reports.get(probe_ip, []) for v in vs]
            est = store.estimate(probe_ip, now=now)
            if probe_ip not in last or last[probe_ip] < now - stale_s or not window:
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
    """A probe window spans `keep_s` of rounds whatever the store's agent window and
    staleness; slow samples leave as later rounds come (they must not pin an ejected
    pod's p99), and a pod not probed again is unknown once `keep_s` passed."""
    store = LatencyStore(window_s=10, stale_after_s=1)
    store.ingest_probes([ep("10.0.0.1", [200_000] * 3)], now=0.0, keep_s=4.0)
    store.ingest_probes([ep("10.0.0.1", [1000] * 3)], now=2.0, keep_s=4.0)
    est = store.estimate("10.0.0.1", now=2.5, origin="controller")
    assert est is not None and est.samples == 6 and est.age_s == 0.5
    store.ingest_probes([ep("10.0.0.1", [1000] * 3)], now=4.0, keep_s=4.0)
    est = store.estimate("10.0.0.1", now=4.0, origin="controller")
    assert est is not None and est.samples == 6 and est.p99_ms < 2
    assert store.estimate("10.0.0.1", now=8.5, origin="controller") is None
    assert store.merged(["10.0.0.1"], now=8.5, origin="controller").count == 0


def held(store: LatencyStore) -> dict[str, tuple[int, int]]:
    """(endpoints, buckets) per owner, counted from the windows themselves."""
    out: dict[str, tuple[int, int]] = {}
    for win in store._windows.values():
        e, b = out.get(win.owner, (0, 0))
        out[win.owner] = (e + 1, b + sum(len(d[1]) for d in win.deltas))
    return out


def check_accounting(store: LatencyStore) -> None:
    counted = held(store)
    for owner, (e, b) in counted.items():
        usage = store.usage(owner)
        assert (usage.endpoints, usage.buckets) == (e, b), owner
    assert store.total.endpoints == sum(e for e, _ in counted.values()) == len(store)
    assert store.total.buckets == sum(b for _, b in counted.values())


def test_endpoints_are_bounded_per_agent_and_in_total() -> None:
    limits = StoreLimits(endpoints_per_agent=2, endpoints=3, buckets_per_agent=100, buckets=100)
    store = LatencyStore(window_s=10, stale_after_s=5, limits=limits)
    a = store.ingest_snapshot(snap(*[ep(f"10.0.0.{i}", [1000]) for i in range(3)], node="n1"), 0.0)
    assert (a.accepted, dict(a.refused)) == (2, {AGENT_ENDPOINTS: 1})
    # Known endpoints still take data; the agent's other nodes are not affected.
    b = store.ingest_snapshot(snap(*[ep("10.0.0.0", [2000])], node="n1"), 1.0)
    assert b.accepted == 1
    c = store.ingest_snapshot(
        snap(*[ep("10.0.1.0", [1000]), ep("10.0.1.1", [1000])], node="n2"), 1.0
    )
    assert (c.accepted, dict(c.refused)) == (1, {STORE_ENDPOINTS: 1})
    # The controller's probes are never refused, but count.
    assert store.ingest_probes([ep("10.0.2.0", [1000])], now=1.0, keep_s=3.0) == 1
    assert store.total.endpoints == 4
    assert store.estimate("10.0.0.2", now=1.0) is None  # refused: unknown, never fast
    check_accounting(store)
    store.forget("10.0.0.0")
    assert store.ingest_snapshot(snap(*[ep("10.0.0.2", [1000])], node="n1"), 2.0).accepted == 0
    store.forget("10.0.2.0")  # the total had room for one more only once both went
    assert store.ingest_snapshot(snap(*[ep("10.0.0.2", [1000])], node="n1"), 2.0).accepted == 1
    check_accounting(store)


def test_buckets_are_bounded_and_freed_as_deltas_leave_the_window() -> None:
    limits = StoreLimits(buckets_per_agent=10, buckets=15)
    store = LatencyStore(window_s=3, stale_after_s=5, limits=limits)
    wide = list(range(1000, 9000, 1000))  # 8 values, 8 buckets
    assert store.ingest_snapshot(snap(*[ep("10.0.0.1", wide)], node="n1"), 0.0).accepted == 1
    assert store.usage("n1").buckets == 8
    refused = store.ingest_snapshot(snap(*[ep("10.0.0.1", wide)], node="n1"), 1.0).refused
    assert dict(refused) == {AGENT_BUCKETS: 1}
    refused = store.ingest_snapshot(snap(*[ep("10.0.0.2", wide)], node="n2"), 1.0).refused
    assert dict(refused) == {STORE_BUCKETS: 1}
    # The next report, 3 s on: the first delta leaves the window, and there is room.
    assert store.ingest_snapshot(snap(*[ep("10.0.0.1", wide)], node="n1"), 3.0).accepted == 1
    assert store.usage("n1").buckets == 8
    # A stale endpoint's deltas leave too, at the next prune.
    store.prune(now=10.0)
    assert store.usage("n1").buckets == 0 and store.total.buckets == 0
    assert store.usage("n1").endpoints == 1
    check_accounting(store)


def test_a_report_refused_after_a_delta_left_still_frees_what_left() -> None:
    store = LatencyStore(window_s=3, stale_after_s=5, limits=StoreLimits(buckets_per_agent=10))
    four, wide = list(range(1000, 5000, 1000)), list(range(1000, 9000, 1000))
    assert store.ingest_snapshot(snap(*[ep("10.0.0.1", four)]), 0.0).accepted == 1
    assert store.ingest_snapshot(snap(*[ep("10.0.0.1", four)]), 1.0).accepted == 1
    assert store.usage("n1").buckets == 8
    # The first delta leaves; 4 + 8 buckets are more than the agent may hold.
    assert dict(store.ingest_snapshot(snap(*[ep("10.0.0.1", wide)]), 2.5).refused) == {
        AGENT_BUCKETS: 1
    }
    assert store.usage("n1").buckets == 4
    check_accounting(store)


def test_an_endpoint_another_agent_reports_starts_afresh_under_it() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest_snapshot(snap(*[ep("10.0.0.1", [900_000] * 5)], node="n1"), 0.0)
    store.ingest_snapshot(snap(*[ep("10.0.0.1", [1000])], node="n2"), 1.0)
    est = store.estimate("10.0.0.1", now=1.0)
    assert est is not None and est.samples == 1
    assert store.usage("n1").endpoints == 0 and store.usage("n2").endpoints == 1
    check_accounting(store)


operations = st.lists(
    st.tuples(
        st.sampled_from(["ingest", "probe", "forget", "prune", "read"]),
        st.sampled_from(["n1", "n2"]),
        st.integers(min_value=0, max_value=4),
        st.lists(st.integers(min_value=1, max_value=5_000_000), max_size=6),
        st.floats(min_value=0.0, max_value=4.0),
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(operations)
def test_accounting_matches_what_the_windows_hold(
    ops: list[tuple[str, str, int, list[int], float]],
) -> None:
    limits = StoreLimits(endpoints_per_agent=3, endpoints=5, buckets_per_agent=12, buckets=20)
    store = LatencyStore(window_s=3, stale_after_s=2, forget_after_s=6, limits=limits)
    now = 0.0
    for op, owner, which, values, step in ops:
        now += step
        ip = f"10.0.0.{which}"
        if op == "ingest":
            store.ingest_snapshot(snap(ep(ip, values, pod=f"ns/{owner}"), node=owner), now)
        elif op == "probe":
            store.ingest_probes([ep(ip, values)], now, keep_s=2.0)
        elif op == "forget":
            store.forget(ip)
        elif op == "prune":
            store.prune(now)
        else:
            store.estimate(ip, now)
        check_accounting(store)
        for o in ("n1", "n2"):
            assert store.usage(o).endpoints <= limits.endpoints_per_agent
            assert store.usage(o).buckets <= limits.buckets_per_agent
        agents = sum(store.usage(o).endpoints for o in ("n1", "n2"))
        assert agents <= limits.endpoints


def test_error_rate_is_summed_over_the_window_and_leaves_with_it() -> None:
    store = LatencyStore(window_s=10, stale_after_s=10)
    first = replace(ep("10.0.0.1", [1000] * 10), statuses=10, errors=5, protocol="h2")
    second = replace(ep("10.0.0.1", [1000] * 30), statuses=20, errors=1, protocol="h2")
    store.ingest(snap(first), now=0.0)
    store.ingest(snap(second), now=6.0)
    est = store.estimate("10.0.0.1", now=6.0)
    assert est is not None
    assert (est.statuses, est.errors, est.protocol) == (30, 6, "h2")
    assert est.error_percent == 20.0
    # The first delta leaves the window: so do its statuses and errors.
    store.ingest(snap(ep("10.0.0.1", [])), now=10.0)
    est = store.estimate("10.0.0.1", now=10.5)
    assert est is not None and (est.samples, est.statuses, est.errors) == (30, 20, 1)


def test_a_report_without_samples_still_says_what_is_open() -> None:
    """The estimate read before is not handed out again once a report changed the
    requests in flight or the oldest open request, samples or not."""
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest(snap(ep("10.0.0.1", [1000])), now=0.0)
    before = store.estimate("10.0.0.1", now=0.0)
    assert before is not None and (before.rif, before.oldest_open_ms) == (0, 0.0)
    store.ingest(snap(replace(ep("10.0.0.1", []), rif=3, oldest_open_us=700_000)), now=1.0)
    after = store.estimate("10.0.0.1", now=1.0)
    assert after is not None and (after.rif, after.oldest_open_ms) == (3, 700.0)


def test_oldest_open_request_is_the_latest_report() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    store.ingest(snap(replace(ep("10.0.0.1", [1000]), rif=1, oldest_open_us=700_000)), now=0.0)
    est = store.estimate("10.0.0.1", now=0.5)
    assert est is not None and est.oldest_open_ms == 700.0 and est.p99_ms < 2
    store.ingest(snap(replace(ep("10.0.0.1", [1000]), oldest_open_us=0)), now=1.0)
    est = store.estimate("10.0.0.1", now=1.0)
    assert est is not None and est.oldest_open_ms == 0.0


def test_an_endpoint_that_never_answered_has_its_open_request_as_a_lower_bound() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    hung = replace(ep("10.0.0.1", []), rif=3, oldest_open_us=2_000_000, protocol="http1")
    store.ingest(snap(hung), now=0.0)
    est = store.estimate("10.0.0.1", now=0.0)
    assert est is not None
    assert (est.samples, est.p50_ms, est.p99_ms, est.oldest_open_ms) == (0, 2000.0, 2000.0, 2000.0)
    # Nothing open and nothing completed: unknown, as ever.
    store.ingest(snap(replace(hung, rif=0, oldest_open_us=0)), now=1.0)
    assert store.estimate("10.0.0.1", now=1.0) is None


def test_several_ports_merge_open_ages_and_outcomes() -> None:
    store = LatencyStore(window_s=10, stale_after_s=5)
    a = replace(ep("10.0.0.1", [1000] * 4, port=80), statuses=4, errors=4, oldest_open_us=10)
    b = replace(ep("10.0.0.1", [1000] * 6, port=81), statuses=6, oldest_open_us=90_000)
    store.ingest(snap(a, b), now=0.0)
    est = store.estimate("10.0.0.1", now=0.0)
    assert est is not None
    assert (est.statuses, est.errors, est.oldest_open_ms) == (10, 4, 90.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 3.0),  # time since the previous report
            st.integers(1, 50),  # samples
            st.integers(0, 50),  # of which with a status
            st.integers(0, 50),  # of those, errors
            st.integers(0, 5_000_000),  # oldest open request
        ),
        min_size=1,
        max_size=20,
    )
)
def test_outcomes_are_exactly_those_of_the_deltas_in_the_window(
    reports: list[tuple[float, int, int, int, int]],
) -> None:
    store = LatencyStore(window_s=5, stale_after_s=4)
    now = 0.0
    held: list[tuple[float, int, int]] = []
    for gap, samples, statuses, errors, open_us in reports:
        now += gap
        statuses = min(statuses, samples)
        errors = min(errors, statuses)
        w = replace(ep("10.0.0.1", [1000] * samples), statuses=statuses, errors=errors)
        store.ingest(snap(replace(w, oldest_open_us=open_us)), now=now)
        # A window (5 s) before this report, give or take half the gap, leaves.
        if held:
            held = [h for h in held if h[0] > now - 5 + min(gap, 5) / 2]
        held = [*held, (now, statuses, errors)]
        est = store.estimate("10.0.0.1", now=now)
        assert est is not None
        assert (est.statuses, est.errors) == (sum(h[1] for h in held), sum(h[2] for h in held))
        assert est.oldest_open_ms == open_us / 1000.0
        assert est.errors <= est.statuses <= est.samples


@settings(max_examples=100)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["server", "probe"]),
            st.lists(st.integers(min_value=1, max_value=2_000_000), min_size=1, max_size=6),
            st.integers(min_value=0, max_value=6),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_kubelet_probes_are_never_the_pods_latency(
    plan: list[tuple[Role, list[int], int]],
) -> None:
    # Whatever probe windows come in between, the pod's figures are those of its own
    # (traffic and keep-warm) samples, and the probes' are reported beside them.
    store = LatencyStore(window_s=100, stale_after_s=100)
    own: list[int] = []
    probes: list[int] = []
    keepwarm = 0
    for i, (role, values, warm) in enumerate(plan):
        w = replace(ep("10.0.0.1", values, role=role), keepwarm=min(warm, len(values)))
        if role == "probe":
            w = replace(w, keepwarm=0)
            probes += values
        else:
            own += values
            keepwarm += w.keepwarm
        store.ingest(snap(w), now=float(i))
    est = store.estimate("10.0.0.1", now=float(len(plan)))
    if not own:
        assert est is None  # probes alone say nothing of the pod's latency
        return
    assert est is not None
    expected = Histogram.from_values(own)
    assert est.samples == len(own)
    assert est.keepwarm == keepwarm
    assert est.p50_ms == expected.quantile(0.5) / 1000  # type: ignore[operator]
    assert est.p99_ms == expected.quantile(0.99) / 1000  # type: ignore[operator]
    assert est.probe_samples == len(probes)
    if probes:
        truth = Histogram.from_values(probes)
        assert est.probe_p50_ms == truth.quantile(0.5) / 1000  # type: ignore[operator]
        assert est.probe_p99_ms == truth.quantile(0.99) / 1000  # type: ignore[operator]
    else:
        assert est.probe_p50_ms is None and est.probe_p99_ms is None
    merged = store.merged(["10.0.0.1"], now=float(len(plan)))
    assert merged.count == len(own)


def test_keep_warm_samples_leave_the_window_with_their_delta() -> None:
    store = LatencyStore(window_s=10, stale_after_s=100)
    store.ingest(snap(replace(ep("10.0.0.1", [1000, 2000]), keepwarm=2)), now=0.0)
    store.ingest(snap(replace(ep("10.0.0.1", [3000]), keepwarm=0)), now=5.0)
    est = store.estimate("10.0.0.1", now=6.0)
    assert est is not None and (est.samples, est.keepwarm) == (3, 2)
    store.ingest(snap(ep("10.0.0.1", [])), now=11.0)
    est = store.estimate("10.0.0.1", now=12.0)
    assert est is not None and (est.samples, est.keepwarm) == (1, 0)
