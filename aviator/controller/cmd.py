"""`aviator controller`: run the policy controller (one replica)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal

import uvloop

from aviator.controller.app import ControllerApp, Options, default_identity
from aviator.kube.client import KubeClient
from aviator.latency.limits import StreamLimits
from aviator.latency.quota import StoreLimits
from aviator.runtime.flags import positive_float
from aviator.runtime.gctune import tune_for_caches

log = logging.getLogger("aviator.controller")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "aviator-system"),
        help="namespace of the leader-election Lease (default: $POD_NAMESPACE or aviator-system)",
    )
    parser.add_argument(
        "--id",
        default=default_identity(),
        help="identity in the Lease (default: hostname-pid-random, unique per process)",
    )
    # `--leader-elect`, `--leader-elect=false` and `--no-leader-elect` all work.
    parser.add_argument(
        "--leader-elect",
        nargs="?",
        const=True,
        default=True,
        type=_bool,
        help="campaign for the Lease and reconcile only while leading (default: true)",
    )
    parser.add_argument("--no-leader-elect", dest="leader_elect", action="store_false")
    parser.add_argument(
        "--sharding",
        nargs="?",
        const=True,
        default=False,
        type=_bool,
        help="split the policies between all replicas over a ring of member Leases "
        "(aviator-shard-<id>) instead of one leader reconciling them all; the lease "
        "durations apply to each member Lease (default false)",
    )
    parser.add_argument("--lease-name", default="aviator-controller")
    parser.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default 15)")
    parser.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--retry-period", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument(
        "--http-addr",
        type=_host_port,
        default=("0.0.0.0", 8080),
        help="serves /metrics, /healthz, /readyz and the agent stream GET /v1/stream (default 0.0.0.0:8080)",
    )
    parser.add_argument(
        "--secure-serving",
        nargs="?",
        const=True,
        default=True,
        type=_bool,
        help="serve HTTPS with the stream certificate the controller keeps in the Secret "
        "aviator-stream-tls (CA published in the ConfigMap aviator-stream-ca), /metrics "
        "only to those a SubjectAccessReview allows (default true; false: plain HTTP, for "
        "development on one machine)",
    )
    parser.add_argument(
        "--stream-service",
        default="aviator-controller-stream",
        help="the Service agents stream through: its DNS names are the certificate's "
        "(default aviator-controller-stream)",
    )
    parser.add_argument("--workers", type=int, default=4, help="concurrent reconciles (default 4)")
    parser.add_argument(
        "--agent-service-account",
        action="append",
        metavar="NS:NAME",
        help="ServiceAccount allowed to stream latency (repeatable; default aviator-system:aviator-agent)",
    )
    parser.add_argument(
        "--agent-token-audience",
        action="append",
        metavar="AUDIENCE",
        help="audience agent tokens must carry (repeatable; default: the API server's own)",
    )
    parser.add_argument(
        "--latency-window",
        type=float,
        default=10.0,
        help="seconds of latency data per estimate (default 10)",
    )
    parser.add_argument(
        "--latency-stale-after",
        type=float,
        default=10.0,
        help="seconds without data after which a pod's latency is unknown (default 10)",
    )
    store, stream = StoreLimits(), StreamLimits()
    parser.add_argument(
        "--latency-max-endpoints-per-agent",
        type=int,
        default=store.endpoints_per_agent,
        help=f"endpoints one agent (node) may have in the latency store (default {store.endpoints_per_agent})",
    )
    parser.add_argument(
        "--latency-max-endpoints",
        type=int,
        default=store.endpoints,
        help=f"endpoints in the latency store (default {store.endpoints})",
    )
    parser.add_argument(
        "--latency-max-buckets-per-agent",
        type=int,
        default=store.buckets_per_agent,
        help="histogram buckets one agent's windows may hold, about 170 bytes each "
        f"(default {store.buckets_per_agent})",
    )
    parser.add_argument(
        "--latency-max-buckets",
        type=int,
        default=store.buckets,
        help=f"histogram buckets the latency store may hold (default {store.buckets}); "
        "with --latency-max-endpoints, what bounds the replica's memory (docs/controller.md)",
    )
    parser.add_argument(
        "--stream-max-connections",
        type=int,
        default=stream.connections,
        help=f"agent stream connections open at once (default {stream.connections})",
    )
    parser.add_argument(
        "--stream-token-reviews-per-second",
        type=float,
        default=stream.reviews_per_s,
        help="TokenReviews of new agent tokens per second, in total "
        f"(default {stream.reviews_per_s:g}; per address: {stream.source_reviews_per_s:g})",
    )
    parser.add_argument(
        "--stream-messages-per-second",
        type=positive_float,
        default=stream.messages_per_s,
        help="messages one agent connection may send per second, bursts of four times "
        f"that (default {stream.messages_per_s:g}; an agent sends one per report interval)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def options_from(args: argparse.Namespace) -> Options:
    host, port = args.http_addr
    return Options(
        namespace=args.namespace,
        identity=args.id,
        leader_elect=bool(args.leader_elect),
        sharding=bool(args.sharding),
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        http_host=host,
        http_port=port,
        secure_serving=bool(args.secure_serving),
        stream_service=args.stream_service,
        workers=args.workers,
        agent_service_accounts=tuple(
            args.agent_service_account or ["aviator-system:aviator-agent"]
        ),
        agent_audiences=tuple(args.agent_token_audience or ()),
        latency_window_s=args.latency_window,
        latency_stale_after_s=args.latency_stale_after,
        store_limits=StoreLimits(
            endpoints_per_agent=args.latency_max_endpoints_per_agent,
            endpoints=args.latency_max_endpoints,
            buckets_per_agent=args.latency_max_buckets_per_agent,
            buckets=args.latency_max_buckets,
        ),
        stream_limits=dataclasses.replace(
            StreamLimits(),
            connections=args.stream_max_connections,
            reviews_per_s=args.stream_token_reviews_per_second,
            reviews_burst=max(1, int(4 * args.stream_token_reviews_per_second)),
            messages_per_s=args.stream_messages_per_second,
            messages_burst=max(1, int(4 * args.stream_messages_per_second)),
        ),
    )


async def _main(args: argparse.Namespace) -> int:
    options = options_from(args)
    client = await KubeClient.load(args.kubeconfig)
    from prometheus_client import REGISTRY

    app = ControllerApp(client, options, registry=REGISTRY)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        main = asyncio.ensure_future(app.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([main, stopper], return_when=asyncio.FIRST_COMPLETED)
        if main.done() and main.exception() is not None:
            log.error("controller failed", exc_info=main.exception())
            return 1
        log.info("shutting down")
        stopper.cancel()
        return 0
    finally:
        with contextlib.suppress(Exception):
            await app.stop()
        await client.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    tune_for_caches()
    return uvloop.run(_main(args))
