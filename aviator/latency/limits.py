"""Flood limits of the agent stream: how many connections, TokenReviews and messages
the controller takes, per source and in total, before it refuses (pure bookkeeping).

A controller replica serves every agent of the cluster, and anyone who can reach it
can knock. What each knock may cost is bounded here, so that the knocks cannot crowd
out the agents or the replica's own work (its Lease renewals run on a client of their
own, see aviator/controller/app.py):

- connections: at most `connections` streams open (or being set up) in all, at most
  `connections_per_source` from one remote address, `connections_per_node` for one
  node (an agent holds one per replica; a rolling update briefly two);
- TokenReviews: a token whose verdict is cached costs none; a new one costs one
  review, granted from a token bucket per source (`source_reviews_per_s`, burst
  `source_reviews_burst`) and one in total (`reviews_per_s`, `reviews_burst`), at
  most `reviews_in_flight` at once; a refused review is HTTP 429 with Retry-After
  and costs nothing but this bookkeeping. Tokens that are not JWTs, whose `exp` has
  passed or whose `aud` is not ours are refused before any review (auth.py);
- messages: `messages_per_s` per connection (burst `messages_burst`); an agent sends
  one per report interval (several when it splits a large snapshot); at most
  `parsing` messages are decoded and ingested at once, the others wait their turn
  (a message of MAX_MESSAGE_BYTES takes up to about 19 MiB while it is decoded).

Per-source state is kept for at most `max_sources` addresses (least recently seen
go first), so the bookkeeping itself is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

TOO_MANY_CONNECTIONS = "too many connections"
TOO_MANY_FROM_SOURCE = "too many connections from this address"
TOO_MANY_FOR_NODE = "too many connections for this node"
REVIEW_RATE = "token reviews over their rate"
SOURCE_REVIEW_RATE = "token reviews from this address over their rate"


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """See the module docstring; the defaults fit a few thousand nodes."""

    connections: int = 4096
    connections_per_source: int = 16
    connections_per_node: int = 4
    reviews_per_s: float = 50.0
    reviews_burst: int = 200
    source_reviews_per_s: float = 2.0
    source_reviews_burst: int = 10
    reviews_in_flight: int = 8
    messages_per_s: float = 5.0
    messages_burst: int = 20
    parsing: int = 4
    max_sources: int = 65536


class TokenBucket:
    """`rate` tokens a second up to `burst`; `take()` spends one if there is one."""

    __slots__ = ("_at", "_clock", "_level", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._level = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        self._refill()
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until a token is there."""
        self._refill()
        return 0.0 if self._level >= 1.0 else (1.0 - self._level) / self.rate


class StreamGate:
    """Connection counts and review buckets; one per receiver."""

    def __init__(
        self, limits: StreamLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or StreamLimits()
        self._clock = clock
        self.open = 0
        self._by_source: Counter[str] = Counter()
        self._by_node: Counter[str] = Counter()
        self._reviews = TokenBucket(self.limits.reviews_per_s, self.limits.reviews_burst, clock)
        self._source_reviews: OrderedDict[str, TokenBucket] = OrderedDict()
        self.parsing = asyncio.Semaphore(self.limits.parsing)

    def enter(self, source: str) -> str | None:
        """Count a new connection from `source`; the refusal reason, or None when it
        may go on (then `leave(source)` once it ends)."""
        lim = self.limits
        if self.open >= lim.connections:
            return TOO_MANY_CONNECTIONS
        if self._by_source[source] >= lim.connections_per_source:
            return TOO_MANY_FROM_SOURCE
        self.open += 1
        self._by_source[source] += 1
        return None

    def leave(self, source: str) -> None:
        self.open -= 1
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    def enter_node(self, node: str) -> str | None:
        """Count an authenticated connection for `node` (then `leave_node(node)`)."""
        if self._by_node[node] >= self.limits.connections_per_node:
            return TOO_MANY_FOR_NODE
        self._by_node[node] += 1
        return None

    def leave_node(self, node: str) -> None:
        self._by_node[node] -= 1
        if self._by_node[node] <= 0:
            del self._by_node[node]

    def review(self, source: str) -> tuple[str | None, float]:
        """May `source` cost a TokenReview now? (refusal reason or None, seconds to
        wait before asking again)."""
        bucket = self._source_reviews.get(source)
        if bucket is None:
            lim = self.limits
            bucket = TokenBucket(lim.source_reviews_per_s, lim.source_reviews_burst, self._clock)
            self._source_reviews[source] = bucket
            while len(self._source_reviews) > self.limits.max_sources:
                self._source_reviews.popitem(last=False)
        self._source_reviews.move_to_end(source)
        if not bucket.take():
            return SOURCE_REVIEW_RATE, bucket.wait_s()
        if not self._reviews.take():
            return REVIEW_RATE, self._reviews.wait_s()
        return None, 0.0

    def message_bucket(self) -> TokenBucket:
        """The message allowance of one new connection."""
        return TokenBucket(self.limits.messages_per_s, self.limits.messages_burst, self._clock)
