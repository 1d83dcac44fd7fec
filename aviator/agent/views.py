"""What the agent's HTTP API shows (GET /latency, GET /status), built from its state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aviator.agent.prober import keep_warm_protocol
from aviator.latency.probing import ProbeTarget
from aviator.latency.store import LatencyStore
from aviator.selection.types import LatencyEstimate

if TYPE_CHECKING:
    from aviator.agent.app import Agent


def latency_table(
    store: LatencyStore, pod_for: Callable[[str], str | None], now: float
) -> dict[str, dict[str, Any]]:
    """GET /latency: pod IP → latency over the local window, for this node's pods."""
    out: dict[str, dict[str, Any]] = {}
    for ip in sorted(store.ips()):
        est: LatencyEstimate | None = store.estimate(ip, now)
        if est is None:
            continue
        out[ip] = {
            "pod": pod_for(ip),
            "p50_ms": round(est.p50_ms, 3),
            "p90_ms": None if est.p90_ms is None else round(est.p90_ms, 3),
            "p99_ms": round(est.p99_ms, 3),
            "rif": est.rif,
            "samples": est.samples,
            "source": est.source,
            "protocol": est.protocol,
            "statuses": est.statuses,
            "errors": est.errors,
            "oldest_open_ms": round(est.oldest_open_ms, 3),
            "keepwarm": est.keepwarm,
            "probe_samples": est.probe_samples,
            "probe_p50_ms": None if est.probe_p50_ms is None else round(est.probe_p50_ms, 3),
            "probe_p99_ms": None if est.probe_p99_ms is None else round(est.probe_p99_ms, 3),
        }
    return out


def keep_warm_status(targets: Iterable[ProbeTarget]) -> dict[str, Any]:
    """How keep-warm probes reach the targets: per protocol spoken, and the pods
    that get none (their endpoint is `opaque`, e.g. TLS)."""
    speaks: dict[str, int] = {}
    unprobed: list[str] = []
    for target in targets:
        speak = keep_warm_protocol(target.protocol, target.path)
        if speak is None:
            unprobed.append(target.pod)
        else:
            speaks[speak] = speaks.get(speak, 0) + 1
    return {"protocols": speaks, "opaque_not_probed": sorted(set(unprobed))}


def agent_status(agent: Agent) -> dict[str, Any]:
    """GET /status: what the agent runs on and how it is doing."""
    return {
        "node": agent.config.node,
        "source": agent.source.name,
        "source_note": agent.source_note,
        "pods_synced": agent.pods.has_synced(),
        "controllers": {
            url: {"connected": c.connected, "sent": c.sent, "last_error": c.last_error}
            for url, c in agent.stream.connections.items()
        },
        "probe_targets": len(agent.targets),
        "keep_warm": keep_warm_status(agent.targets.values()),
        "maps": {
            "full": list(agent.upkeep.full),
            "pruned": dict(agent.upkeep.pruned),
            **{
                k: v
                for k, v in agent.metrics.source_stats.items()
                if k.endswith(("_tracked", "_capacity", "_full_drops", "_full", "_read_last"))
            },
        },
        "urgent_reports": agent.urgent.sent,
        "loads": {
            "read": len(agent.loads.current()),
            "scrapes": agent.loads.scrapes,
            "failures": agent.loads.failures,
        },
        "handoffs": None
        if agent.handoffs is None
        else {
            h.target.pod: {
                "ended": h.ended,
                "drained": h.drained,
                "remaining": h.remaining,
                "outcome": h.outcome,
            }
            for h in agent.handoffs.executor.handoffs.values()
        },
    }
