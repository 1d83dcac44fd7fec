"""Per-Service latency, for the external metrics API: the figures of every Service an
AviatorPolicy in a namespace targets, read from this replica's latency store and
informer caches (every replica holds both, so any replica answers alike).

A Service's figures are those of the requests its eligible pods served in the store's
window, as the agents measured them on the Service's target ports (`service_ports`):

- p50/p99: quantiles of the pods' windows merged into one histogram, so every request
  counts once (a Service-wide p99, not an average of per-pod p99s); a pod routed around
  serves fewer requests and weighs less. With no completed request but a request open,
  the oldest open request's age stands for both (a lower bound, as the store does per
  pod);
- requests in flight: the sum over the pods' latest reports;
- error rate: errors over responses whose status was read, summed over the pods.

Always the agents' measurements, whatever the policy's `latencySource`: they time the
clients' own requests on every replica, while the controller's probes (probe mode) are
the leader's alone and time a probe path. A Service no policy targets has no figures,
nor does a policy whose spec is invalid or whose Service does not exist; two policies
targeting one Service give one figure, under the first policy's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aviator.controller.extmetrics import ServiceFigures
from aviator.informers import NAMESPACE_INDEX
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_ips
from aviator.latency.histogram import Histogram
from aviator.latency.store import LatencyStore
from aviator.reconcilers.latencies import service_ports
from aviator.reconcilers.view import Caches, gather
from aviator.selection.types import LatencyEstimate


def figures(
    service: str,
    policy: str,
    merged: Histogram,
    estimates: Sequence[LatencyEstimate | None],
) -> ServiceFigures:
    """A Service's figures from its pods' merged histogram and their estimates (pure)."""
    known = [e for e in estimates if e is not None]
    qs = merged.quantiles((0.5, 0.99)) if merged else None
    p50: float | None
    p99: float | None
    if qs is not None:
        p50, p99 = qs[0] / 1000.0, qs[1] / 1000.0
    else:
        open_ms = max((e.oldest_open_ms for e in known), default=0.0)
        p50 = p99 = open_ms if open_ms > 0 else None
    statuses = sum(e.statuses for e in known)
    return ServiceFigures(
        service=service,
        policy=policy,
        p50_ms=p50,
        p99_ms=p99,
        requests_in_flight=sum(e.rif for e in known) if known else None,
        error_rate_percent=100.0 * sum(e.errors for e in known) / statuses if statuses else None,
    )


def _estimate(
    store: LatencyStore, pod: JSON, now: float, ports: frozenset[int]
) -> Iterable[LatencyEstimate | None]:
    for ip in pod_ips(pod):
        found = store.estimate(ip, now, ports=ports, origin="agent")
        if found is not None:
            return (found,)
    return (None,)


def namespace_figures(
    caches: Caches, store: LatencyStore, namespace: str, now: float
) -> list[ServiceFigures]:
    """The figures of every Service a policy in `namespace` targets (see the module
    docstring), as of `now` on the store's clock."""
    out: dict[str, ServiceFigures] = {}
    policies = sorted(
        caches.policies.by_index(NAMESPACE_INDEX, namespace),
        key=lambda p: str(p["metadata"]["name"]),
    )
    for policy in policies:
        view = gather(caches, policy)
        if view.parsed is None or view.target is None or view.parsed.target in out:
            continue
        merged = Histogram()
        estimates: list[LatencyEstimate | None] = []
        for pod in view.eligible:
            ports = service_ports(view.target, pod)
            estimates.extend(_estimate(store, pod, now, ports))
            merged.update(store.merged(pod_ips(pod), now, origin="agent", ports=ports))
        out[view.parsed.target] = figures(view.parsed.target, view.name, merged, estimates)
    return list(out.values())
