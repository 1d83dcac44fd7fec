"""Members are alive while their Lease is unexpired on the observer's clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aviator.sharding.members import PREFIX, MemberTable, member_lease_name


def lease(name: str, holder: str, duration: int = 3, renew: str = "t1") -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew},
    }


def test_alive_until_the_record_stops_changing_for_a_lease_duration() -> None:
    table = MemberTable()
    assert table.observe(lease("l-a", "a"), now=0.0)
    assert table.alive(2.9) == {"a"}
    assert table.next_expiry(1.0) == 2.0
    assert not table.observe(lease("l-a", "a"), now=2.0)  # same record: no renewal seen
    assert table.alive(3.0) == frozenset()
    assert table.observe(lease("l-a", "a", renew="t2"), now=3.5)  # renewed
    assert table.alive(6.0) == {"a"}


def test_a_released_lease_is_dead_at_once() -> None:
    table = MemberTable()
    table.observe(lease("l-a", "a"), now=0.0)
    table.observe(lease("l-a", "", duration=1, renew="t2"), now=0.5)
    assert table.alive(0.5) == frozenset()
    assert table.next_expiry(0.5) is None


def test_a_deleted_lease_stays_alive_for_a_lease_duration_from_then() -> None:
    table = MemberTable()
    table.observe(lease("l-a", "a"), now=0.0)
    table.deleted(lease("l-a", "a"), now=1.0)
    assert table.alive(3.5) == {"a"}
    assert not table.gone("l-a", now=3.9)  # not news: the clock does not start again
    assert table.alive(4.0) == frozenset()
    assert table.observe(lease("l-a", "a"), now=5.0)  # created again
    assert table.alive(5.0) == {"a"}


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_member_lease_names_are_dns_subdomains_and_distinct(identity: str, other: str) -> None:
    name = member_lease_name(identity)
    assert name.startswith(PREFIX) and len(name) <= 253
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789.-" for c in name)
    assert name[-1].isalnum()
    if other != identity:
        assert member_lease_name(other) != name


def test_plain_identities_keep_their_name() -> None:
    assert member_lease_name("controller-7d9f-1") == "aviator-shard-controller-7d9f-1"


def test_how_long_a_member_has_been_dead() -> None:
    table = MemberTable()
    table.observe(lease("l-a", "a"), now=0.0)
    table.observe(lease("l-b", "b"), now=0.0)
    table.observe(lease("l-b", "", renew="t2"), now=1.0)  # released at 1
    assert table.dead_for("l-a", 2.0) is None
    assert table.dead_for("l-a", 5.0) == 2.0  # expired at 3
    assert table.dead_for("l-b", 5.0) == 4.0
    assert table.dead_for("l-c", 5.0) is None
