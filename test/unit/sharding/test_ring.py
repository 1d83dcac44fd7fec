"""The ring's properties: one owner per key, order-free, minimal movement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aviator.sharding import ring

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
members_st = st.sets(names, min_size=1, max_size=8)
keys_st = st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=60, unique=True)


@given(members_st, keys_st)
def test_every_key_has_exactly_one_owner_among_the_members(
    members: set[str], keys: list[str]
) -> None:
    owners = ring.assign(members, keys)
    assert set(owners) == set(keys)
    assert all(owner in members for owner in owners.values())


def test_no_members_no_owner() -> None:
    assert ring.owner([], "ns/p") is None
    assert ring.assign([], ["ns/p"]) == {}


@given(members_st, keys_st, st.randoms())
def test_the_order_members_are_seen_in_does_not_matter(
    members: set[str], keys: list[str], rnd: object
) -> None:
    shuffled = list(members)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    for key in keys:
        assert ring.owner(shuffled, key) == ring.owner(sorted(members), key)


@given(members_st, names, keys_st)
def test_a_joining_member_takes_keys_only_for_itself(
    members: set[str], joining: str, keys: list[str]
) -> None:
    if joining in members:
        return
    before = ring.assign(members, keys)
    after = ring.assign(members | {joining}, keys)
    for key in keys:
        assert after[key] in (before[key], joining)


@given(st.sets(names, min_size=2, max_size=8), keys_st)
def test_a_leaving_member_gives_away_only_its_own_keys(members: set[str], keys: list[str]) -> None:
    leaving = sorted(members)[0]
    before = ring.assign(members, keys)
    after = ring.assign(members - {leaving}, keys)
    for key in keys:
        if before[key] != leaving:
            assert after[key] == before[key]
        else:
            assert after[key] != leaving


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_keys_spread_evenly_and_a_join_moves_about_one_nth(n: int) -> None:
    keys = [f"ns-{i % 37}/policy-{i}" for i in range(3000)]
    members = {f"aviator-controller-{i}" for i in range(n)}
    before = ring.assign(members, keys)
    counts = [list(before.values()).count(m) for m in members]
    assert max(counts) / min(counts) < 1.25, counts
    after = ring.assign(members | {"newcomer"}, keys)
    moved = sum(1 for k in keys if before[k] != after[k])
    assert abs(moved / len(keys) - 1 / (n + 1)) < 0.05, moved
