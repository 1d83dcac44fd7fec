"""When the agent reports at once (aviator.agent.urgent): thresholds from the policies
it watches, one report per crossing, rate-limited."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.agent.bpf.model import EndpointKey
from aviator.agent.urgent import LOOK_MARGIN_S, MIN_LOOK_GAP_S, UrgentReports, open_thresholds

A = EndpointKey("10.0.0.1", 8080, "server")
B = EndpointKey("10.0.0.2", 8080, "server")


def counters(**open_us: int) -> list[tuple[EndpointKey, int]]:
    """(endpoint, age of its oldest open request in µs), as a source's open_ages."""
    keys = {"a": A, "b": B}
    return [(keys[k], v) for k, v in open_us.items()]


def policy(name: str, target: str, breaker: dict[str, Any]) -> Any:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name},
        "spec": {"targetRef": {"name": target}, "circuitBreaker": breaker},
    }


def pod(name: str, ip: str, app: str) -> Any:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def test_thresholds_are_the_smallest_of_the_breaker_policies_selecting_a_pod() -> None:
    services = {
        "web": {"spec": {"selector": {"app": "a"}}},
        "web2": {"spec": {"selector": {"app": "a"}}},
        "other": {"spec": {"selector": {"app": "b"}}},
    }
    policies = [
        policy("one", "web", {"enabled": True, "p99Threshold": "800ms"}),
        policy("two", "web2", {"enabled": True, "p99Threshold": "300ms"}),
        policy("off", "other", {"enabled": False, "p99Threshold": "1ms"}),
        policy("bad", "other", {"enabled": True, "p99Threshold": "quick"}),
    ]
    pods = [pod("a-1", "10.0.0.1", "a"), pod("b-1", "10.0.0.2", "b")]
    got = open_thresholds(policies, lambda ns, name: services.get(name), pods)
    assert got == {"10.0.0.1": 300_000}  # b: its policies are off or invalid


def test_one_report_per_crossing_and_none_for_endpoints_without_a_threshold() -> None:
    u = UrgentReports(min_gap_s=0.5)
    u.thresholds = {"10.0.0.1": 300_000}
    assert not u.check(counters(a=100_000, b=9_000_000), 0.0)  # b: no policy covers it
    assert u.check(counters(a=300_001), 0.2)
    assert not u.check(counters(a=500_000), 1.0)  # still the same crossing
    assert not u.check(counters(a=0), 1.2)  # answered
    assert u.check(counters(a=400_000), 1.4)  # a new one
    assert u.sent == 2


def test_crossings_within_the_gap_wait_for_it_unless_a_regular_report_went_first() -> None:
    u = UrgentReports(min_gap_s=0.5)
    u.thresholds = {"10.0.0.1": 300_000, "10.0.0.2": 300_000}
    assert u.check(counters(a=400_000), 0.0)
    assert not u.check(counters(a=400_000, b=400_000), 0.2)  # b crossed in the gap
    assert u.check(counters(a=400_000, b=400_000), 0.5)  # reported when the gap ends
    u.reported(counters(a=400_000, b=400_000), 0.6)
    # A crossing a regular report carried is not reported again.
    assert not u.check(counters(a=400_000, b=400_000), 5.0)
    u2 = UrgentReports(min_gap_s=0.5)
    u2.thresholds = {"10.0.0.1": 300_000}
    assert u2.check(counters(a=0), 0.0) is False
    u2.reported(counters(a=400_000), 0.1)
    assert not u2.check(counters(a=400_000), 0.2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 600_000)), min_size=1, max_size=60))
def test_never_more_than_one_report_per_gap(looks: list[tuple[int, int]]) -> None:
    u = UrgentReports(min_gap_s=0.5)
    u.thresholds = {"10.0.0.1": 300_000, "10.0.0.2": 300_000}
    sent_at: list[float] = []
    for i, (which, age) in enumerate(looks):
        now = i * 0.2
        seen = counters(a=age) if which == 0 else counters(b=age) if which == 1 else counters()
        if u.check(seen, now):
            sent_at.append(now)
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(sent_at))
    assert len(sent_at) == u.sent


def test_the_next_look_comes_when_the_oldest_open_request_would_cross() -> None:
    u = UrgentReports(min_gap_s=0.5)
    u.thresholds = {"10.0.0.1": 300_000}
    assert u.next_look() is None  # nothing seen yet
    assert not u.check(counters(a=120_000, b=290_000), 1.0)  # b: no threshold
    look = u.next_look()
    assert look is not None and abs(look - (1.0 + 0.18 + LOOK_MARGIN_S)) < 1e-9
    assert not u.check(counters(a=0), 1.1)  # answered: nothing to foresee
    assert u.next_look() is None
    # A request just short of its threshold: never a look closer than the minimum gap.
    assert not u.check(counters(a=299_999), 2.0)
    assert u.next_look() == 2.0 + MIN_LOOK_GAP_S
    # Looking then finds it crossed.
    assert u.check(counters(a=300_000 + 10_000), 2.0 + MIN_LOOK_GAP_S)


def test_a_crossing_waiting_for_the_gap_is_looked_at_when_the_gap_ends() -> None:
    u = UrgentReports(min_gap_s=0.5)
    u.thresholds = {"10.0.0.1": 300_000, "10.0.0.2": 300_000}
    assert u.check(counters(a=400_000), 0.0)
    assert u.next_look() is None  # a is past its threshold: nothing left to foresee
    assert not u.check(counters(a=400_000, b=400_000), 0.2)  # b waits for the gap
    assert u.next_look() == 0.5
    assert u.check(counters(a=400_000, b=400_000), 0.5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 600_000), min_size=1, max_size=20), st.floats(0, 100))
def test_a_foreseen_look_finds_the_crossing_it_foresaw(ages: list[int], now: float) -> None:
    """Looking at next_look(), a request still open has crossed its threshold."""
    u = UrgentReports(min_gap_s=0.0)
    u.thresholds = {"10.0.0.1": 300_000}
    for age in ages:
        u.check(counters(a=age), now)
        look = u.next_look()
        if age == 0 or age > 300_000:  # none open, or crossed already
            assert look is None
            continue
        assert look is not None and look > now
        later = age + round((look - now) * 1e6)
        assert later > 300_000 or look == now + MIN_LOOK_GAP_S
