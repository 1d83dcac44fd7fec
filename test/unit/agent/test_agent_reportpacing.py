"""Which endpoint windows an agent sends at each report (aviator.agent.reportpacing): steady
ones held and merged, changes at once, nothing lost."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.agent.reportpacing import (
    CHANGE_RATIO,
    ReportPacer,
    Shape,
    differs,
    merged,
    report_periods,
)
from aviator.latency.histogram import Histogram
from aviator.latency.schema import EndpointWindow

A, B = "10.0.0.1", "10.0.0.2"


def window(
    ip: str = A,
    us: int = 10_000,
    n: int = 10,
    *,
    pod: str | None = "ns/a",
    errors: int = 0,
    protocol: Any = "http1",
    rif: int = 0,
) -> EndpointWindow:
    return EndpointWindow(
        ip,
        8080,
        "server",
        pod,
        Histogram.from_values([us] * n),
        n,
        us * n,
        us if n else 0,
        rif,
        0,
        protocol,
        statuses=n,
        errors=errors,
    )


def sent_at(pacer: ReportPacer, ticks: dict[float, list[EndpointWindow]]) -> dict[float, Any]:
    """Run the pacer over `ticks` (time → the windows read then); time → what was sent."""
    return {now: pacer.take(ws, now) for now, ws in sorted(ticks.items())}


def test_a_merge_sums_the_counts_and_keeps_the_newest_gauges_of_every_field() -> None:
    older = EndpointWindow(
        A,
        8080,
        "server",
        "ns/a",
        Histogram.from_values([1_000] * 3),
        3,
        3_000,
        1_000,
        7,
        1,
        "http1",
        3,
        1,
        900,
        2,
    )
    newer = EndpointWindow(
        A,
        8080,
        "server",
        None,
        Histogram.from_values([5_000] * 4),
        4,
        20_000,
        5_000,
        2,
        2,
        "h2",
        4,
        2,
        40,
        1,
    )
    got = merged(older, newer)
    summed = {"hist", "count", "sum_us", "aborted", "statuses", "errors", "keepwarm"}
    newest = {"ip", "port", "role", "rif", "protocol", "oldest_open_us"}
    # Every field has a rule: a field added to the window must be given one here.
    assert {f.name for f in dataclasses.fields(EndpointWindow)} == summed | newest | {
        "pod",
        "max_us",
    }
    for name in summed:
        assert getattr(got, name) == getattr(older, name) + getattr(newer, name), name
    for name in newest:
        assert getattr(got, name) == getattr(newer, name), name
    assert (got.pod, got.max_us) == ("ns/a", 5_000)  # the pod a window named; the larger


def test_without_a_steady_interval_every_window_is_sent_as_it_is() -> None:
    pacer = ReportPacer(0.0, 1.0)
    ws = [window(A), window(B, pod="ns/b")]
    assert pacer.take(ws, 0.0) == tuple(ws)
    assert pacer.take(ws, 1.0) == tuple(ws)
    assert len(pacer) == 0 and pacer.held == 0


def test_a_steady_endpoint_is_sent_once_per_period_its_windows_merged() -> None:
    pacer = ReportPacer(5.0, 1.0)
    out = sent_at(pacer, {float(t): [window(A, rif=t)] for t in range(11)})
    sends = {t: got for t, got in out.items() if got}
    assert list(sends) == [0.0, 5.0, 10.0]  # new: at once; then every 5 s
    five = sends[5.0][0]
    # Ticks 1..5 in one window: nothing lost, the newest gauges.
    assert (five.count, five.sum_us, five.statuses, five.rif) == (50, 500_000, 50, 5)
    assert five.hist == Histogram.from_values([10_000] * 50)
    assert pacer.held == 8


def test_a_change_goes_out_at_the_next_report_with_what_was_held() -> None:
    pacer = ReportPacer(5.0, 1.0)
    pacer.take([window(A)], 0.0)
    assert pacer.take([window(A)], 1.0) == ()
    slow = pacer.take([window(A, us=100_000)], 2.0)
    assert len(slow) == 1 and slow[0].count == 20  # tick 1 (held) and tick 2
    assert slow[0].hist.quantile(0.99) == pytest.approx(100_000, rel=0.04)
    # What went out was half fast: all slow reads differently again (its p50) ...
    assert len(pacer.take([window(A, us=100_000)], 3.0)) == 1
    # ... then slow is the new normal: held until it changes or the period passes.
    assert pacer.take([window(A, us=100_000)], 4.0) == ()
    assert len(pacer.take([window(A, us=10_000)], 5.0)) == 1  # back: a change too


@pytest.mark.parametrize(
    ("last", "now", "changed"),
    [
        (window(us=10_000), window(us=12_000), False),  # within CHANGE_RATIO
        (window(us=10_000), window(us=13_000), True),
        (window(us=10_000), window(us=7_800), True),
        (window(us=10_000), window(n=0), False),  # no request completed: nothing new said
        (window(n=0), window(us=10_000), True),  # the first completed ones
        (window(), window(errors=1), True),
        (window(errors=3), window(errors=1), False),
        (window(errors=3), window(), True),
        (window(), window(protocol="h2"), True),
    ],
)
def test_what_reads_differently(last: EndpointWindow, now: EndpointWindow, changed: bool) -> None:
    assert differs(Shape.of(last), Shape.of(now)) is changed
    assert CHANGE_RATIO == 1.25


def test_the_policies_evaluation_interval_sets_the_period_within_the_bounds() -> None:
    pacer = ReportPacer(5.0, 1.0)
    pacer.periods = {A: 2.0, B: 0.2}
    ticks = {
        float(t): [window(A), window(B, pod="ns/b"), window("10.0.0.3", pod="ns/c")]
        for t in range(7)
    }
    out = sent_at(pacer, ticks)

    def times(ip: str) -> list[float]:
        return [t for t, got in out.items() if any(w.ip == ip for w in got)]

    assert times(A) == [0.0, 2.0, 4.0, 6.0]
    assert times(B) == [float(t) for t in range(7)]  # never more often than the reports
    assert times("10.0.0.3") == [0.0, 5.0]  # no policy: the steady interval
    pacer.periods = {A: 60.0}
    assert times(A)[-1] == 6.0
    later = {t: pacer.take([window(A)], t) for t in (7.0, 8.0, 9.0, 10.0, 11.0)}
    assert [t for t, got in later.items() if any(w.ip == A for w in got)] == [11.0]
    assert [w.ip for w in later[10.0]] == ["10.0.0.3"]  # held at 6, quiet since: due at 10


def test_an_urgent_report_sends_everything_held() -> None:
    pacer = ReportPacer(5.0, 1.0)
    pacer.take([window(A), window(B, pod="ns/b")], 0.0)
    pacer.take([window(A), window(B, pod="ns/b")], 1.0)
    got = pacer.take([window(A)], 1.5, urgent=True)
    assert sorted((w.ip, w.count) for w in got) == [(A, 20), (B, 10)]


def test_held_data_of_an_endpoint_gone_quiet_goes_out_when_due_then_it_is_forgotten() -> None:
    pacer = ReportPacer(2.0, 1.0)
    pacer.take([window(A)], 0.0)
    assert pacer.take([window(A)], 1.0) == ()
    assert [w.count for w in pacer.take([], 2.0)] == [10]  # no new window: sent when due
    assert pacer.take([], 3.0) == () and len(pacer) == 1
    pacer.take([], 6.5)
    assert len(pacer) == 0
    assert len(pacer.take([window(A)], 7.0)) == 1  # new again: at once


def test_a_new_pod_at_the_ip_drops_what_was_held_for_the_old_one() -> None:
    pacer = ReportPacer(5.0, 1.0)
    pacer.take([window(A)], 0.0)
    pacer.take([window(A)], 1.0)
    got = pacer.take([window(A, pod="ns/successor")], 2.0)
    assert [(w.pod, w.count) for w in got] == [("ns/successor", 10)]
    # With nothing held either: the new pod's first window is new, sent at once.
    pacer.take([window(B, pod="ns/b")], 2.0)
    assert len(pacer.take([window(B, pod="ns/b-successor")], 3.0)) == 1


def test_the_pacer_refuses_nonsense_intervals() -> None:
    with pytest.raises(ValueError):
        ReportPacer(-1.0, 1.0)
    with pytest.raises(ValueError):
        ReportPacer(5.0, 0.0)


def test_periods_are_the_shortest_evaluation_interval_of_the_policies_selecting_a_pod() -> None:
    services = {
        "web": {"spec": {"selector": {"app": "a"}}},
        "web2": {"spec": {"selector": {"app": "a"}}},
        "other": {"spec": {"selector": {"app": "b"}}},
    }

    def policy(name: str, target: str, interval: str) -> Any:
        return {
            "metadata": {"name": name, "namespace": "ns", "uid": name},
            "spec": {"targetRef": {"name": target}, "evaluationInterval": interval},
        }

    def pod(name: str, ip: str, app: str) -> Any:
        return {
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }

    policies = [
        policy("one", "web", "5s"),
        policy("two", "web2", "2s"),
        policy("bad", "other", "soon"),
    ]
    pods = [pod("a-1", A, "a"), pod("b-1", B, "b")]
    assert report_periods(policies, lambda ns, name: services.get(name), pods) == {A: 2.0}


_TICKS = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from([A, B]),
            st.sampled_from([1_000, 1_100, 5_000, 80_000]),
            st.integers(0, 20),
        ),
        max_size=3,
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(_TICKS, st.sampled_from([0.0, 2.0, 5.0]), st.booleans())
def test_nothing_is_lost_and_nothing_waits_past_its_period(
    ticks: list[list[tuple[str, int, int]]], steady_s: float, periods: bool
) -> None:
    pacer = ReportPacer(steady_s, 1.0)
    if periods:
        pacer.periods = {A: 3.0}
    given_in = {A: Histogram(), B: Histogram()}
    sent = {A: Histogram(), B: Histogram()}
    last_sent: dict[str, float] = {}
    for t, tick in enumerate(ticks):
        now = float(t)
        by_ip = {ip: window(ip, us, n, pod=f"ns/{ip}") for ip, us, n in tick}
        for w in by_ip.values():
            given_in[w.ip].update(w.hist)
        out = pacer.take(list(by_ip.values()), now)
        assert len({w.ip for w in out}) == len(out)  # one window per endpoint
        for w in out:
            sent[w.ip].update(w.hist)
            assert w.count == w.hist.count == w.statuses
            last_sent[w.ip] = now
        for ip in (A, B):
            waiting = given_in[ip].count - sent[ip].count
            if waiting:
                # Held only within its period since the last send.
                period = max(1.0, min(pacer.periods.get(ip, steady_s), steady_s))
                assert now - last_sent[ip] < period - 0.5
    pacer_empty = pacer.take([], float(len(ticks)), urgent=True)
    for w in pacer_empty:
        sent[w.ip].update(w.hist)
    assert sent == given_in  # every count of every window, sent once
