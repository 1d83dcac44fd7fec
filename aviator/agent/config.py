"""The agent's settings (what `aviator agent`'s flags set; defaults documented there)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aviator.agent.handoff.select import DEFAULT_QUIET_S
from aviator.agent.promfold import DEFAULT_PER_OCTAVE
from aviator.agent.urgent import DEFAULT_CHECK_S, DEFAULT_MIN_GAP_S


@dataclass
class AgentConfig:
    node: str
    report_interval_s: float = 1.0
    # Steady endpoints' windows held and sent merged at most this often (aviator.agent.reportpacing); 0: off.
    steady_report_interval_s: float = 0.0
    http_host: str = "0.0.0.0"
    http_port: int = 9476
    controller_urls: list[str] = field(default_factory=list)
    controller_service: str | None = None  # "namespace/name" of a headless Service
    controller_port_name: str | None = None
    # The controller's CA (PEM file): streams go over TLS, checked against
    # controller_server_name. None: plain ws:// (to a controller on this machine only).
    controller_ca: str | None = None
    controller_server_name: str = "aviator-controller-stream.aviator-system.svc"
    # HTTPS with a certificate of its own; /latency, /status, /metrics only to requests
    # a TokenReview + SubjectAccessReview allow. Off: plain HTTP, open (development).
    secure_serving: bool = True
    token_files: list[str] = field(default_factory=list)
    token_reread_s: float = 60.0
    window_s: float = 10.0
    keep_warm_samples: int = 5
    report_client_endpoints: bool = False
    metrics_max_pods: int = 256
    metrics_buckets_per_octave: int = DEFAULT_PER_OCTAVE
    handoff: bool = True
    handoff_rate: float = 50.0
    handoff_quiet_s: float = DEFAULT_QUIET_S
    node_addresses: list[str] = field(default_factory=list)
    handoff_netns: str = "any"  # "own": only pods in the agent's network namespace (the box)
    urgent_check_s: float = DEFAULT_CHECK_S  # 0: no looks between intervals
    urgent_min_gap_s: float = DEFAULT_MIN_GAP_S
    # Endpoints of non-local IPs unchanged this long leave the BPF maps (and idle
    # connections of pods gone this long); upkeep runs every maintain_s.
    prune_idle_s: float = 30.0
    maintain_s: float = 5.0
