"""The latency of one policy's pods, read at one instant for a plan.

`read_latencies` is the I/O step before planning. Every policy reads the latency
store; which data it reads is the store's `Origin` for its `latencySource`: `ebpf`
reads what agents measured, `probe` what the controller's own probes measured.

Probe mode (`latencySource: probe`, works with no agents at all): when an evaluation
is due, every eligible pod gets a round of `PROBES_PER_ROUND` GETs of
`http://<podIP>:<targetPort><probePath>` (one after another over a kept-alive
connection; at most `PROBE_CONCURRENCY` in flight across all pods and policies; a
`PROBE_TIMEOUT_S` timeout; see `aviator.latency.probing` for what a probe times and
how a failure counts), and the round's histograms go into the store, kept for
`PROBE_WINDOW_INTERVALS` evaluation intervals: recovery shows within a few
evaluations, and a pod that is no longer probed ages out by the clock. Between
evaluations nothing is sent; reads report what the last rounds measured.

A pod's latency is that of the ports its Service's clients call (`measured_ports`):
the Service's TCP target ports as the pod resolves them, so a metrics port scraped
every few seconds, or a sidecar's port, never counts; in probe mode, the probe port.

A policy naming a load the pods report (`selection.prequal.load`) reads each measured
pod's latest value of that gauge beside its latency (`LatencyEstimate.load`; the
store's `loads`, aviator.latency.loads).

The `PodLatencies` returned is a read-only view the pure planner queries (`estimate`
per pod, `active_p99_ms` for the set it chose); it holds no clock of its own, so a
plan's inputs are fixed once read. Its estimates are as of each pod's newest report
(`reported`, on the store's clock), not of the read: a pod whose windows say the same
at every report has the same estimate object at every reconcile, which is what lets a
reconcile reuse what it built from it (aviator.reconcilers.evaluation `pod_input`,
aviator.reconcilers.settled). The engine never ages them: the store already drops
data past its staleness bound, and `silent` names the pods whose data lapsed
(`warming`: those a replica that just started cannot tell from them yet).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import field, replace

from aviator.informers import object_key
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_ips
from aviator.latency.histogram import Histogram
from aviator.latency.probing import HttpProber, ProbeCounters, ProbeTarget
from aviator.latency.schema import EndpointWindow
from aviator.latency.store import LatencyStore, Origin
from aviator.reconcilers.endpoints import target_port
from aviator.reconcilers.evaluation import ParsedPolicy
from aviator.reconcilers.podfacts import PodFacts, pod_facts
from aviator.runtime.records import record
from aviator.selection.types import LatencyEstimate

PROBES_PER_ROUND = 3
PROBE_CONCURRENCY = 32
PROBE_TIMEOUT_S = 1.0
PROBE_WINDOW_INTERVALS = 3


def controller_prober() -> HttpProber:
    """The controller's prober for probe-mode policies (one per process)."""
    return HttpProber(
        timeout_s=PROBE_TIMEOUT_S,
        concurrency=PROBE_CONCURRENCY,
        user_agent="aviator-controller-probe",
    )


@record
class PodLatencies:
    """Per pod name: its estimate (None = unknown); and the merged histogram of any
    set of pods, for the p99 of the traffic the active set serves."""

    by_pod: dict[str, LatencyEstimate | None]
    merged: Callable[[Sequence[JSON]], Histogram]
    # When the newest report behind each known estimate came (the store's clock; a pod
    # not in it: as of the read).
    reported: dict[str, float] = field(default_factory=dict)
    # Pods without data whose node's agent reports full BPF maps: name -> (node, maps).
    unmeasurable: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # Unknown pods that were measured before and went silent (LatencyStore.silent).
    silent: frozenset[str] = frozenset()
    # Unknown pods this replica, new, cannot yet tell from ones measured before it
    # began (aviator.latency.reporters `warming`): they keep their place as silent ones do, where a
    # routing was published (aviator.reconcilers.decision).
    warming: frozenset[str] = frozenset()

    def estimate(self, name: str) -> LatencyEstimate | None:
        return self.by_pod.get(name)

    def active_p99_ms(self, pods: Sequence[JSON]) -> float | None:
        value = self.merged(pods).quantile(0.99)
        return None if value is None else value / 1000.0

    def sources(self) -> Iterable[str]:
        return (lat.source for lat in self.by_pod.values() if lat is not None and lat.samples)


def origin_of(parsed: ParsedPolicy) -> Origin:
    """Whose measurements a policy reads (see aviator.latency.store)."""
    return "controller" if parsed.latency_source == "probe" else "agent"


def _probe_target(pod: JSON, parsed: ParsedPolicy) -> ProbeTarget | None:
    ips = pod_ips(pod)
    if not ips:
        return None
    return ProbeTarget(ips[0], parsed.probe_port, parsed.probe_path, object_key(pod))


async def _probe_round(prober: HttpProber, targets: Iterable[ProbeTarget]) -> list[EndpointWindow]:
    """One round over `targets` (concurrently, bounded by the prober): one window of
    `PROBES_PER_ROUND` samples per target."""

    async def one(target: ProbeTarget) -> EndpointWindow:
        c = ProbeCounters()
        await prober.probe_times(target, PROBES_PER_ROUND, c)
        # Role "server": the probes time the pod's answers, not a caller's view of an IP.
        return EndpointWindow(
            target.ip,
            target.port,
            "server",
            target.pod,
            c.hist,
            c.count,
            c.sum_us,
            c.max_us,
            c.rif,
            c.aborted,
            protocol=c.protocol,
            statuses=c.statuses,
            errors=c.errors,
        )

    return list(await asyncio.gather(*(one(t) for t in set(targets))))


def _attach_loads(
    by_pod: dict[str, LatencyEstimate | None],
    all_facts: Sequence[PodFacts],
    store: LatencyStore,
    metric: str,
    now: float,
) -> None:
    """Each measured pod's estimate with the value of `metric` it reported (via its
    node's agent), where one is fresh; an unmeasured pod stays unknown."""
    for f in all_facts:
        est = by_pod.get(f.name)
        if est is None:
            continue
        for ip in f.ips:
            value = store.loads.load(ip, metric, now)
            if value is not None:
                by_pod[f.name] = replace(est, load=value)
                break


def measured_ports(parsed: ParsedPolicy, service: JSON | None, pod: JSON) -> frozenset[int]:
    """The ports of `pod` whose latency is the pod's latency for this policy: the
    Service's TCP target ports as the pod resolves them (what its clients call; not,
    say, a metrics port scraped every few seconds), or the probe port in probe mode."""
    fixed = fixed_ports(parsed, service)
    if fixed is not None:
        return fixed
    assert service is not None  # fixed_ports
    return service_ports(service, pod)


def fixed_ports(parsed: ParsedPolicy, service: JSON | None) -> frozenset[int] | None:
    """`measured_ports` when they are the same for every pod: the probe port in probe
    mode (or without a Service), else the Service's target ports when each is a
    number; None when some pod resolves a port name."""
    if origin_of(parsed) == "controller" or service is None:
        return frozenset({parsed.probe_port})
    return numbered_ports(service)


def names_target_ports(service: JSON) -> bool:
    """Whether a TCP port of the Service names its target port (resolved per pod)."""
    return any(
        isinstance(sp.get("targetPort"), str) and not str(sp["targetPort"]).isdigit()
        for sp in service.get("spec", {}).get("ports") or []
        if str(sp.get("protocol") or "TCP") == "TCP"
    )


# Service object -> (the object, its numbered_ports): an informer replaces an object it
# updates, so the same object has the same ports. Bounded: cleared when it outgrows.
_NUMBERED: dict[int, tuple[JSON, frozenset[int] | None]] = {}
_MAX_NUMBERED = 8192


def numbered_ports(service: JSON) -> frozenset[int] | None:
    """The Service's TCP target ports when every one is a number (the same for every
    pod), else None (some pod resolves a port name); worked out once per object."""
    held = _NUMBERED.get(id(service))
    if held is not None and held[0] is service:
        return held[1]
    ports = None if names_target_ports(service) else service_ports(service, {})
    if len(_NUMBERED) >= _MAX_NUMBERED:
        _NUMBERED.clear()
    _NUMBERED[id(service)] = (service, ports)
    return ports


def service_ports(service: JSON, pod: JSON) -> frozenset[int]:
    """The Service's TCP target ports as `pod` resolves them: what its clients call."""
    out: set[int] = set()
    for sp in service.get("spec", {}).get("ports") or []:
        if str(sp.get("protocol") or "TCP") == "TCP":
            number = target_port(sp, pod)
            if number is not None:
                out.add(number)
    return frozenset(out)


def read_marks(
    parsed: ParsedPolicy,
    pods: Sequence[JSON],
    store: LatencyStore,
    now: float,
    since: float,
    *,
    service: JSON | None,
    facts: Callable[[JSON], PodFacts] = pod_facts,
) -> tuple[int, ...] | None:
    """The marks of the windows `read_latencies` reads for `pods` (agents' data, on
    ports the same for every pod), one per pod, when each pod's first address has
    one fresh window with an estimate, reported after `since`, and its other addresses
    (a dual-stack pod's) none at all: the same marks, the same estimates, freshness and
    totals, which the active set's p99 merges over every address
    (aviator.reconcilers.quiet). None for any other."""
    wanted = fixed_ports(parsed, service)
    if wanted is None or origin_of(parsed) != "agent":
        return None
    mark, measured = store.mark, store.measured
    marks: list[int] = []
    for p in pods:
        ips = facts(p).ips
        found = mark(ips[0], now, wanted, "agent") if ips else None
        if found is None or found[1] <= since or any(map(measured, ips[1:])):
            return None
        marks.append(found[0])
    return tuple(marks)


async def read_latencies(
    parsed: ParsedPolicy,
    pods: Sequence[JSON],
    store: LatencyStore,
    prober: HttpProber,
    now: float,
    *,
    probe: bool,
    service: JSON | None = None,
    facts: Callable[[JSON], PodFacts] = pod_facts,
) -> PodLatencies:
    """Every pod's latency from the policy's source on its measured ports (see
    `measured_ports`; `service` is the target), as of `now` (the store's clock).
    Probe mode sends a round of probes first, but only when `probe` (an evaluation is
    due). `facts` reads a pod object's facts (a memo, in the controller)."""
    origin = origin_of(parsed)
    if origin == "controller" and probe:
        targets = [t for t in (_probe_target(p, parsed) for p in pods) if t is not None]
        windows = await _probe_round(prober, targets)
        store.ingest_probes(windows, now, keep_s=PROBE_WINDOW_INTERVALS * parsed.interval_s)

    fixed = fixed_ports(parsed, service)

    def ports_of(f: PodFacts) -> frozenset[int]:
        if fixed is not None:
            return fixed
        assert service is not None
        ports: frozenset[int] = f.per_service("service-ports", service, service_ports)
        return ports

    all_facts = [facts(p) for p in pods]
    by_pod: dict[str, LatencyEstimate | None] = {}
    reported: dict[str, float] = {}
    silent: set[str] = set()
    warming: set[str] = set()
    latest = store.latest
    for f in all_facts:
        found = None
        wanted = fixed if fixed is not None else ports_of(f)
        for ip in f.ips:
            found, at = latest(ip, now, wanted, origin)
            if found is not None:
                reported[f.name] = at
                break
        by_pod[f.name] = found
        if found is None and any(
            store.silent(ip, now, ports=wanted, origin=origin) for ip in f.ips
        ):
            silent.add(f.name)
        elif (
            found is None and origin == "agent" and f.node and store.reporters.warming(f.node, now)
        ):
            warming.add(f.name)
    load_spec = parsed.spec.selection.prequal.load
    if load_spec is not None:
        _attach_loads(by_pod, all_facts, store, load_spec.metric, now)

    # Why a pod without data may stay so: its node's agent cannot hold it in its maps.
    unmeasurable: dict[str, tuple[str, tuple[str, ...]]] = {}
    if origin == "agent" and store.maps.any_full(now):
        for f in all_facts:
            full = store.maps.full(f.node, now) if f.node else ()
            if full and by_pod[f.name] is None:
                unmeasurable[f.name] = (f.node, full)

    def merged(active: Sequence[JSON]) -> Histogram:
        if fixed is not None:  # the same ports for every pod: one pass, one histogram
            ips = [ip for p in active for ip in facts(p).ips]
            return store.merged(ips, now, origin=origin, ports=fixed)
        out = Histogram()
        for p in active:
            f = facts(p)
            out.update(store.merged(f.ips, now, origin=origin, ports=ports_of(f)))
        return out

    return PodLatencies(
        by_pod, merged, reported, unmeasurable, frozenset(silent), frozenset(warming)
    )
