"""Diffing cumulative counters into windows, including counters that go backwards."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.agent.bpf.model import EndpointCounters, EndpointKey
from aviator.agent.windows import WindowDiffer, attach_pods
from aviator.latency.histogram import Histogram
from aviator.latency.probing import ProbeCounters
from aviator.latency.schema import EndpointWindow

# The kernel's endpoint keys; the prober's counters serve as the cumulative source
# (any CountersLike would).
A = EndpointKey("10.0.0.1", 8080, "server")
B = EndpointKey("10.0.0.2", 80, "client")


def test_first_read_and_deltas() -> None:
    d = WindowDiffer()
    a = ProbeCounters()
    a.record(1000)
    a.record(2000)
    (w,) = d.advance({A: a.frozen()}.items())
    assert (w.ip, w.port, w.role, w.pod) == ("10.0.0.1", 8080, "server", None)
    assert (w.count, w.sum_us, w.max_us) == (2, 3000, 2000)
    a.record(5000)
    a.aborted = 1
    (w,) = d.advance({A: a.frozen()}.items())
    assert w.hist == Histogram.from_values([5000])
    assert (w.count, w.sum_us, w.max_us, w.aborted) == (1, 5000, 5000, 1)


def test_statuses_and_errors_are_windowed_protocol_and_oldest_open_passed_on() -> None:
    d = WindowDiffer()

    def counters(count: int, statuses: int, errors: int, oldest: int) -> EndpointCounters:
        return EndpointCounters([0] * 464, count, count, 1, 0, 0, statuses, errors, "h2", oldest)

    (w,) = d.advance({A: counters(10, 8, 2, 0)}.items())
    assert (w.count, w.statuses, w.errors, w.protocol) == (10, 8, 2, "h2")
    (w,) = d.advance({A: counters(15, 12, 5, 3_000_000)}.items())
    assert (w.count, w.statuses, w.errors, w.oldest_open_us) == (5, 4, 3, 3_000_000)
    # Only errors moved (a status read late): still a window, never more than counted.
    (w,) = d.advance({A: counters(16, 12, 6, 0)}.items())
    assert (w.count, w.statuses, w.errors) == (1, 0, 0)


def test_idle_endpoints_are_left_out_unless_in_flight() -> None:
    d = WindowDiffer()
    a = ProbeCounters()
    a.record(1000)
    d.advance({A: a.frozen()}.items())
    assert d.advance({A: a.frozen()}.items()) == []
    assert len(d.advance({A: a.frozen()}.items(), include_idle=True)) == 1
    a.rif = 2
    (w,) = d.advance({A: a.frozen()}.items())
    assert (w.count, w.rif, w.hist.count) == (0, 2, 0)


def test_counters_going_backwards_start_a_new_baseline() -> None:
    d = WindowDiffer()
    a = ProbeCounters()
    for _ in range(5):
        a.record(1000)
    d.advance({A: a.frozen()}.items())
    reloaded = ProbeCounters()
    reloaded.record(7000)
    (w,) = d.advance({A: reloaded.frozen()}.items())
    assert w.hist == Histogram.from_values([7000]) and w.count == 1
    assert d.resets == 1
    reloaded.record(8000)
    (w,) = d.advance({A: reloaded.frozen()}.items())
    assert w.hist == Histogram.from_values([8000])


def test_vanished_endpoints_are_forgotten() -> None:
    d = WindowDiffer()
    a, b = ProbeCounters(), ProbeCounters()
    a.record(10)
    b.record(20)
    assert len(d.advance({A: a.frozen(), B: b.frozen()}.items())) == 2
    d.advance({A: a.frozen()}.items())
    assert len(d) == 1
    (w,) = d.advance({A: a.frozen(), B: b.frozen()}.items())  # B returns: all of it is new
    assert w.ip == B.ip and w.count == 1


def test_pods_are_attached_to_server_endpoints_only() -> None:
    d = WindowDiffer()
    a, b = ProbeCounters(), ProbeCounters()
    a.record(10)
    b.record(20)
    pods = {"10.0.0.1": "ns/a", "10.0.0.2": "ns/b"}
    out = attach_pods(d.advance({A: a.frozen(), B: b.frozen()}.items()), pods.get)
    assert {(w.ip, w.pod) for w in out} == {("10.0.0.1", "ns/a"), ("10.0.0.2", None)}


def _contains(now: ProbeCounters, old: ProbeCounters) -> bool:
    return (
        all(n >= o for n, o in zip(now.buckets, old.buckets, strict=True))
        and now.sum_us >= old.sum_us
        and now.aborted >= old.aborted
    )


# Per step and endpoint: None = entry missing this read, else (reset the counters first?,
# values recorded since the previous read).
step = st.tuples(
    *(
        st.one_of(
            st.none(),
            st.tuples(st.booleans(), st.lists(st.integers(1, 10**6), max_size=5)),
        )
        for _ in range(2)
    )
)


@settings(max_examples=300)
@given(st.lists(step, max_size=25))
def test_windows_hold_exactly_what_happened_between_reads(
    plan: list[tuple[tuple[bool, list[int]] | None, ...]],
) -> None:
    d = WindowDiffer()
    live: dict[EndpointKey, ProbeCounters] = {}
    for changes in plan:
        expected: dict[EndpointKey, Histogram] = {}
        for key, change in zip((A, B), changes, strict=True):
            if change is None:
                live.pop(key, None)
                continue
            reset, values = change
            before = live.get(key)
            if reset or before is None:
                live[key] = ProbeCounters()
            for v in values:
                live[key].record(v)
            expected[key] = Histogram.from_values(values)
            if reset and before is not None and _contains(live[key], before):
                # A reload that ends up above the old counters cannot be told from
                # growth; the window is then the difference, which is documented.
                expected[key] = live[key].hist - before.hist
        out = d.advance({k: c.frozen() for k, c in live.items()}.items())
        got = {EndpointKey(w.ip, w.port, w.role): w for w in out}
        for key, hist in expected.items():
            if hist:
                assert got[key].hist == hist
                assert got[key].count == hist.count
            else:
                assert key not in got
        assert set(got) <= set(expected)


def test_keep_warm_requests_are_windowed_and_never_more_than_the_count() -> None:
    d = WindowDiffer()

    def counters(count: int, keepwarm: int) -> EndpointCounters:
        return EndpointCounters([0] * 464, count, count, 1, 0, 0, keepwarm=keepwarm)

    (w,) = d.advance({A: counters(10, 4)}.items())
    assert (w.count, w.keepwarm) == (10, 4)
    (w,) = d.advance({A: counters(13, 7)}.items())
    assert (w.count, w.keepwarm) == (3, 3)
    # Read between the program counting a keep-warm request and recording its sample.
    (w,) = d.advance({A: counters(14, 9)}.items())
    assert (w.count, w.keepwarm) == (1, 1)


def test_probe_windows_name_their_pod_client_windows_do_not() -> None:
    h = Histogram.from_values([1000])
    w = EndpointWindow("10.0.0.1", 8080, "probe", None, h, 1, 1000, 1000, 0, 0)
    pods = attach_pods([w, replace(w, role="client")], lambda ip: "ns/p")
    assert [x.pod for x in pods] == ["ns/p", None]
