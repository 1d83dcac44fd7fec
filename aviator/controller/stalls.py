"""Agent reports of requests still open → the policies to evaluate at once.

An agent reports each endpoint's oldest open request with its windows (and reports at
once when one crosses its pod's p99Threshold, see aviator.agent.urgent). When the
stream receiver (aviator.latency.receiver, `on_open`) hands such windows over, the
policies whose target selects the pod at that IP, have the circuit breaker on, and
have a p99Threshold the open request is older than are enqueued as urgent
(`Controller.enqueue_urgent`: rate-limited per key and overall). Their reconcile then
evaluates at once when a serving pod is newly stalled (aviator.reconcilers.cadence).

Each policy's threshold is read from its spec once per generation. Busy pods report
a young open request in most windows, so windows are first compared with the
smallest threshold of all policies (recomputed at most every `FLOOR_EVERY_S`): only
older open requests cost a look-up of their pod's policies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence

from aviator.controller.agents import INDEX_POD_IP
from aviator.informers import Indexer
from aviator.kube.objects import JSON
from aviator.latency.schema import EndpointWindow
from aviator.reconcilers import mapping
from aviator.reconcilers.evaluation import InvalidSpec, ParsedPolicies

FLOOR_EVERY_S = 1.0


class StallWatch:
    """Callable for the receiver's `on_open`; enqueues via `enqueue(key)`."""

    def __init__(
        self,
        pods: Indexer,
        policies: Indexer,
        services: mapping.Cache,
        enqueue: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pods = pods
        self._policies = policies
        self._services = services
        self._enqueue = enqueue
        self._parsed = ParsedPolicies()  # a policy's breaker, once per generation
        self._clock = clock
        self._floor_ms = math.inf
        self._floor_at: float | None = None
        self.enqueued = 0

    def __call__(self, windows: Sequence[EndpointWindow]) -> None:
        for key in sorted(self.keys(windows)):
            self.enqueued += 1
            self._enqueue(key)

    def keys(self, windows: Iterable[EndpointWindow]) -> set[str]:
        """The policies that have a pod of `windows` open longer than their threshold."""
        out: set[str] = set()
        floor = self._floor()
        for w in windows:
            open_ms = w.oldest_open_us / 1000.0
            if not open_ms > floor:
                continue
            for pod in self._pods.by_index(INDEX_POD_IP, w.ip):
                for key in mapping.keys_for_pod(pod, self._policies, self._services):
                    policy = self._policies.get(key)
                    limit = None if policy is None else self._threshold_ms(policy)
                    if limit is not None and open_ms > limit:
                        out.add(key)
        return out

    def _floor(self) -> float:
        """The smallest threshold of all policies (inf: none has the breaker on)."""
        now = self._clock()
        if self._floor_at is None or now - self._floor_at >= FLOOR_EVERY_S:
            limits = (self._threshold_ms(p) for p in self._policies.list())
            self._floor_ms = min((x for x in limits if x is not None), default=math.inf)
            self._floor_at = now
        return self._floor_ms

    def _threshold_ms(self, policy: JSON) -> float | None:
        """The breaker's p99Threshold in ms; None when it is off or the spec is invalid."""
        try:
            breaker = self._parsed.of(policy).selection.breaker
        except InvalidSpec:
            return None
        return breaker.p99_threshold_ms if breaker.enabled else None
