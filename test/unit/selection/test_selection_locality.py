"""Latency-aware locality: the zone decision's invariants (hypothesis) and examples."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.selection.locality import (
    LOCAL,
    MAX_FOR_ZONES,
    NO_ROUTED_PODS,
    NO_ZONE_TO_SPILL_TO,
    OVERLOADED,
    PARKED_ZONE,
    SLOWER_THAN_MARGIN,
    SPILLING,
    LocalityPolicy,
    ZoneInput,
    ZoneState,
    decide,
    newly_over,
    states_from_json,
    states_to_json,
    zone_hints,
    zone_inputs,
)

# At most MAX_FOR_ZONES zones: beyond that some zone falls back to every endpoint.
zone_names = st.sampled_from([f"zone-{c}" for c in "abcdefgh"])
inputs = st.builds(
    ZoneInput,
    pods=st.integers(0, 4),
    p99_ms=st.none() | st.floats(0.1, 5000, allow_nan=False),
    rif=st.none() | st.floats(0, 50, allow_nan=False),
)
zone_maps = st.dictionaries(zone_names, inputs, max_size=10)
zstates = st.builds(
    ZoneState,
    state=st.sampled_from([LOCAL, SPILLING]),
    reason=st.sampled_from([SLOWER_THAN_MARGIN, OVERLOADED, NO_ROUTED_PODS, "WithinMargin"]),
    streak=st.integers(0, 5),
)
state_maps = st.dictionaries(zone_names, zstates, max_size=10)
policies = st.builds(
    LocalityPolicy,
    margin_percent=st.floats(0, 300, allow_nan=False),
    max_rif=st.none() | st.floats(0.5, 40, allow_nan=False),
    spill_after=st.integers(1, 5),
    return_after=st.integers(1, 5),
)


def _within(zone: str, zones: dict[str, ZoneInput], policy: LocalityPolicy) -> bool:
    me = zones[zone]
    if me.p99_ms is None:
        return False
    if policy.max_rif is not None and me.rif is not None and me.rif > policy.max_rif:
        return False
    others = [z.p99_ms for n, z in zones.items() if n != zone and z.pods and z.p99_ms is not None]
    return not others or me.p99_ms <= min(others) * (1 + policy.margin_percent / 100)


def _served(zones: dict[str, ZoneInput]) -> set[str]:
    return {z for z, i in zones.items() if i.pods}


@settings(max_examples=400)
@given(zone_maps, st.sets(zone_names, max_size=4), state_maps, policies)
def test_a_zone_never_spills_while_within_the_margin(zones, clients, previous, policy):
    out = decide(zones, clients, previous, policy)
    for zone in _served(zones):
        was = previous.get(zone, ZoneState())
        if was.state == LOCAL and _within(zone, zones, policy):
            assert out[zone].state == LOCAL
            assert out[zone].streak == 0


any_states = st.dictionaries(
    zone_names,
    st.builds(
        ZoneState,
        state=st.sampled_from([LOCAL, SPILLING]),
        reason=st.sampled_from(
            [SLOWER_THAN_MARGIN, OVERLOADED, NO_ROUTED_PODS, NO_ZONE_TO_SPILL_TO, "WithinMargin"]
        ),
        streak=st.integers(0, 3),
    ),
    max_size=10,
)


@settings(max_examples=600)
@given(zone_maps, st.sets(zone_names, max_size=4), any_states, policies)
def test_newly_over_is_exactly_where_an_evaluation_starts_a_count(zones, clients, previous, policy):
    """An evaluation run at once for `newly_over` zones changes them (never a wasted
    evaluation), and every zone whose count an evaluation would start is named (none
    waits for the interval)."""
    out = decide(zones, clients, previous, policy)
    named = newly_over(zones, previous, policy)
    for zone in _served(zones):
        was = previous.get(zone, ZoneState())
        if was.state == SPILLING and was.reason == NO_ROUTED_PODS:
            was = ZoneState()
        if zone in named:
            assert out[zone] != was
        elif was.state == LOCAL and not was.streak and was.reason != NO_ZONE_TO_SPILL_TO:
            assert out[zone].state == LOCAL and out[zone].streak == 0
    assert set(named) <= _served(zones)


def test_a_zone_kept_local_for_want_of_another_is_not_newly_over():
    policy = LocalityPolicy(max_rif=1.0, spill_after=1)
    zones = {"a": ZoneInput(2, 10.0, 5.0), "b": ZoneInput(2, 20.0, 5.0)}
    states = decide(zones, (), {}, policy)
    assert states["a"] == ZoneState(LOCAL, NO_ZONE_TO_SPILL_TO, 0)
    assert newly_over(zones, states, policy) == []


@settings(max_examples=400)
@given(zone_maps, st.sets(zone_names, max_size=4), state_maps, policies)
def test_every_zone_always_has_a_hinted_endpoint(zones, clients, previous, policy):
    out = decide(zones, clients, previous, policy)
    served = _served(zones)
    if not served:
        return
    assert any(out[z].state == LOCAL for z in served)
    hints = zone_hints(out, served)
    assert set(hints) == served
    for zone in set(out):
        assert any(zone in hints[e] for e in served), zone
    for for_zones in hints.values():
        assert 1 <= len(for_zones) <= MAX_FOR_ZONES
        assert len(set(for_zones)) == len(for_zones)
    for zone in served:
        assert (PARKED_ZONE in hints[zone]) == (out[zone].state == SPILLING)


@given(state_maps, state_maps, st.sets(zone_names, min_size=1, max_size=6))
def test_hints_change_only_with_a_zone_state(a, b, served):
    same_states = {z: s.state for z, s in a.items()} == {z: s.state for z, s in b.items()}
    if same_states:
        assert zone_hints(a, served) == zone_hints(b, served)


@given(policies, st.integers(1, 12))
def test_a_slow_zone_spills_after_exactly_n_and_returns_after_exactly_m(policy, tail):
    fast = {"a": ZoneInput(2, 10.0, 0.0), "b": ZoneInput(2, 10.0, 0.0)}
    slow = {"a": ZoneInput(2, 10.0 * (2 + policy.margin_percent / 100), 0.0), **{"b": fast["b"]}}
    states: dict[str, ZoneState] = {}
    for i in range(1, policy.spill_after + tail):
        states = decide(slow, (), states, policy)
        assert states["a"].state == (SPILLING if i >= policy.spill_after else LOCAL)
        assert states["b"].state == LOCAL
    assert states["a"].reason == SLOWER_THAN_MARGIN
    for i in range(1, policy.return_after + tail):
        states = decide(fast, (), states, policy)
        assert states["a"].state == (LOCAL if i >= policy.return_after else SPILLING)


@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_jitter_around_the_margin_never_flaps(overs):
    """Never two evaluations over in a row: with spill_after 2 nothing ever spills."""
    policy = LocalityPolicy(margin_percent=20, spill_after=2, return_after=2)
    states: dict[str, ZoneState] = {}
    last = False
    for over in overs:
        over = over and not last
        last = over
        a = 13.0 if over else 11.9
        states = decide({"a": ZoneInput(1, a), "b": ZoneInput(1, 10.0)}, (), states, policy)
        assert states["a"].state == LOCAL


def test_spilling_zone_pods_are_parked_and_others_receive_it():
    policy = LocalityPolicy(margin_percent=50, spill_after=1)
    zones = {"a": ZoneInput(2, 100.0), "b": ZoneInput(2, 10.0), "c": ZoneInput(1, 12.0)}
    states = decide(zones, ("d",), {}, policy)
    assert states["a"] == ZoneState(SPILLING, SLOWER_THAN_MARGIN, 0)
    assert states["d"] == ZoneState(SPILLING, NO_ROUTED_PODS, 0)
    assert zone_hints(states, _served(zones)) == {
        "a": (PARKED_ZONE,),
        "b": ("b", "a", "d"),
        "c": ("c", "a", "d"),
    }


def test_overload_spills_and_when_all_would_spill_the_best_stays():
    policy = LocalityPolicy(margin_percent=50, max_rif=4, spill_after=1)
    zones = {"a": ZoneInput(2, 10.0, 9.0), "b": ZoneInput(2, 11.0, 1.0)}
    states = decide(zones, (), {}, policy)
    assert states["a"].state == SPILLING and states["a"].reason == OVERLOADED
    both = {"a": ZoneInput(2, 10.0, 9.0), "b": ZoneInput(2, 11.0, 9.0)}
    states = decide(both, (), states, policy)
    assert states["a"] == ZoneState(LOCAL, NO_ZONE_TO_SPILL_TO, 0)
    assert states["b"].state == SPILLING


def test_unknown_latency_keeps_the_count():
    policy = LocalityPolicy(spill_after=3)
    slow = {"a": ZoneInput(1, 100.0), "b": ZoneInput(1, 10.0)}
    states = decide(slow, (), {}, policy)
    states = decide({"a": ZoneInput(1, None), "b": ZoneInput(1, 10.0)}, (), states, policy)
    assert states["a"].streak == 1
    states = decide(slow, (), states, policy)
    assert states["a"].state == LOCAL and states["a"].streak == 2


def test_zone_inputs_take_the_median_and_mean():
    got = zone_inputs([("a", 1.0, 2.0), ("a", 3.0, None), ("a", 100.0, 4.0), ("b", None, None)])
    assert got == {"a": ZoneInput(3, 3.0, 3.0), "b": ZoneInput(1, None, None)}


@given(state_maps)
def test_states_round_trip(states):
    assert states_from_json(states_to_json(states)) == states


def test_garbage_states_read_as_defaults():
    assert states_from_json([1]) == {}
    assert states_from_json({"a": {"state": "x", "streak": -3}, "b": 3}) == {"a": ZoneState()}
