"""The store's ledger: totals are the owners' sums, idle owners are not kept, and a
refusal names the bound a window would cross (the controller's probes: never)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aviator.latency.quota import (
    AGENT_BUCKETS,
    AGENT_ENDPOINTS,
    CONTROLLER_OWNER,
    STORE_BUCKETS,
    STORE_ENDPOINTS,
    Ledger,
    StoreLimits,
)

OWNERS = ("n1", "n2", "n3", CONTROLLER_OWNER)


@given(
    st.lists(
        st.tuples(st.sampled_from(OWNERS), st.integers(0, 3), st.integers(0, 50)),
        max_size=40,
    ),
    st.data(),
)
def test_totals_are_the_owners_sums_and_idle_owners_go(
    adds: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    ledger = Ledger()
    for owner, endpoints, buckets in adds:
        ledger.charge(owner, endpoints, buckets)
    # Free everything again, in any order: nothing is left behind.
    for owner, endpoints, buckets in data.draw(st.permutations(adds)):
        assert ledger.total.endpoints == sum(ledger.usage(o).endpoints for o in OWNERS)
        assert ledger.total.buckets == sum(ledger.usage(o).buckets for o in OWNERS)
        ledger.charge(owner, -endpoints, -buckets)
    assert ledger.total.endpoints == ledger.total.buckets == 0
    assert not ledger._owners


def test_each_bound_is_its_own_reason() -> None:
    ledger = Ledger(
        StoreLimits(endpoints_per_agent=2, endpoints=3, buckets_per_agent=10, buckets=15)
    )
    ledger.charge("n1", 2, 8)
    assert ledger.refusal("n1", True, 0) == AGENT_ENDPOINTS
    assert ledger.refusal("n1", False, 2) is None  # an endpoint it holds, within its buckets
    assert ledger.refusal("n1", False, 3) == AGENT_BUCKETS
    ledger.charge("n2", 1, 6)
    assert ledger.refusal("n3", True, 0) == STORE_ENDPOINTS
    assert ledger.refusal("n2", False, 2) == STORE_BUCKETS  # 14 + 2 > 15, n2 itself at 8
    # The controller's probes are counted, never refused.
    assert ledger.refusal(CONTROLLER_OWNER, True, 100) is None
    ledger.charge(CONTROLLER_OWNER, 1, 100)
    assert ledger.total.endpoints == 4 and ledger.total.buckets == 114
