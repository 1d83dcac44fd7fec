"""What the informer caches hold about one policy, read once per reconcile.

`Caches` names the informer caches the policy reconciler reads and the indexes it
needs on them; `gather` reads everything one reconcile decides on into a `View`, an
immutable snapshot the pure planner works from. Reading happens here and only here,
so a plan never sees two different states of a cache.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aviator.api.topology import TopologyMode
from aviator.informers import Indexer
from aviator.kube import marks
from aviator.kube import nodes as node_facts
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_node
from aviator.kube.services import pod_selector
from aviator.reconcilers import hints, takeover
from aviator.reconcilers.evaluation import InvalidSpec, ParsedPolicies, ParsedPolicy
from aviator.reconcilers.mapping import (
    INDEX_BY_ROUTED,
    INDEX_BY_TARGET,
    POLICY_INDEXERS,
    policy_key,
)
from aviator.reconcilers.podfacts import PodFacts, PodFactsMemo, pod_facts
from aviator.reconcilers.podindex import POD_INDEXERS, selected_pods

INDEX_SLICES_BY_POLICY = "aviator/slices-by-policy"
INDEX_SERVICES_BY_POLICY = "aviator/services-by-policy"
INDEX_SERVICES_BY_TAKEOVER = "aviator/services-by-takeover"
INDEX_SLICES_BY_SERVICE = "aviator/slices-by-service"


def index_by_policy_label(obj: JSON) -> list[str]:
    """Files our slices and shadow Services under "ns/<policy>"."""
    meta = obj.get("metadata", {})
    label = (meta.get("labels") or {}).get(marks.LABEL_POLICY)
    return [f"{meta.get('namespace', '')}/{label}"] if label else []


def index_by_takeover(obj: JSON) -> list[str]:
    """Files Services a policy took over under "ns/<policy>"."""
    meta = obj.get("metadata", {})
    owner = (meta.get("annotations") or {}).get(marks.ANNOTATION_TAKEN_OVER_BY)
    return [f"{meta.get('namespace', '')}/{owner}"] if owner else []


def index_by_service_name(obj: JSON) -> list[str]:
    meta = obj.get("metadata", {})
    svc = (meta.get("labels") or {}).get(marks.LABEL_SERVICE_NAME)
    return [f"{meta.get('namespace', '')}/{svc}"] if svc else []


SLICE_INDEXERS = {INDEX_SLICES_BY_POLICY: index_by_policy_label}
BUILTIN_SLICE_INDEXERS = {INDEX_SLICES_BY_SERVICE: index_by_service_name}
SERVICE_INDEXERS = {
    INDEX_SERVICES_BY_POLICY: index_by_policy_label,
    INDEX_SERVICES_BY_TAKEOVER: index_by_takeover,
}


@dataclass
class Caches:
    """The informer caches the reconciler reads (indexes above must be installed)."""

    policies: Indexer
    services: Indexer
    pods: Indexer
    slices: Indexer
    nodes: Indexer | None = None
    builtin_slices: Indexer | None = None  # slices Kubernetes' own controllers made
    # Each pod object's facts, read once per object (aviator.reconcilers.podfacts).
    facts: PodFactsMemo = field(init=False, repr=False)
    # Each policy's parsed spec, once per generation.
    parsed: ParsedPolicies = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.facts = PodFactsMemo(self.pods.get, lambda: len(self.pods))
        self.parsed = ParsedPolicies()

    @classmethod
    def standalone(cls) -> Caches:
        """Caches over new, empty indexers with the indexes the reconciler reads (for
        tests and benchmarks that fill them themselves)."""
        return cls(
            policies=Indexer(POLICY_INDEXERS),
            services=Indexer(SERVICE_INDEXERS),
            pods=Indexer(POD_INDEXERS),
            slices=Indexer(SLICE_INDEXERS),
            builtin_slices=Indexer(BUILTIN_SLICE_INDEXERS),
        )

    def mutations(self) -> tuple[int, ...]:
        """Every cache's change count (Indexer.mutations): the same tuple, the same
        caches."""
        nodes, builtin = self.nodes, self.builtin_slices
        return (
            self.policies.mutations,
            self.services.mutations,
            self.pods.mutations,
            self.slices.mutations,
            -1 if nodes is None else nodes.mutations,
            -1 if builtin is None else builtin.mutations,
        )

    def zone_of(self, node: str) -> str | None:
        if self.nodes is None:
            return None
        obj = self.nodes.get(node)
        if obj is None:
            return None
        zone = (obj.get("metadata", {}).get("labels") or {}).get(marks.LABEL_ZONE)
        return str(zone) if zone else None

    def zones(self) -> frozenset[str]:
        """The zones of every node (where clients may be)."""
        if self.nodes is None:
            return frozenset()
        return frozenset(z for n in self.nodes.list() if (z := node_facts.zone_of(n)))

    def zone_cpu(self) -> dict[str, float] | None:
        """Each zone's share of the nodes' CPU (topology-mode Auto hints)."""
        return None if self.nodes is None else hints.zone_cpu_ratios(self.nodes.list())


_NAME = operator.attrgetter("name")


def _no_zone(node: str) -> str | None:
    return None


# The View's fields that hold cache objects (one object each, or a sequence of them).
_OBJECT_FIELDS = ("policy", "target", "routed", "holder", "recorded")
_SEQUENCE_FIELDS = (
    "rivals",
    "taken_over",
    "labelled_services",
    "slices",
    "sibling_slices",
    "builtin_slices",
    "pods",
)


@dataclass(frozen=True)
class View:
    """One policy and everything around it, as the caches held them.

    `parsed` is None when the spec is invalid (`invalid` says why); `target`, `routed`,
    `holder`, `rivals`, `pods` and `builtin_slices` are only read for a valid spec.
    """

    policy: JSON
    parsed: ParsedPolicy | None = None
    invalid: str | None = None
    target: JSON | None = None  # the target Service
    routed: JSON | None = None  # the Service under the routed name, when not the target
    holder: JSON | None = None  # the live policy the target says took it over
    rivals: Sequence[JSON] = ()  # every policy routing the same Service (this one too)
    taken_over: Sequence[JSON] = ()  # Services this policy took over
    labelled_services: Sequence[JSON] = ()  # Services carrying this policy's label
    slices: Sequence[JSON] = ()  # EndpointSlices carrying this policy's label
    sibling_slices: Sequence[JSON] = ()  # slices of other policies of the same target
    builtin_slices: Sequence[JSON] = ()  # Kubernetes' own slices of the target
    pods: Sequence[JSON] = ()  # pods the target's (or its saved) selector matches
    selector: Mapping[str, str] = field(default_factory=dict)  # the one `pods` match
    recorded: JSON | None = None  # the Service status.takeover names, if it exists
    zone_of: Callable[[str], str | None] = field(default=_no_zone, compare=False)
    zone_cpu: Mapping[str, float] | None = None  # read only for topology-mode Auto
    client_zones: frozenset[str] = frozenset()  # read only for topology latencyAware
    facts: Callable[[JSON], PodFacts] = field(default=pod_facts, compare=False)

    @property
    def namespace(self) -> str:
        return str(self.policy["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.policy["metadata"]["name"])

    @property
    def record(self) -> takeover.Record | None:
        """status.takeover as the cache holds it."""
        return takeover.record_of(self.policy.get("status"))

    @functools.cached_property
    def eligible_facts(self) -> list[PodFacts]:
        """The facts of the pods that may serve (ready, not terminating, addressed), by
        name."""
        facts = self.facts
        return sorted((f for f in map(facts, self.pods) if f.eligible), key=_NAME)

    @functools.cached_property
    def pod_zones(self) -> tuple[str | None, ...]:
        """The zone of each pod's node, in the order of `pods` (None: unscheduled, or a
        node without a zone)."""
        zone_of = self.zone_of
        return tuple(zone_of(node) if (node := pod_node(p)) else None for p in self.pods)

    @functools.cached_property
    def objects(self) -> tuple[object, ...]:
        """Every cache object this View holds, in a fixed order (with each sequence's
        length, so two sequences cannot run into each other): two Views that hold the
        very same objects read the same cluster (aviator.reconcilers.settled)."""
        objects: list[object] = [getattr(self, f) for f in _OBJECT_FIELDS]
        for name in _SEQUENCE_FIELDS:
            seq = getattr(self, name)
            objects.append(len(seq))
            objects.extend(seq)
        return tuple(objects)

    @functools.cached_property
    def eligible(self) -> list[JSON]:
        """Pods that may serve (ready, not terminating, addressed), by name."""
        return [f.pod for f in self.eligible_facts]


def gather(caches: Caches, policy: JSON) -> View:
    """Read what one reconcile of `policy` decides on from the caches."""
    meta = policy["metadata"]
    ns, key = meta["namespace"], f"{meta['namespace']}/{meta['name']}"
    taken_over = caches.services.by_index(INDEX_SERVICES_BY_TAKEOVER, key)
    record = takeover.record_of(policy.get("status"))
    recorded = caches.services.get(f"{ns}/{record.service}") if record is not None else None
    labelled_services = caches.services.by_index(INDEX_SERVICES_BY_POLICY, key)
    slices = caches.slices.by_index(INDEX_SLICES_BY_POLICY, key)
    try:
        parsed = caches.parsed.of(policy)
    except InvalidSpec as exc:
        return View(
            policy,
            invalid=str(exc),
            recorded=recorded,
            taken_over=taken_over,
            labelled_services=labelled_services,
            slices=slices,
        )
    target = caches.services.get(f"{ns}/{parsed.target}")
    routed = (
        caches.services.get(f"{ns}/{parsed.routed_service}")
        if parsed.routed_service != parsed.target
        else None
    )
    holder = None
    pods: list[JSON] = []
    builtin: list[JSON] = []
    zone_cpu = None
    client_zones: frozenset[str] = frozenset()
    selector: dict[str, str] = {}
    if target is not None:
        holder_name = (target["metadata"].get("annotations") or {}).get(
            marks.ANNOTATION_TAKEN_OVER_BY
        )
        if holder_name and holder_name != meta["name"]:
            holder = caches.policies.get(f"{ns}/{holder_name}")
        selector = pod_selector(target)
        if not selector and record is not None and record.service == parsed.target:
            # Our annotation is corrupted or was stripped: the record still knows.
            selector = dict(record.selector)
        if selector:
            pods = selected_pods(caches.pods, ns, selector)
        if caches.builtin_slices is not None:
            builtin = caches.builtin_slices.by_index(
                INDEX_SLICES_BY_SERVICE, f"{ns}/{parsed.target}"
            )
        if hints.hint_mode(target) is hints.HintMode.AUTO:
            zone_cpu = caches.zone_cpu()
        if parsed.spec.topology.mode == TopologyMode.LATENCY_AWARE:
            client_zones = caches.zones()
    siblings = [
        p
        for p in caches.policies.by_index(INDEX_BY_TARGET, f"{ns}/{parsed.target}")
        if policy_key(p) != key
    ]
    sibling_slices = [
        sl for p in siblings for sl in caches.slices.by_index(INDEX_SLICES_BY_POLICY, policy_key(p))
    ]
    return View(
        policy,
        parsed=parsed,
        target=target,
        routed=routed,
        holder=holder,
        rivals=caches.policies.by_index(INDEX_BY_ROUTED, f"{ns}/{parsed.routed_service}"),
        pods=pods,
        selector=selector,
        recorded=recorded,
        builtin_slices=builtin,
        zone_of=caches.zone_of,
        zone_cpu=zone_cpu,
        client_zones=client_zones,
        facts=caches.facts.of,
        taken_over=taken_over,
        labelled_services=labelled_services,
        slices=slices,
        sibling_slices=sibling_slices,
    )


class Views:
    """Each policy's View, gathered again only when the policy object or a cache
    changed: `gather` reads nothing but the two, and unchanged change counts mean
    unchanged caches (`Caches.mutations`). A steady fleet's reconciles then share
    one View per policy, and what it worked out once (`eligible_facts`)."""

    def __init__(self, caches: Caches) -> None:
        self.caches = caches
        self._held: dict[str, tuple[JSON, tuple[int, ...], View]] = {}

    def of(self, key: str, policy: JSON) -> View:
        seen = self.caches.mutations()
        held = self._held.get(key)
        if held is not None and held[0] is policy and held[1] == seen:
            return held[2]
        view = gather(self.caches, policy)
        self._held[key] = (policy, seen, view)
        return view

    def forget(self, key: str) -> None:
        self._held.pop(key, None)

    def clear(self) -> None:
        self._held.clear()
