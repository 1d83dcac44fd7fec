"""`aviator agent`: the per-node latency agent (also runs as a plain process)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

import uvloop

from aviator.agent.app import Agent
from aviator.agent.config import AgentConfig
from aviator.agent.handoff.select import DEFAULT_QUIET_S
from aviator.agent.prober import NodeProber
from aviator.agent.promfold import DEFAULT_PER_OCTAVE, PER_OCTAVE_CHOICES, error_bound
from aviator.agent.sources import SourceUnavailable, open_source
from aviator.agent.urgent import DEFAULT_CHECK_S
from aviator.kube import KubeClient
from aviator.runtime.flags import non_negative_float, positive_float
from aviator.runtime.gctune import tune_for_caches

log = logging.getLogger("aviator.agent")

DEFAULT_TOKEN_FILE = "/var/run/secrets/tokens/aviator-token"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def host_port(text: str) -> tuple[str, int]:
    """ "HOST:PORT" or "[V6]:PORT" → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    a("--node", default=os.environ.get("NODE_NAME"), help="this node's name (default $NODE_NAME)")
    a(
        "--report-interval",
        type=positive_float,
        default=1.0,
        help="seconds per window (default 1.0)",
    )
    a(
        "--steady-report-interval",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="hold a steady endpoint's windows and send them merged at most every S "
        "seconds (or its policies' evaluationInterval if shorter); a changed one goes "
        "out at the next report interval. Keep it below the controller's "
        "--latency-stale-after (default 0: every window every report interval)",
    )
    a(
        "--urgent-check-interval",
        type=float,
        default=DEFAULT_CHECK_S,
        help="seconds between looks for a request open past its pod's p99Threshold, "
        f"reported at once (default {DEFAULT_CHECK_S}; 0: only at report intervals)",
    )
    a(
        "--http-addr",
        type=host_port,
        default=("0.0.0.0", 9476),
        help="GET /latency, /metrics, /healthz, /readyz (default 0.0.0.0:9476)",
    )
    a(
        "--controller-url",
        action="append",
        default=[],
        metavar="URL",
        help="controller stream URL, e.g. ws://10.0.0.5:8080/v1/stream (repeatable)",
    )
    a(
        "--controller-service",
        metavar="NS/NAME",
        help="headless Service of the controller: stream to every ready endpoint",
    )
    a(
        "--controller-port-name",
        help="port name of --controller-service to use (default: its first TCP port)",
    )
    a(
        "--secure-serving",
        nargs="?",
        const=True,
        default=True,
        type=_bool,
        help="serve the HTTP API over HTTPS (a certificate of the agent's own) and answer "
        "/latency, /status and /metrics only to requests a TokenReview + SubjectAccessReview "
        "allow (default true; false: plain HTTP, open, for development)",
    )
    a(
        "--controller-ca",
        metavar="FILE",
        help="the controller's CA certificate (PEM; the ConfigMap aviator-stream-ca): stream "
        "over TLS (wss://) and check the controller with it; without it, plain ws:// and only "
        "to a controller on this machine",
    )
    a(
        "--controller-server-name",
        default="aviator-controller-stream.aviator-system.svc",
        help="the name the controller's certificate is checked against, whatever address is "
        "dialled (default aviator-controller-stream.aviator-system.svc)",
    )
    a(
        "--token-file",
        default=DEFAULT_TOKEN_FILE,
        help=f"bearer token for the stream (default {DEFAULT_TOKEN_FILE}, "
        "falling back to the ServiceAccount token)",
    )
    a(
        "--latency-source",
        choices=["auto", "ebpf", "probe"],
        default="auto",
        help="auto = eBPF, falling back to HTTP probes with a logged reason",
    )
    a("--max-sockets", type=int, default=65536, help="BPF socket map size")
    a("--max-endpoints", type=int, default=16384, help="BPF endpoint map size")
    a(
        "--max-h2-connections",
        type=int,
        default=4096,
        help="HTTP/2 connections timed per stream at once (BPF h2conns map size; 4 KiB each)",
    )
    a(
        "--prune-idle",
        type=positive_float,
        default=30.0,
        help="seconds an endpoint of an IP that is no local pod's must be unchanged before "
        "it leaves the BPF maps (also: idle connections of pods gone that long; default 30)",
    )
    a("--window", type=positive_float, default=10.0, help="seconds of data behind GET /latency")
    a(
        "--keep-warm-samples",
        type=int,
        default=5,
        help="probe targeted pods with fewer samples than this in the window (0 = off)",
    )
    a("--probe-samples", type=int, default=3, help="probes per pod per interval in probe mode")
    a("--probe-timeout", type=positive_float, default=2.0, help="seconds per probe")
    a("--probe-concurrency", type=int, default=16, help="probes in flight at most")
    a("--probe-rate", type=positive_float, default=100.0, help="probes per second at most")
    a(
        "--report-client-endpoints",
        action="store_true",
        help="also stream client-side views (keyed by remote IP:port)",
    )
    a("--metrics-max-pods", type=int, default=256, help="cap on per-pod latency series")
    a(
        "--metrics-buckets-per-octave",
        type=int,
        choices=PER_OCTAVE_CHOICES,
        default=DEFAULT_PER_OCTAVE,
        help="latency histogram buckets per power of two in /metrics (64 µs to 16.8 s): "
        f"{DEFAULT_PER_OCTAVE} (default) keeps histogram_quantile within "
        f"{100 * error_bound(DEFAULT_PER_OCTAVE):.3f} %% of the agent's own quantiles; fewer cost "
        "fewer series (docs/agent.md)",
    )
    a(
        "--handoff",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end idle client connections of this node's pods that policies hand off "
        "(status.handOffs; needs eBPF and CAP_SYS_ADMIN, default on)",
    )
    a(
        "--handoff-rate",
        type=positive_float,
        default=50.0,
        help="connections a hand-off ends per second per pod at most (default 50)",
    )
    a(
        "--handoff-quiet",
        type=positive_float,
        default=DEFAULT_QUIET_S,
        metavar="SECONDS",
        help="how long a connection must have been idle before a hand-off ends it "
        f"(default {DEFAULT_QUIET_S:g}): longer than the pods' clients take from an answer "
        "to their next request on the same connection (docs/agent.md)",
    )
    a(
        "--handoff-netns",
        choices=["any", "own"],
        default="any",
        help="hand off connections in any network namespace holding the pod's IP, or "
        "only in the agent's own (pods sharing the agent's namespace, as in the box)",
    )
    a(
        "--node-address",
        action="append",
        default=[a for a in [os.environ.get("HOST_IP")] if a],
        metavar="IP",
        help="an address of this node (repeatable; default $HOST_IP): connections from "
        "it (the kubelet's probes) are never handed off",
    )
    a("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    a(
        "--check",
        action="store_true",
        help="compile, load and attach the BPF program with the map sizes given, say "
        "which hooks it uses, unload it and exit: 0 when eBPF works on this node, 1 with "
        "the reason when not (needs no cluster)",
    )


def config_from(args: argparse.Namespace) -> AgentConfig:
    host, port = args.http_addr
    return AgentConfig(
        node=args.node,
        report_interval_s=args.report_interval,
        steady_report_interval_s=args.steady_report_interval,
        urgent_check_s=max(0.0, args.urgent_check_interval),
        http_host=host,
        http_port=port,
        controller_urls=list(args.controller_url),
        controller_service=args.controller_service,
        controller_port_name=args.controller_port_name,
        controller_ca=args.controller_ca,
        secure_serving=bool(args.secure_serving),
        controller_server_name=args.controller_server_name,
        token_files=[args.token_file, SERVICE_ACCOUNT_TOKEN],
        window_s=args.window,
        keep_warm_samples=args.keep_warm_samples,
        report_client_endpoints=args.report_client_endpoints,
        metrics_max_pods=args.metrics_max_pods,
        metrics_buckets_per_octave=args.metrics_buckets_per_octave,
        handoff=args.handoff,
        handoff_rate=args.handoff_rate,
        handoff_quiet_s=args.handoff_quiet,
        node_addresses=list(args.node_address),
        handoff_netns=args.handoff_netns,
        prune_idle_s=args.prune_idle,
        maintain_s=min(5.0, max(args.report_interval, args.prune_idle / 2)),
    )


async def _main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = config_from(args)
    probe_mode = args.latency_source == "probe"
    prober = NodeProber(
        min_samples=args.probe_samples if probe_mode else args.keep_warm_samples,
        timeout_s=args.probe_timeout,
        concurrency=args.probe_concurrency,
        rate_per_s=args.probe_rate,
    )
    client = await KubeClient.load(args.kubeconfig)
    try:
        try:
            source, note = await open_source(
                args.latency_source,
                prober,
                max_sockets=args.max_sockets,
                max_endpoints=args.max_endpoints,
                max_h2_conns=args.max_h2_connections,
            )
        except SourceUnavailable as exc:
            log.error("eBPF unavailable and --latency-source ebpf was asked for: %s", exc)
            await prober.close()
            return 1
        if source.name == "probe" and not probe_mode:
            prober.min_samples = args.probe_samples  # fell back: probes are the measurement
        # Agent.run closes the source, the prober and the streams on the way out.
        await Agent(config, client, source, prober, source_note=note).run(stop)
    finally:
        await client.close()
    log.info("agent stopped")
    return 0


def check_bpf(args: argparse.Namespace) -> int:
    """`aviator agent --check`: what `--latency-source ebpf` would get on this node."""
    try:
        from aviator.agent.bpf import BpfLatencySource, BpfUnavailable
        from aviator.agent.bpf.loader import SOURCE
    except ImportError as exc:  # a build of the agent without the BPF part
        print(f"eBPF unavailable: BPF support not installed: {exc}")
        return 1
    try:
        bpf = BpfLatencySource.load(
            max_sockets=args.max_sockets,
            max_endpoints=args.max_endpoints,
            max_h2_conns=args.max_h2_connections,
        )
    except BpfUnavailable as exc:
        print(f"eBPF unavailable: {exc.reason}")
        return 1
    try:
        print(f"eBPF ok: {SOURCE} compiled, loaded and attached")
        print(f"  send hook {bpf.send_hook}, receive hook {bpf.recv_hook}")
    finally:
        bpf.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.check:
        return check_bpf(args)
    if not args.node:
        log.error("--node (or $NODE_NAME) is required")
        return 2
    tune_for_caches()
    code: int = uvloop.run(_main(args))
    return code
