"""The engine state's JSON form: round trips, stays compact, refuses garbage."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.selection import (
    STATE_VERSION,
    BreakerRecord,
    BreakerStatus,
    DampeningState,
    EngineState,
)

names = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=12)
records = st.builds(
    BreakerRecord,
    status=st.sampled_from(list(BreakerStatus)),
    violations=st.integers(0, 10),
    since=st.none() | st.floats(-1e9, 1e10, allow_nan=False, allow_infinity=False),
    level=st.integers(0, 20),
)
states = st.builds(
    EngineState,
    evaluated=st.booleans(),
    overload=st.booleans(),
    breaker=st.dictionaries(
        names,
        records.filter(
            lambda r: not r.is_default and (r.since is not None or not r.out_of_traffic)
        ),
        max_size=6,
    ),
    dampening=st.one_of(
        st.just(DampeningState()),
        st.builds(DampeningState, st.frozensets(names, max_size=5), st.integers(1, 9)),
    ),
)


@settings(max_examples=200, deadline=None)
@given(states)
def test_state_round_trips_through_json(state: EngineState) -> None:
    text = json.dumps(state.to_dict(), sort_keys=True)
    assert EngineState.from_dict(json.loads(text)) == state


def test_default_state_is_tiny_and_versioned() -> None:
    assert EngineState().to_dict() == {"version": STATE_VERSION, "evaluated": False}
    rec = BreakerRecord(BreakerStatus.OPEN, 0, 12.5, 1)
    assert rec.to_dict() == {"status": "open", "since": 12.5, "level": 1}


def test_unknown_keys_from_a_newer_version_are_ignored() -> None:
    data: dict[str, Any] = {
        "version": STATE_VERSION + 1,
        "evaluated": True,
        "futureField": {"x": 1},
        "breaker": {"p": {"status": "halfOpen", "since": 3.0, "level": 2, "extra": 1}},
    }
    state = EngineState.from_dict(data)
    assert state.evaluated
    assert state.breaker["p"] == BreakerRecord(BreakerStatus.HALF_OPEN, 0, 3.0, 2)


def test_default_records_are_not_kept() -> None:
    state = EngineState.from_dict({"version": 1, "breaker": {"p": {"status": "closed"}}})
    assert state.breaker == {}


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 0},
        {"version": "1"},
        {"version": 1, "breaker": []},
        {"version": 1, "breaker": {"p": {"status": "sideways"}}},
        {"version": 1, "breaker": {"p": {"status": "open", "violations": -1}}},
        {"version": 1, "breaker": {"p": {"status": "open", "since": "noon"}}},
        {"version": 1, "breaker": {"p": {"status": "open", "since": 1, "level": True}}},
        {"version": 1, "breaker": {"p": {"status": "open"}}},
        {"version": 1, "dampening": {"candidate": "abc"}},
        {"version": 1, "dampening": {"candidate": ["a"], "streak": 1.5}},
    ],
)
def test_malformed_state_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EngineState.from_dict(data)
