"""The AviatorPolicy reconciler: policy key → routing writes, status, Events.

Reads only from informer caches; writes only when desired ≠ observed; asks to be
requeued after `evaluationInterval`. One reconcile:

1. policy gone → forget it (its objects were cleaned by the finalizer, or are
   garbage-collected through their ownerReferences);
2. policy deleting → cleanup (restore a taken-over selector FIRST, then delete our
   slices and shadow Service), then drop the finalizer;
3. finalizer added if missing; spec parsed (invalid → InvalidSpec, routing left as is);
4. conflict: another live policy that routes the same Service and is older (creation
   time, then name) wins; the later one reports Conflict and owns nothing;
5. leftovers of a previous targetRef/routing are removed (old shadow Service,
   takeover of another Service, slices of another Service);
6. target Service resolved (missing → ServiceNotFound), eligible pods from its
   selector (or the selector a takeover saved); empty selector = error;
7. latency per pod (LatencyStore for ebpf, controller probes for probe), selection
   engine, then shadow Service / slices / takeover (slices are published BEFORE a
   selector is removed, so the Service never has zero endpoints), Events, status.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aviator.controller.metrics import ControllerMetrics
from aviator.informers import Indexer
from aviator.kube import marks as naming
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.pods import is_eligible, is_terminating, pod_ips, pod_name
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, SERVICES, Resource
from aviator.kube.services import pod_selector
from aviator.latency.histogram import Histogram
from aviator.latency.store import LatencyStore
from aviator.reconcilers import evaluation as engine
from aviator.reconcilers import slices
from aviator.reconcilers.mapping import INDEX_BY_ROUTED, routed_service
from aviator.reconcilers.podindex import selected_pods
from aviator.reconcilers.probe import Prober, ProbeTarget
from aviator.reconcilers.services import (
    TakeoverState,
    desired_shadow_service,
    restore_patch,
    shadow_service_patch,
    takeover_patch,
    takeover_state,
)
from aviator.reconcilers.status import (
    REASON_CONFLICT,
    REASON_INVALID_SPEC,
    REASON_NO_ELIGIBLE_PODS,
    REASON_NO_LATENCY_DATA,
    REASON_NO_SELECTOR,
    REASON_OVERLOAD,
    REASON_SELECTOR_RESTORED,
    REASON_SERVICE_NOT_FOUND,
    Observation,
    PodRow,
    Problem,
    build_status,
    effective_source,
    status_changed,
)
from aviator.runtime.events import NORMAL, WARNING, EventRecorder
from aviator.runtime.loop import Result

JSON = dict[str, Any]
log = logging.getLogger(__name__)

INDEX_SLICES_BY_POLICY = "aviator/slices-by-policy"
INDEX_SERVICES_BY_POLICY = "aviator/services-by-policy"
DEFAULT_REQUEUE_S = 5.0


CACHE_BEHIND_RETRY_S = 0.2
# A requeue timer may fire a little early; an evaluation this close to due counts.
EARLY_FRACTION = 0.05


class CacheBehind(Exception):
    """A write conflicted with a newer object the cache has not seen yet."""


def index_by_policy_label(obj: JSON) -> list[str]:
    """Files our slices and shadow Services under "ns/<policy>"."""
    meta = obj.get("metadata", {})
    label = (meta.get("labels") or {}).get(naming.LABEL_POLICY)
    return [f"{meta.get('namespace', '')}/{label}"] if label else []


def index_by_takeover(obj: JSON) -> list[str]:
    """Files Services a policy took over under "ns/<policy>"."""
    meta = obj.get("metadata", {})
    owner = (meta.get("annotations") or {}).get(naming.ANNOTATION_TAKEN_OVER_BY)
    return [f"{meta.get('namespace', '')}/{owner}"] if owner else []


INDEX_SERVICES_BY_TAKEOVER = "aviator/services-by-takeover"
INDEX_SLICES_BY_SERVICE = "aviator/slices-by-service"


def index_by_service_name(obj: JSON) -> list[str]:
    meta = obj.get("metadata", {})
    svc = (meta.get("labels") or {}).get(naming.LABEL_SERVICE_NAME)
    return [f"{meta.get('namespace', '')}/{svc}"] if svc else []


SLICE_INDEXERS = {INDEX_SLICES_BY_POLICY: index_by_policy_label}
BUILTIN_SLICE_INDEXERS = {INDEX_SLICES_BY_SERVICE: index_by_service_name}
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
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

    def zone_of(self, node: str) -> str | None:
        if self.nodes is None:
            return None
        obj = self.nodes.get(node)
        if obj is None:
            return None
        zone = (obj.get("metadata", {}).get("labels") or {}).get("topology.kubernetes.io/zone")
        return str(zone) if zone else None


@dataclass
class _Memory:
    """What the leader remembers about a policy between reconciles."""

    uid: str
    engine_state: JSON | None = None
    status: JSON | None = None  # last status we wrote (the cache may lag behind it)
    last_evaluation: float | None = None  # store clock, for "fresh samples since"
    next_evaluation: float | None = None  # store clock: when the engine may run again
    generation: int | None = None  # spec generation of `outcome`
    outcome: engine.Outcome | None = None  # the last engine result


@dataclass
class _Routing:
    """What this reconcile found about the Services; problems to report."""

    problems: list[Problem] = field(default_factory=list)
    blocked: bool = False
    remove_selector: bool = False  # take over now (after our slices are published)
    taken: bool = False  # taken over earlier and still ours


def _now_iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _created(policy: JSON) -> tuple[str, str]:
    meta = policy.get("metadata", {})
    return str(meta.get("creationTimestamp", "")), str(meta.get("name", ""))


class PolicyReconciler:
    def __init__(
        self,
        client: KubeClient,
        caches: Caches,
        store: LatencyStore,
        recorder: EventRecorder,
        metrics: ControllerMetrics,
        *,
        prober: Prober | None = None,
        wall_clock: Callable[[], float] = time.time,
        store_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.caches = caches
        self.store = store
        self.recorder = recorder
        self.metrics = metrics
        self.prober = prober or Prober()
        self._wall = wall_clock
        self._store_now = store_clock
        self._memory: dict[str, _Memory] = {}

    def forget_all(self) -> None:
        """Drop in-memory state (leadership lost: the next leader starts from status)."""
        self._memory.clear()

    # --- entry point ----------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        start = time.perf_counter()
        try:
            result = await self._reconcile(key)
        except Exception:
            self.metrics.reconcile_errors.inc()
            self.metrics.reconcile_duration.labels(result="error").observe(
                time.perf_counter() - start
            )
            raise
        self.metrics.reconcile_duration.labels(result="ok").observe(time.perf_counter() - start)
        return result

    async def _reconcile(self, key: str) -> Result | None:
        try:
            return await self._reconcile_cached(key)
        except CacheBehind as exc:
            # Our own recent write is not in the informer cache yet: look again soon
            # instead of reporting an error.
            log.debug("%s: %s; cache behind, retrying", key, exc)
            return Result(requeue_after=CACHE_BEHIND_RETRY_S)

    async def _reconcile_cached(self, key: str) -> Result | None:
        policy = self.caches.policies.get(key)
        namespace, _, name = key.partition("/")
        if policy is None:
            self._memory.pop(key, None)
            self.metrics.forget_policy(namespace, name)
            return None
        meta = policy.get("metadata", {})
        if meta.get("deletionTimestamp"):
            await self._finalize(policy)
            self._memory.pop(key, None)
            self.metrics.forget_policy(namespace, name)
            return None
        memory = self._memory.get(key)
        if memory is None or memory.uid != meta.get("uid"):
            memory = self._memory[key] = _Memory(uid=str(meta.get("uid", "")))
        if naming.FINALIZER not in (meta.get("finalizers") or []):
            policy = await self._add_finalizer(policy)
        return await self._evaluate(policy, memory)

    # --- finalizer ------------------------------------------------------------------

    async def _add_finalizer(self, policy: JSON) -> JSON:
        meta = policy["metadata"]
        patch = {
            "metadata": {
                "finalizers": [*(meta.get("finalizers") or []), naming.FINALIZER],
                "resourceVersion": meta.get("resourceVersion"),
            }
        }
        try:
            updated = await self.client.patch(
                AVIATORPOLICIES, meta["name"], patch, meta["namespace"]
            )
        except ApiError as exc:
            if exc.conflict:
                raise CacheBehind(f"policy {meta['name']} changed") from exc
            raise
        self.metrics.api_write("AviatorPolicy", "patch")
        return updated

    async def _finalize(self, policy: JSON) -> None:
        meta = policy["metadata"]
        if naming.FINALIZER not in (meta.get("finalizers") or []):
            return
        await self._release_everything(policy)
        remaining = [f for f in meta.get("finalizers") or [] if f != naming.FINALIZER]
        patch = {"metadata": {"finalizers": remaining, "resourceVersion": meta["resourceVersion"]}}
        try:
            await self.client.patch(AVIATORPOLICIES, meta["name"], patch, meta["namespace"])
        except ApiError as exc:
            if exc.conflict:
                raise CacheBehind(f"policy {meta['name']} changed") from exc
            if not exc.not_found:
                raise
        self.metrics.api_write("AviatorPolicy", "patch")
        log.info("policy %s/%s: cleaned up, finalizer removed", meta["namespace"], meta["name"])

    async def _release_everything(self, policy: JSON, keep_routed: str | None = None) -> None:
        """Undo what this policy made, except what routes `keep_routed` in its current
        mode: selectors restored first, then our slices and shadow Services deleted."""
        meta = policy["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        key = f"{ns}/{name}"
        mode_takeover = keep_routed is not None and routed_service(policy) == keep_routed
        for svc in self.caches.services.by_index(INDEX_SERVICES_BY_TAKEOVER, key):
            svc_name = svc["metadata"]["name"]
            if mode_takeover and svc_name == keep_routed:
                continue
            await self._restore(svc, name)
        for svc in self.caches.services.by_index(INDEX_SERVICES_BY_POLICY, key):
            svc_name = svc["metadata"]["name"]
            if svc_name == keep_routed or not naming.is_owned_by(svc, uid):
                continue
            await self._delete(SERVICES, "Service", ns, svc_name)
        for sl in self.caches.slices.by_index(INDEX_SLICES_BY_POLICY, key):
            labels = sl["metadata"].get("labels") or {}
            if keep_routed is not None and labels.get(naming.LABEL_SERVICE_NAME) == keep_routed:
                continue
            await self._delete(ENDPOINTSLICES, "EndpointSlice", ns, sl["metadata"]["name"])

    async def _restore(self, svc: JSON, policy_name: str) -> None:
        restore = restore_patch(svc, policy_name)
        if restore is None:
            return
        meta = svc["metadata"]
        try:
            await self.client.patch(SERVICES, meta["name"], restore.patch, meta["namespace"])
        except ApiError as exc:
            if not exc.not_found:
                raise
        self.metrics.api_write("Service", "patch")
        log.info(
            "Service %s/%s given back (selector restored: %s)",
            meta["namespace"],
            meta["name"],
            restore.restores_selector,
        )

    async def _delete(self, res: Any, kind: str, ns: str, name: str) -> None:
        try:
            await self.client.delete(res, name, ns)
        except ApiError as exc:
            if not exc.not_found:
                raise
        self.metrics.api_write(kind, "delete")

    # --- evaluation -----------------------------------------------------------------

    async def _evaluate(self, policy: JSON, memory: _Memory) -> Result | None:
        meta = policy["metadata"]
        ns, name = meta["namespace"], meta["name"]
        generation = int(meta.get("generation") or 0)
        now = self._wall()
        try:
            parsed = engine.parse_policy(policy)
        except engine.InvalidSpec as exc:
            # Routing stays as it was: an invalid spec must not take traffic away.
            await self._write_status(
                policy,
                memory,
                Observation(
                    generation=generation,
                    now_iso=_now_iso(now),
                    problems=[Problem(REASON_INVALID_SPEC, f"invalid spec: {exc}")],
                    engine_state=memory.engine_state or _persisted_state(policy),
                ),
            )
            return None
        requeue = Result(requeue_after=parsed.interval_s)
        routed = parsed.routed_service

        winner = self._conflicting_policy(policy, routed)
        if winner is not None:
            await self._release_everything(policy)
            message = (
                f"Service {routed} is already routed by AviatorPolicy {winner}; "
                "this policy does nothing until that one is gone"
            )
            await self._write_status(
                policy,
                memory,
                Observation(
                    generation=generation,
                    now_iso=_now_iso(now),
                    routed_service=routed,
                    problems=[Problem(REASON_CONFLICT, message)],
                ),
            )
            return requeue

        # Leftovers of an earlier targetRef / routing.
        await self._release_everything(policy, keep_routed=routed)

        target = self.caches.services.get(f"{ns}/{parsed.target}")
        if target is None:
            problem = Problem(REASON_SERVICE_NOT_FOUND, f"Service {ns}/{parsed.target} not found")
            await self._write_status(
                policy,
                memory,
                Observation(
                    generation=generation,
                    now_iso=_now_iso(now),
                    routed_service=routed,
                    problems=[problem],
                    engine_state=memory.engine_state or _persisted_state(policy),
                ),
            )
            return requeue

        selector = pod_selector(target)
        if selector:
            routing = await self._prepare_routing(policy, parsed, target)
        else:
            routing = _Routing(blocked=True)
            routing.problems.append(
                Problem(
                    REASON_NO_SELECTOR,
                    f"Service {ns}/{parsed.target} has no selector; Aviator needs one to "
                    "find its pods (an empty selector never means every pod)",
                )
            )
        if routing.blocked:
            await self._write_status(
                policy,
                memory,
                Observation(
                    generation=generation,
                    now_iso=_now_iso(now),
                    routed_service=routed,
                    problems=routing.problems,
                    engine_state=memory.engine_state or _persisted_state(policy),
                ),
            )
            return requeue

        pods = selected_pods(self.caches.pods, ns, selector)
        eligible = sorted((p for p in pods if is_eligible(p)), key=pod_name)
        observed_slices = self.caches.slices.by_index(INDEX_SLICES_BY_POLICY, f"{ns}/{name}")
        # What serves now: our last decision while we lead (the slice cache may not
        # show our own latest write yet), else what the slices say (a new leader
        # inherits its predecessor's published set).
        current_active = (
            set(memory.outcome.active)
            if memory.outcome is not None
            else _active_in(observed_slices, routed)
        )

        # The engine runs once per evaluationInterval: its counters (breaker
        # violations, dampening streaks) count evaluations, and events (our own writes,
        # pod churn) must not make them run faster. In between, a reconcile only drops
        # pods that stopped being eligible, at once.
        clock = self._store_now()
        due = (
            memory.outcome is None
            or memory.generation != generation
            or memory.next_evaluation is None
            or clock >= memory.next_evaluation - EARLY_FRACTION * parsed.interval_s
        )
        latencies = await self._latencies(parsed, eligible, probe=due)
        outcome = None
        if not due and memory.outcome is not None:
            outcome = engine.carry_over(
                memory.outcome,
                {pod_name(p) for p in eligible},
                min(parsed.selection.min_endpoints, len(eligible)),
            )
        if outcome is None:
            fresh = self._freshness(memory, latencies)
            state_in = memory.engine_state or _persisted_state(policy)
            outcome = engine.select(
                parsed, eligible, latencies, fresh, current_active, state_in, now
            )
            memory.engine_state = outcome.engine_state
            memory.outcome = outcome
            memory.generation = generation
            memory.next_evaluation = clock + parsed.interval_s
        requeue = Result(requeue_after=max(0.0, (memory.next_evaluation or clock) - clock))

        problems = list(routing.problems)
        active_pods = [p for p in eligible if pod_name(p) in outcome.active]
        if not eligible:
            problems.append(
                Problem(
                    REASON_NO_ELIGIBLE_PODS,
                    f"no ready pod matches the selector of Service {ns}/{parsed.target}",
                )
            )
        elif not active_pods:
            # Never publish an empty set while a ready pod exists.
            raise RuntimeError(
                f"policy {ns}/{name}: selection returned no pod out of {len(eligible)}"
            )
        if outcome.overload:
            problems.append(Problem(REASON_OVERLOAD, outcome.overload))
        if eligible and not any(latencies.get(pod_name(p)) for p in eligible):
            problems.append(
                Problem(
                    REASON_NO_LATENCY_DATA,
                    f"no {parsed.latency_source} latency data for any pod yet; all are kept",
                )
            )

        changed_slices = await self._publish_slices(
            policy, parsed, target, active_pods, observed_slices
        )
        if routing.remove_selector:
            await self._take_over(target, name)
        if parsed.mode == "takeover" and (routing.remove_selector or routing.taken):
            await self._remove_builtin_endpoints(target, first=routing.remove_selector)

        await self._record_events(policy, outcome, current_active, changed_slices, eligible)

        p99 = self._active_p99(parsed, active_pods, latencies)
        rows = [
            _row(p, outcome.states.get(pod_name(p), "unknown"), latencies.get(pod_name(p)), outcome)
            for p in eligible
        ]
        # Pods of the Service that may not serve at all, so `describe` explains them.
        eligible_names = {pod_name(p) for p in eligible}
        for p in pods:
            if pod_name(p) not in eligible_names:
                why = "Terminating" if is_terminating(p) else "NotReady"
                rows.append(_row(p, "standby", None, outcome, reason=why))
        source = effective_source(
            lat.source for lat in latencies.values() if lat is not None and lat.samples
        )
        self.metrics.active.labels(ns, name).set(len(active_pods))
        self.metrics.total.labels(ns, name).set(len(eligible))
        if p99 is not None:
            self.metrics.p99.labels(ns, name).set(p99)
        await self._write_status(
            policy,
            memory,
            Observation(
                generation=generation,
                now_iso=_now_iso(now),
                active=len(active_pods),
                total=len(eligible),
                p99_ms=p99,
                source=source,
                problems=problems,
                pods=rows,
                routed_service=routed,
                engine_state=outcome.engine_state,
            ),
        )
        return requeue

    def _freshness(
        self, memory: _Memory, latencies: dict[str, engine.Latency | None]
    ) -> dict[str, bool]:
        """Per pod: did samples arrive since the previous evaluation? Only fresh data
        moves the circuit breaker, so one slow window is not counted twice."""
        now = self._store_now()
        since = None if memory.last_evaluation is None else now - memory.last_evaluation
        memory.last_evaluation = now
        return {
            name: lat is not None and (since is None or lat.age_s < since)
            for name, lat in latencies.items()
        }

    def _conflicting_policy(self, policy: JSON, routed: str) -> str | None:
        """The older live policy routing the same Service, if any."""
        ns = policy["metadata"]["namespace"]
        mine = _created(policy)
        for other in self.caches.policies.by_index(INDEX_BY_ROUTED, f"{ns}/{routed}"):
            ometa = other.get("metadata", {})
            if ometa.get("uid") == policy["metadata"].get("uid") or ometa.get("deletionTimestamp"):
                continue
            if _created(other) < mine:
                return str(ometa.get("name"))
        return None

    async def _prepare_routing(
        self, policy: JSON, parsed: engine.ParsedPolicy, target: JSON
    ) -> _Routing:
        meta = policy["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], str(meta.get("uid", ""))
        routing = _Routing()
        if parsed.mode == "shadow":
            if parsed.routed_service == parsed.target:
                routing.problems.append(
                    Problem(REASON_INVALID_SPEC, "routing.serviceName must differ from the target")
                )
                routing.blocked = True
                return routing
            desired = desired_shadow_service(target, parsed.routed_service, name, uid)
            observed = self.caches.services.get(f"{ns}/{parsed.routed_service}")
            if observed is None:
                try:
                    await self.client.create(SERVICES, desired, ns)
                except ApiError as exc:
                    if exc.conflict:
                        # It exists and the cache has not seen it: maybe someone
                        # else's. Publish nothing under that name until we know.
                        raise CacheBehind(f"Service {parsed.routed_service} exists") from exc
                    raise
                self.metrics.api_write("Service", "create")
            elif not naming.is_owned_by(observed, uid):
                routing.problems.append(
                    Problem(
                        REASON_CONFLICT,
                        f"Service {ns}/{parsed.routed_service} exists and is not managed by "
                        "this policy; set routing.serviceName to another name",
                    )
                )
                routing.blocked = True
            else:
                patch = shadow_service_patch(observed, desired)
                if patch is not None:
                    await self.client.patch(SERVICES, parsed.routed_service, patch, ns)
                    self.metrics.api_write("Service", "patch")
            return routing

        state = takeover_state(target, name)
        if state is TakeoverState.OTHER_POLICY:
            holder = (target["metadata"].get("annotations") or {}).get(
                naming.ANNOTATION_TAKEN_OVER_BY
            )
            if self.caches.policies.get(f"{ns}/{holder}") is not None:
                routing.problems.append(
                    Problem(
                        REASON_CONFLICT, f"Service {ns}/{parsed.target} is taken over by {holder}"
                    )
                )
                routing.blocked = True
                return routing
            # The policy that took it over is gone without cleaning up: adopt it.
            state = TakeoverState.TAKEN
            await self.client.patch(
                SERVICES,
                parsed.target,
                {"metadata": {"annotations": {naming.ANNOTATION_TAKEN_OVER_BY: name}}},
                ns,
            )
            self.metrics.api_write("Service", "patch")
        if state is TakeoverState.UNTOUCHED:
            routing.remove_selector = True
        elif state is TakeoverState.TAKEN:
            routing.taken = True
        elif state is TakeoverState.RESTORED:
            routing.problems.append(
                Problem(
                    REASON_SELECTOR_RESTORED,
                    f"someone restored the selector of Service {ns}/{parsed.target}; its "
                    "built-in slices route to every pod again. Aviator does not fight: "
                    "delete the policy, or remove the selector to hand routing back",
                )
            )
        return routing

    async def _take_over(self, target: JSON, policy_name: str) -> None:
        meta = target["metadata"]
        patch = takeover_patch(target, policy_name)
        patch["metadata"]["resourceVersion"] = meta.get("resourceVersion")
        await self.client.patch(SERVICES, meta["name"], patch, meta["namespace"])
        self.metrics.api_write("Service", "patch")
        log.info("Service %s/%s taken over by %s", meta["namespace"], meta["name"], policy_name)

    async def _remove_builtin_endpoints(self, target: JSON, *, first: bool) -> None:
        """Without a selector Kubernetes stops updating, but does not delete, its own
        slices (and Endpoints, which the mirroring controller would turn into slices
        again): they would keep routing to every pod. Delete them; with the selector
        gone nothing recreates them, and restoring the selector brings them back."""
        meta = target["metadata"]
        ns, svc = meta["namespace"], meta["name"]
        if self.caches.builtin_slices is not None:
            for sl in self.caches.builtin_slices.by_index(INDEX_SLICES_BY_SERVICE, f"{ns}/{svc}"):
                await self._delete(ENDPOINTSLICES, "EndpointSlice", ns, sl["metadata"]["name"])
        if first:
            try:
                await self.client.delete(ENDPOINTS, svc, ns)
                self.metrics.api_write("Endpoints", "delete")
            except ApiError as exc:
                if not (exc.not_found or exc.status == 403):
                    raise
                if exc.status == 403:
                    log.warning("may not delete Endpoints %s/%s: %s", ns, svc, exc)

    async def _latencies(
        self, parsed: engine.ParsedPolicy, pods: list[JSON], *, probe: bool = True
    ) -> dict[str, engine.Latency | None]:
        """Per eligible pod. Probe mode sends a round of probes only when `probe` (an
        evaluation is due); otherwise it reports what the last rounds measured."""
        out: dict[str, engine.Latency | None] = {}
        if parsed.latency_source == "probe":
            targets = {
                pod_name(p): ProbeTarget(pod_ips(p)[0], parsed.probe_port, parsed.probe_path)
                for p in pods
            }
            if probe:
                # A window of a few intervals: recovery shows within a few evaluations.
                await self.prober.probe_round(targets.values(), window_s=3 * parsed.interval_s)
            for pname, t in targets.items():
                est = self.prober.estimate(t)
                out[pname] = (
                    None
                    if est is None
                    else engine.Latency(
                        p50_ms=est.p50_ms,
                        p90_ms=est.p90_ms,
                        p99_ms=est.p99_ms,
                        rif=0,
                        samples=est.samples,
                        age_s=est.age_s,
                        source="probe",
                    )
                )
            return out
        now = self._store_now()
        for p in pods:
            est_store = None
            for ip in pod_ips(p):
                est_store = self.store.estimate(ip, now)
                if est_store is not None:
                    break
            out[pod_name(p)] = (
                None
                if est_store is None
                else engine.Latency(
                    p50_ms=est_store.p50_ms,
                    p90_ms=est_store.p90_ms,
                    p99_ms=est_store.p99_ms,
                    rif=est_store.rif,
                    samples=est_store.samples,
                    age_s=est_store.age_s,
                    source=est_store.source,
                )
            )
        return out

    def _active_p99(
        self,
        parsed: engine.ParsedPolicy,
        active: list[JSON],
        latencies: dict[str, engine.Latency | None],
    ) -> float | None:
        """p99 of the traffic the active set serves: their histograms merged."""
        if parsed.latency_source == "probe":
            hist = Histogram.merge_all(
                self.prober.histogram(
                    ProbeTarget(pod_ips(p)[0], parsed.probe_port, parsed.probe_path)
                )
                for p in active
            )
        else:
            ips = [ip for p in active for ip in pod_ips(p)]
            hist = self.store.merged(ips, self._store_now())
        value = hist.quantile(0.99)
        return None if value is None else value / 1000.0

    async def _publish_slices(
        self,
        policy: JSON,
        parsed: engine.ParsedPolicy,
        target: JSON,
        active_pods: list[JSON],
        observed: list[JSON],
    ) -> bool:
        meta = policy["metadata"]
        owner = slices.SliceOwner(
            namespace=meta["namespace"],
            service=parsed.routed_service,
            policy=meta["name"],
            policy_uid=str(meta.get("uid", "")),
        )
        desired = slices.desired_endpoints(target, active_pods, self.caches.zone_of)
        plan = slices.plan_slices(owner, desired, observed)
        ns = meta["namespace"]
        # Creates and updates before deletes: an endpoint moving between slices is never
        # missing in between.
        for obj in plan.create:
            try:
                await self.client.create(ENDPOINTSLICES, obj, ns)
            except ApiError as exc:
                if exc.conflict:
                    raise CacheBehind(f"EndpointSlice {obj['metadata']['name']} exists") from exc
                raise
            self.metrics.api_write("EndpointSlice", "create")
        for obj in plan.update:
            try:
                await self.client.replace(ENDPOINTSLICES, obj, ns)
            except ApiError as exc:
                if exc.conflict or exc.not_found:
                    raise CacheBehind(f"EndpointSlice {obj['metadata']['name']} changed") from exc
                raise
            self.metrics.api_write("EndpointSlice", "update")
        for sname in plan.delete:
            await self._delete(ENDPOINTSLICES, "EndpointSlice", ns, sname)
        return not plan.empty

    async def _record_events(
        self,
        policy: JSON,
        outcome: engine.Outcome,
        before: set[str],
        changed: bool,
        eligible: list[JSON],
    ) -> None:
        by_name = {pod_name(p): p for p in eligible}
        ns, name = policy["metadata"]["namespace"], policy["metadata"]["name"]
        for ev in outcome.events:
            if ev.reason == "PodEjected":
                self.metrics.ejections.labels(ns, name).inc()
            await self.recorder.record(
                policy,
                ev.reason,
                ev.message,
                action=ev.action,
                event_type=WARNING if ev.reason == "PodEjected" else NORMAL,
                related=by_name.get(ev.pod) if ev.pod else None,
            )
        if changed and outcome.active != before:
            added = sorted(outcome.active - before)
            removed = sorted(before - outcome.active)
            note = f"{len(outcome.active)} pods active"
            if added:
                note += f"; added {', '.join(added[:10])}"
            if removed:
                note += f"; removed {', '.join(removed[:10])}"
            await self.recorder.record(policy, "EndpointsUpdated", note, action="UpdateEndpoints")

    async def _write_status(self, policy: JSON, memory: _Memory, obs: Observation) -> None:
        previous = memory.status or policy.get("status") or {}
        new = build_status(obs, previous)
        if not status_changed(previous, new):
            return
        patch_status: JSON = dict(new)
        for k in previous:
            if k not in new:
                patch_status[k] = None
        meta = policy["metadata"]
        try:
            await self.client.patch(
                AVIATORPOLICIES,
                meta["name"],
                {"status": patch_status},
                meta["namespace"],
                subresource="status",
            )
        except ApiError as exc:
            if exc.not_found:
                return
            raise
        self.metrics.api_write("AviatorPolicy", "patch-status")
        memory.status = new


def _persisted_state(policy: JSON) -> JSON | None:
    state = (policy.get("status") or {}).get("engineState")
    return state if isinstance(state, dict) else None


def _active_in(observed: Iterable[JSON], routed: str) -> set[str]:
    """Pods our slices of `routed` currently publish: the set a new leader inherits."""
    out: set[str] = set()
    for sl in observed:
        if (sl["metadata"].get("labels") or {}).get(naming.LABEL_SERVICE_NAME) != routed:
            continue
        for ep in sl.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if ref.get("name"):
                out.add(str(ref["name"]))
    return out


def _row(
    pod: JSON,
    state: str,
    lat: engine.Latency | None,
    outcome: engine.Outcome,
    reason: str | None = None,
) -> PodRow:
    ips = pod_ips(pod)
    return PodRow(
        name=pod_name(pod),
        ip=ips[0] if ips else "",
        node=str(pod.get("spec", {}).get("nodeName") or ""),
        state=state,
        p50_ms=lat.p50_ms if lat else None,
        p99_ms=lat.p99_ms if lat else None,
        rif=lat.rif if lat else None,
        samples=lat.samples if lat else 0,
        reason=reason or outcome.reasons.get(pod_name(pod)),
    )
