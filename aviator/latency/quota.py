"""What the latency store holds, per agent and in total, against its bounds.

Every agent window is charged to the agent it came from (its `owner`: the node the
agent's token names) and the ledger counts, per owner and in total, the endpoints held
and the histogram buckets their deltas hold (one bucket of one delta ≈ 85 bytes; a
window's running sum holds at most as many again). A window that would take its owner
or the store over a bound (`StoreLimits`) is refused, with the bound as its reason:

- `AGENT_ENDPOINTS` / `STORE_ENDPOINTS`: a new endpoint, over the owner's / the
  store's count of endpoints;
- `AGENT_BUCKETS` / `STORE_BUCKETS`: more buckets, over the owner's / the store's.

The controller's own probe windows (`CONTROLLER_OWNER`) are charged to the total, so
the figures stay true, but never refused: the controller bounds its own probing.

Invariant: after any sequence of charges, `total` is the sum of every owner's usage,
and an owner whose usage is back to zero is no longer kept (the bookkeeping is bounded
by what the store holds, not by how many nodes ever reported). Pure bookkeeping: the
store (aviator.latency.store) says what it adds and frees.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTROLLER_OWNER = ""  # the owner of the controller's probe windows (no node has it)

AGENT_ENDPOINTS = "agent_endpoints"
STORE_ENDPOINTS = "store_endpoints"
AGENT_BUCKETS = "agent_buckets"
STORE_BUCKETS = "store_buckets"


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Bounds on what the store holds, per agent (owner) and in total; see the module
    docstring. The defaults hold a busy 110-pod node several times over per agent."""

    endpoints_per_agent: int = 4096
    endpoints: int = 32768
    buckets_per_agent: int = 262_144
    buckets: int = 1_048_576


@dataclass(slots=True)
class Usage:
    """What one owner (or the whole store) holds: endpoints and delta buckets."""

    endpoints: int = 0
    buckets: int = 0


class Ledger:
    """Usage per owner and in total, and the refusals `limits` call for."""

    __slots__ = ("_owners", "limits", "total")

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self.total = Usage()  # updated in place: readers may hold it
        self._owners: dict[str, Usage] = {}

    def usage(self, owner: str) -> Usage:
        """What `owner` holds (an agent's node; CONTROLLER_OWNER for probe windows)."""
        return self._owners.get(owner) or Usage()

    def charge(self, owner: str, endpoints: int, buckets: int) -> None:
        """`owner` holds `endpoints` and `buckets` more (fewer, when negative)."""
        usage = self._owners.get(owner)
        if usage is None:
            usage = self._owners[owner] = Usage()
        usage.endpoints += endpoints
        usage.buckets += buckets
        self.total.endpoints += endpoints
        self.total.buckets += buckets
        if usage.endpoints == 0 and usage.buckets == 0:
            del self._owners[owner]

    def refusal(self, owner: str, new: bool, buckets: int) -> str | None:
        """Why a window of `owner` with `buckets` more (a `new` endpoint) may not be
        stored, or None when it may."""
        if owner == CONTROLLER_OWNER:
            return None
        lim, mine, total = self.limits, self.usage(owner), self.total
        if new and mine.endpoints >= lim.endpoints_per_agent:
            return AGENT_ENDPOINTS
        if new and total.endpoints >= lim.endpoints:
            return STORE_ENDPOINTS
        if mine.buckets + buckets > lim.buckets_per_agent:
            return AGENT_BUCKETS
        if total.buckets + buckets > lim.buckets:
            return STORE_BUCKETS
        return None
