"""What a reconcile reads of one pod object, read once per object version.

A reconcile of a 5,000-pod policy asks every pod for its name, addresses, readiness,
node and ports several times (eligibility, latency reads, engine inputs, status rows,
endpoints); read from the raw object each time, that was a third of the reconcile.
`PodFacts` holds those answers for one object, and `PodFactsMemo` hands out the same
`PodFacts` for as long as the pod cache holds the same object.

Identity is version: an informer's cache replaces a pod's object on every update and
never changes one in place, so `memo.of(pod)` is recomputed exactly when the pod
changed. Entries keep their object alive (so its `id` cannot be reused), and are
pruned against the live cache once they outnumber it, so at most as many stale
objects are held as live ones.

Everything here is a pure function of the object (and of the Service, for ports):
the memo changes what a reconcile costs, never what it decides. A `PodFacts` also
holds what the last reconcile built of its object, under everything else it was built
from: the engine's inputs (`inputs`: the estimate, the same object while the window it
came from said the same, freshness and silence; aviator.reconcilers.evaluation.pod_input)
and the status row (`row`: state, reason, estimate; reporting.fact_row). A pod whose
object and estimate did not change costs a lookup; these go when the object goes. The slots that keep
per-object answers for one Service (`measured_ports`, `resolved_ports`) hold a few
Services each: a pod is normally behind one or two policies' Services.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aviator.api.status import PodStatus
from aviator.informers import object_key
from aviator.kube.objects import JSON
from aviator.kube.pods import is_ready, is_terminating, pod_ips, pod_name, pod_node
from aviator.selection.types import LatencyEstimate, PodInput

# Services whose port answers one PodFacts keeps (a pod behind more recomputes).
SERVICE_SLOTS = 4
# Prune once the memo holds this many entries more than twice the live pods.
PRUNE_SLACK = 1024


@dataclass(eq=False, slots=True)
class PodFacts:
    """One pod object's facts. `pod` is the object they were read from."""

    pod: JSON
    name: str
    namespace: str
    uid: str
    ips: tuple[str, ...]  # normalised, valid, in status order
    node: str  # "" while unscheduled
    ready: bool
    terminating: bool
    created: float  # creationTimestamp, seconds since the epoch (0: unreadable)
    # (what, id(service)) -> (service, answer): answers for the Services it is behind.
    _per_service: dict[tuple[str, int], tuple[JSON, Any]] = field(default_factory=dict)
    # The last status row built of this object, under what it was built from
    # (aviator.reconcilers.reporting.fact_row).
    row: tuple[tuple[str, str | None, LatencyEstimate | None], PodStatus] | None = None
    # The last engine inputs built of this object, newest first, at most two (with
    # fresh data and without, say): (estimate, fresh, silent, input)
    # (aviator.reconcilers.evaluation.pod_input).
    inputs: tuple[tuple[LatencyEstimate | None, bool, bool, PodInput], ...] = ()

    @property
    def eligible(self) -> bool:
        """Ready, not terminating and addressed: a pod that may receive traffic."""
        return self.ready and not self.terminating and bool(self.ips)

    @property
    def ip(self) -> str:
        """The pod's first address ("" when it has none)."""
        return self.ips[0] if self.ips else ""

    def per_service(self, what: str, service: JSON, compute: Callable[[JSON, JSON], Any]) -> Any:
        """`compute(service, pod)`, remembered for this object and this Service object."""
        slot = (what, id(service))
        held = self._per_service.get(slot)
        if held is not None and held[0] is service:
            return held[1]
        answer = compute(service, self.pod)
        if len(self._per_service) >= 2 * SERVICE_SLOTS:
            self._per_service.clear()
        self._per_service[slot] = (service, answer)
        return answer


def pod_facts(pod: JSON) -> PodFacts:
    """The facts of `pod`, read afresh."""
    meta = pod.get("metadata", {})
    raw_created = meta.get("creationTimestamp")
    return PodFacts(
        pod=pod,
        name=pod_name(pod),
        namespace=str(meta.get("namespace") or ""),
        uid=str(meta.get("uid") or ""),
        ips=tuple(pod_ips(pod)),
        node=pod_node(pod),
        ready=is_ready(pod),
        terminating=is_terminating(pod),
        created=timestamp(str(raw_created)) if raw_created else 0.0,
    )


@functools.lru_cache(maxsize=1 << 16)
def timestamp(raw: str) -> float:
    """Seconds since the epoch of an RFC 3339 time, 0 when unreadable."""
    try:
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class PodFactsMemo:
    """`of(pod)`: the facts of a pod object, read once per object.

    `live(key)` answers the object the pod cache holds under a key now (None: gone);
    pruning keeps only entries of objects still live.
    """

    def __init__(self, live: Callable[[str], JSON | None], live_count: Callable[[], int]) -> None:
        self._live = live
        self._live_count = live_count
        self._by_id: dict[int, PodFacts] = {}
        self.reads = 0  # objects read afresh (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._by_id)

    def of(self, pod: JSON) -> PodFacts:
        facts = self._by_id.get(id(pod))
        if facts is not None and facts.pod is pod:
            return facts
        facts = pod_facts(pod)
        self.reads += 1
        self._by_id[id(pod)] = facts
        if len(self._by_id) > 2 * self._live_count() + PRUNE_SLACK:
            self.prune()
        return facts

    def prune(self) -> None:
        """Forget every object the cache no longer holds."""
        self._by_id = {
            ident: facts
            for ident, facts in self._by_id.items()
            if self._live(object_key(facts.pod)) is facts.pod
        }
