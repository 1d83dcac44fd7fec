"""Urgent reports: the agent reports at once when a pod stops answering.

Between report intervals the agent looks at the ages of the open requests of the pods
with a threshold every `check_s` (default 0.2 s; no extra look when no local pod has a
threshold), through the source's `open_ages`: with eBPF a walk of the socket map, no
endpoint's histogram decoded. With eBPF an open
request is a client's; with the probe source, one of the agent's own probes (it stays
open until the probe times out). An endpoint whose oldest open request is older
than its pod's threshold, and was not at the previous look (it just crossed), makes the
agent send a full report at once instead of at its next tick; the controller then
evaluates the affected policies at once (aviator.controller.stalls).

The threshold of a local pod is the smallest circuitBreaker.p99Threshold among the
AviatorPolicies with the breaker on whose target Service selects it
(`open_thresholds`): the agent already watches policies and Services for its
keep-warm probes, so no other channel is needed, and the controller, which decides,
checks the same threshold on the pod's measured ports. Any server port of the pod
counts here (an extra report is cheap; a missed one is not).

Urgent reports are rate-limited: at most one per `min_gap_s` (default 0.5 s); a
crossing seen during the gap is reported when it ends, unless a regular report went
first (`reported`).

A crossing is foreseeable: a request open for `age` crosses its threshold `limit - age`
later if it is still open then. `next_look` gives that moment (and the end of the gap
when a crossing waits for it), so the agent looks then rather than up to `check_s`
later. It costs at most one look more per `check_s` while some request is open within
`check_s` of its threshold, and never a look closer than `MIN_LOOK_GAP_S` to the last.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from aviator.agent.targets import JSON, smallest_per_pod
from aviator.agent.windows import EndpointKeyLike
from aviator.api.codec import PolicyError
from aviator.api.types import AviatorPolicySpec

DEFAULT_CHECK_S = 0.2
DEFAULT_MIN_GAP_S = 0.5
# A look at the predicted crossing comes this much after it (timers fire early, and the
# kernel's and our clocks are read at different moments) ...
LOOK_MARGIN_S = 0.002
# ... and never closer than this to the previous look.
MIN_LOOK_GAP_S = 0.01


def breaker_threshold_us(policy: JSON) -> int | None:
    """The policy's p99Threshold in µs when its circuit breaker is on, else None."""
    try:
        breaker = AviatorPolicySpec.from_dict(policy.get("spec")).circuit_breaker
    except PolicyError:
        return None
    return breaker.p99_threshold.ns // 1000 if breaker.enabled else None


def open_thresholds(
    policies: Iterable[JSON],
    service_for: Callable[[str, str], JSON | None],
    pods: Iterable[JSON],
) -> dict[str, int]:
    """Pod IP → the smallest p99Threshold (µs) of the breaker policies selecting it."""
    return smallest_per_pod(policies, service_for, pods, breaker_threshold_us)


class UrgentReports:
    """Decides, at each look at the counters, whether to report at once."""

    def __init__(self, min_gap_s: float = DEFAULT_MIN_GAP_S) -> None:
        self.min_gap_s = min_gap_s
        self.thresholds: dict[str, int] = {}  # pod IP -> µs (see open_thresholds)
        self.sent = 0  # urgent reports so far
        self._above: set[tuple[str, int]] = set()  # (ip, port) past the threshold
        self._pending = False
        self._next_allowed = 0.0
        self._looked = 0.0  # when the ages were last seen
        self._soonest_s = math.inf  # then, the least time until an open one crosses

    def check(self, ages: Iterable[tuple[EndpointKeyLike, int]], now: float) -> bool:
        """Look at the endpoints' oldest open requests ((key, age µs)); True: send a
        report now."""
        if self._crossed(ages, now):
            self._pending = True
        if self._pending and now >= self._next_allowed:
            self._pending = False
            self._next_allowed = now + self.min_gap_s
            self.sent += 1
            return True
        return False

    def reported(self, ages: Iterable[tuple[EndpointKeyLike, int]], now: float) -> None:
        """A regular report with these ages (seen at `now`) went out: its crossings
        are reported."""
        self._crossed(ages, now)
        self._pending = False

    def next_look(self) -> float | None:
        """When to look next (on `now`'s clock) so that no crossing waits for the
        regular look: when the open request nearest its threshold at the last look
        crosses it, if still open, or when the gap ends for a waiting crossing. None:
        nothing to foresee."""
        at = self._looked + self._soonest_s + LOOK_MARGIN_S
        if self._pending:
            at = min(at, self._next_allowed)
        if math.isinf(at):
            return None
        return max(at, self._looked + MIN_LOOK_GAP_S)

    def _crossed(self, ages: Iterable[tuple[EndpointKeyLike, int]], now: float) -> bool:
        """Remember which endpoints are past their threshold, and how soon the next
        open request crosses its own; any new crossing since last time?"""
        above: set[tuple[str, int]] = set()
        soonest_us = math.inf
        for key, age_us in ages:
            limit = self.thresholds.get(key.ip)
            if limit is None or key.role != "server":
                continue
            if age_us > limit:
                above.add((key.ip, key.port))
            elif age_us > 0:
                soonest_us = min(soonest_us, limit - age_us)
        new = bool(above - self._above)
        self._above = above
        self._looked = now
        self._soonest_s = soonest_us / 1e6
        return new
