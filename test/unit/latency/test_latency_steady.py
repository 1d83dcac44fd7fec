"""A steady endpoint's reports. A report whose delta is the one leaving its window
renews it (`Window.renew`) and leaves the window as taking the delta out and adding it
again would. A window's mark (`Window.mark`, read through `LatencyStore.mark`): the
same mark, the same estimate object and an equal total; a new one whenever either
changed, a window made again included; None where one window does not speak for the
address alone."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.latency import window
from aviator.latency.histogram import Histogram
from aviator.latency.schema import AppProtocol, EndpointWindow, Snapshot, Source
from aviator.latency.store import LatencyStore

IP = "10.0.0.1"
PORTS = frozenset({8080})


def report(
    counts: dict[int, int], *, rif: int = 0, port: int = 8080, pod: str = "ns/p"
) -> EndpointWindow:
    """An endpoint window holding `counts` samples of each value (µs)."""
    h = Histogram()
    for value, n in counts.items():
        h.record(value, n)
    top = max(counts, default=0)
    return EndpointWindow(IP, port, "server", pod, h, h.count, 0, top, rif, 0)


def ingest(store: LatencyStore, at: float, *windows: EndpointWindow) -> None:
    store.ingest_snapshot(Snapshot("n1", "ebpf", at, 1.0, windows), at)


def test_the_same_reports_keep_the_mark_and_a_changed_estimate_gets_a_new_one() -> None:
    store = LatencyStore(window_s=1.0, stale_after_s=5.0)
    ingest(store, 100.0, report({5000: 20}))
    first = store.mark(IP, 100.0, PORTS, "agent")
    estimate, _ = store.latest(IP, 100.0, PORTS, "agent")
    for at in (101.0, 102.0, 103.0):
        ingest(store, at, report({5000: 20}))
        found = store.mark(IP, at, PORTS, "agent")
        assert found is not None and first is not None
        assert found == (first[0], at)
        assert store.latest(IP, at, PORTS, "agent")[0] is estimate
    ingest(store, 104.0, report({5000: 20}, rif=3))
    changed = store.mark(IP, 104.0, PORTS, "agent")
    assert changed is not None and first is not None and changed[0] != first[0]


def test_a_report_that_leaves_the_estimate_but_not_the_total_gets_a_new_mark() -> None:
    # The same count and quantiles (p50 and p90 5 ms, p99 10 ms of 20 samples), but one
    # sample moved from 8 ms to 10 ms: a set of pods merged with it has another p99.
    store = LatencyStore(window_s=1.0, stale_after_s=5.0)
    before = {5000: 18, 8000: 1, 10000: 1}
    after = {5000: 18, 10000: 2}
    ingest(store, 100.0, report(before))
    mark = store.mark(IP, 100.0, PORTS, "agent")
    estimate, _ = store.latest(IP, 100.0, PORTS, "agent")
    merged = store.merged([IP], 100.0)
    ingest(store, 101.0, report(after))
    assert store.latest(IP, 101.0, PORTS, "agent")[0] is estimate  # it says the same
    assert store.merged([IP], 101.0) != merged
    now = store.mark(IP, 101.0, PORTS, "agent")
    assert mark is not None and now is not None and now[0] != mark[0]


def test_a_window_made_again_never_has_the_mark_of_the_one_before() -> None:
    store = LatencyStore(window_s=1.0, stale_after_s=5.0)
    ingest(store, 100.0, report({5000: 20}))
    mark = store.mark(IP, 100.0, PORTS, "agent")
    ingest(store, 101.0, report({5000: 20}, pod="ns/other"))  # the address reused
    again = store.mark(IP, 101.0, PORTS, "agent")
    assert mark is not None and again is not None and again[0] != mark[0]


def test_no_mark_where_one_window_does_not_speak_for_the_address_alone() -> None:
    store = LatencyStore(window_s=1.0, stale_after_s=5.0)
    ingest(store, 100.0, report({5000: 20}))
    assert store.mark(IP, 105.0, PORTS, "agent") is not None
    assert store.mark(IP, 105.1, PORTS, "agent") is None  # stale
    assert store.mark(IP, 100.0, frozenset({9090}), "agent") is None  # another port
    assert store.mark(IP, 100.0, PORTS, "controller") is None  # another origin
    assert store.mark("10.0.0.2", 100.0, PORTS, "agent") is None  # never reported
    ingest(store, 101.0, report({}))  # the sample left, nothing came: nothing to say
    assert store.mark(IP, 101.0, PORTS, "agent") is None
    ingest(store, 102.0, report({5000: 20}), report({5000: 20}, port=9090))
    assert store.mark(IP, 102.0, PORTS, "agent") is None  # two windows


reports = st.tuples(
    st.sampled_from([{5000: 20}, {5000: 18, 8000: 1, 10000: 1}, {5000: 18, 10000: 2}, {}]),
    st.integers(0, 1),  # requests in flight
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(reports, st.sampled_from([0.5, 1.0, 2.0, 6.0])), max_size=20))
def test_the_same_mark_is_the_same_estimate_and_an_equal_total(
    steps: list[tuple[tuple[dict[int, int], int], float]],
) -> None:
    store = LatencyStore(window_s=1.0, stale_after_s=5.0)
    at = 100.0
    seen: dict[int, tuple[object, Histogram]] = {}
    for (counts, rif), gap in steps:
        at += gap
        ingest(store, at, report(counts, rif=rif))
        found = store.mark(IP, at, PORTS, "agent")
        if found is None:
            continue
        estimate = store.latest(IP, at, PORTS, "agent")[0]
        total = store.merged([IP], at)
        held = seen.setdefault(found[0], (estimate, total))
        assert held[0] is estimate and held[1] == total


# --- renewing a window ---------------------------------------------------------------

# A report: (samples, statuses, errors, keep-warm, requests in flight, oldest open
# request in µs, protocol, source), from few enough values that reports repeat.
figures = st.tuples(
    st.sampled_from([{5000: 20}, {5000: 18, 10000: 2}, {}]),
    st.sampled_from([0, 20]),
    st.sampled_from([0, 5]),
    st.sampled_from([0, 2]),
    st.integers(0, 1),
    st.sampled_from([0, 900_000]),
    st.sampled_from(["http1", "h2"]),
    st.sampled_from(["ebpf", "probe"]),
)
Figures = tuple[dict[int, int], int, int, int, int, int, AppProtocol, Source]


def window_of(figures: Figures) -> tuple[EndpointWindow, Source]:
    counts, statuses, errors, keepwarm, rif, open_us, protocol, source = figures
    ep = report(counts, rif=rif)
    count = ep.count
    ep = EndpointWindow(
        ep.ip,
        ep.port,
        ep.role,
        ep.pod,
        ep.hist,
        count,
        0,
        ep.max_us,
        rif,
        0,
        protocol,
        min(statuses, count),
        min(errors, statuses, count),
        open_us,
        min(keepwarm, count),
    )
    return ep, source


def held(store: LatencyStore) -> object:
    """Everything a window holds and says (what the renewed path must leave alike)."""
    win = store._windows[(IP, 8080, "server", "agent")]
    return (
        [(at, h.to_sparse(), s, e, k) for at, h, s, e, k in win.deltas],
        win.total.to_sparse(),
        (win.statuses, win.errors, win.keepwarm, win.buckets, win.rif, win.oldest_open_us),
        (win.protocol, win.source, win.last_seen, win.sampled, win.keep_s, win.stale_s),
        win.latest(),
        store.usage("n1"),
        store.estimate(IP, win.last_seen),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(figures, st.sampled_from([0.5, 1.0, 1.5, 6.0])), max_size=25))
def test_a_renewed_window_is_the_window_the_delta_leaving_and_coming_again_makes(
    steps: list[tuple[Figures, float]],
) -> None:
    renewing = LatencyStore(window_s=1.0, stale_after_s=5.0)
    plain = LatencyStore(window_s=1.0, stale_after_s=5.0)
    at = 100.0
    for fig, gap in steps:
        at += gap
        ep, source = window_of(fig)
        snap = Snapshot("n1", source, at, 1.0, (ep,))
        renewing.ingest_snapshot(snap, at)
        original = window.Window.renew
        window.Window.renew = lambda *args: False  # type: ignore[method-assign]
        try:
            plain.ingest_snapshot(snap, at)
        finally:
            window.Window.renew = original  # type: ignore[method-assign]
        assert held(renewing) == held(plain)


def test_a_steady_endpoints_report_renews_its_window() -> None:
    store = LatencyStore(window_s=1.0, stale_after_s=5.0)
    ingest(store, 100.0, report({5000: 20}))
    win = store._windows[(IP, 8080, "server", "agent")]
    total, version = win.total, win.version
    for at in (101.0, 102.0):
        ingest(store, at, report({5000: 20}))
        assert win.total is total and win.version == version  # neither taken apart nor read again
    ingest(store, 103.0, report({5000: 20}, rif=1))
    assert win.version != version
