"""The controller process: informers, latency store + agent stream, HTTP endpoints,
leader election and the policy controller, wired together.

Every replica keeps its informers and latency store warm and serves /metrics,
/healthz, /readyz, the agent stream and the external metrics API
(aviator.controller.metricsapi); only the leader reconciles, or, with
`Options.sharding`, each replica reconciles the policies it owns (sharded.py). The Lease is
renewed on a connection pool of its own and TokenReviews run on another, small one:
no flood of agent connections, nor the informers' and writers' traffic, can make a
renewal wait for a connection. Losing the lease
cancels reconciling at once and drops in-memory engine state: the next leader starts
from what the last leader persisted in each policy's status and from the slices it
published, so a handover changes nothing by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from aviator.controller.agents import POD_IP_INDEXERS, pod_locator, pod_node_resolver
from aviator.controller.certs import StreamCertificates
from aviator.controller.metrics import ControllerMetrics, exposition
from aviator.controller.metricsapi import ExternalMetricsApi, publish_ca_bundle
from aviator.controller.sharded import ShardedReplica
from aviator.controller.stalls import StallWatch
from aviator.controller.wiring import wire_handlers
from aviator.informers import IndexFunc, InformerFactory, SharedIndexInformer
from aviator.kube import marks
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.podfields import CONTROLLER_POD
from aviator.kube.projection import Projection
from aviator.kube.resources import (
    AVIATORPOLICIES,
    ENDPOINTSLICES,
    NODES,
    PODS,
    SERVICES,
    Resource,
)
from aviator.latency.auth import TokenAuthenticator
from aviator.latency.limits import StreamGate, StreamLimits
from aviator.latency.quota import StoreLimits
from aviator.latency.receiver import make_stream_handler
from aviator.latency.store import LatencyStore
from aviator.latency.tls import STREAM_SERVICE, server_name, service_names, trust_clients
from aviator.leaderelection import LeaderElectionConfig, LeaderElector, LeaseLock
from aviator.reconcilers import mapping
from aviator.reconcilers.latencies import controller_prober
from aviator.reconcilers.podindex import POD_INDEXERS
from aviator.reconcilers.reconciler import PolicyReconciler
from aviator.reconcilers.view import (
    BUILTIN_SLICE_INDEXERS,
    SERVICE_INDEXERS,
    SLICE_INDEXERS,
    Caches,
)
from aviator.runtime import frontproxy
from aviator.runtime.events import EventRecorder
from aviator.runtime.httpauth import RequestAuthorizer, protect
from aviator.runtime.loop import Controller, Result
from aviator.runtime.supervise import supervise
from aviator.runtime.writer import Writer
from aviator.workqueue import MetricsProvider, RateLimitingQueue

log = logging.getLogger(__name__)

LEASE_NAME = "aviator-controller"
METRICS_SERVICE = "aviator-controller-metrics"  # the Service the APIService routes to
AGGREGATION_CHECK_EVERY_S = 600.0  # the front proxy's CA and the APIService's caBundle


def default_identity() -> str:
    """`<hostname>-<pid>-<random>`: unique per process. In a container the pid is the
    same after every restart (often 1), so without the random part a crashed leader's
    restarted container would find its own name in the Lease and lead again at once,
    cold (no latency data yet), instead of waiting out the Lease while the warm standby
    takes over."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Options:
    """`aviator controller` settings (see cmd.py for the flags)."""

    namespace: str = "aviator-system"  # where the Lease lives
    identity: str = field(default_factory=default_identity)
    leader_elect: bool = True
    # Split the policies over the replicas (controller/sharded.py) instead of one leader
    # reconciling all; the lease durations below then apply to each member Lease.
    sharding: bool = False
    lease_name: str = LEASE_NAME
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    # HTTPS with the stream certificate (certs.py) and /metrics behind a TokenReview +
    # SubjectAccessReview; off: plain HTTP, nothing checked but agent tokens (tests,
    # development on one machine).
    secure_serving: bool = True
    stream_service: str = STREAM_SERVICE  # its DNS names are the certificate's
    # ... and so are this one's: the external metrics API's APIService routes to it.
    metrics_service: str = METRICS_SERVICE
    workers: int = 4
    agent_service_accounts: tuple[str, ...] = ("aviator-system:aviator-agent",)
    agent_audiences: tuple[str, ...] = ()
    latency_window_s: float = 10.0
    latency_stale_after_s: float = 10.0
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    stream_limits: StreamLimits = field(default_factory=StreamLimits)
    stream_reauth_after_s: float = 60.0  # an open stream's token is checked again
    token_cache_ttl_s: float = 60.0  # an accepted token's verdict is reused this long


class ControllerApp:
    """One controller replica. `await start()`, then `await wait()`; `await stop()`."""

    def __init__(
        self, client: KubeClient, options: Options, registry: CollectorRegistry | None = None
    ) -> None:
        self.client = client
        self.options = options
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ControllerMetrics(self.registry)
        self.store = LatencyStore(
            options.latency_window_s, options.latency_stale_after_s, limits=options.store_limits
        )
        self.metrics.track_store_size(lambda: len(self.store), lambda: self.store.total.buckets)
        self.factory = InformerFactory(client)
        self.policy_informer = self._informer(AVIATORPOLICIES, mapping.POLICY_INDEXERS)
        self.metrics.track_policies(self.policy_informer.indexer.list)
        self.service_informer = self._informer(SERVICES, SERVICE_INDEXERS)
        self.pod_informer = self._informer(
            PODS, {**POD_INDEXERS, **POD_IP_INDEXERS}, projection=CONTROLLER_POD
        )
        # Own connection pools: reviews never crowd out the rest, renewals never wait.
        self.review_client = client.fork(connections=options.stream_limits.reviews_in_flight)
        self.lease_client = client.fork(connections=2)
        self.authenticator = TokenAuthenticator(
            self.review_client,
            options.agent_service_accounts,
            audiences=options.agent_audiences,
            resolve_pod_node=pod_node_resolver(self.pod_informer.indexer, self.review_client),
            max_in_flight=options.stream_limits.reviews_in_flight,
            cache_ttl_s=options.token_cache_ttl_s,
        )
        self.stream_gate = StreamGate(options.stream_limits)
        self.slice_informer = self._informer(
            ENDPOINTSLICES, SLICE_INDEXERS, label_selector=marks.SLICE_SELECTOR
        )
        self.node_informer = self._informer(NODES, {})
        self.builtin_slice_informer = self._informer(
            ENDPOINTSLICES, BUILTIN_SLICE_INDEXERS, label_selector=marks.BUILTIN_SLICE_SELECTOR
        )
        self.caches = Caches(
            policies=self.policy_informer.indexer,
            services=self.service_informer.indexer,
            pods=self.pod_informer.indexer,
            slices=self.slice_informer.indexer,
            nodes=self.node_informer.indexer,
            builtin_slices=self.builtin_slice_informer.indexer,
        )
        self.writer = Writer(client, self.metrics.writes)
        self.recorder = EventRecorder(self.writer, options.identity)
        self.prober = controller_prober()
        self.reconciler = PolicyReconciler(
            self.writer,
            self.caches,
            self.store,
            self.recorder,
            self.metrics.policies,
            prober=self.prober,
        )
        queue: RateLimitingQueue[str] = RateLimitingQueue(
            "aviatorpolicy", metrics=MetricsProvider.for_registry(self.registry)
        )
        self.sharded: ShardedReplica | None = None
        self.controller = Controller(
            "aviatorpolicy",
            self._reconcile,
            workers=options.workers,
            queue=queue,
            metrics=self.metrics.reconciles,
            admits=self._admits if options.sharding else None,
        )
        if options.sharding:
            self.sharded = ShardedReplica(
                client,
                self.lease_client,
                self.factory,
                self.policy_informer,
                self.controller,
                self.reconciler,
                self.metrics,
                namespace=options.namespace,
                identity=options.identity,
                lease_duration=options.lease_duration,
                renew_deadline=options.renew_deadline,
                retry_period=options.retry_period,
            )
        wire_handlers(self)
        # Agents' reports of requests open too long: evaluate those policies now.
        self.stalls = StallWatch(
            self.pod_informer.indexer,
            self.caches.policies,
            self.caches.services,
            self._enqueue_stalled,
        )
        self.elector: LeaderElector | None = None
        self.certs: StreamCertificates | None = None
        if options.secure_serving:
            names = service_names(options.stream_service, options.namespace)
            names += service_names(options.metrics_service, options.namespace)
            self.certs = StreamCertificates(client, options.namespace, names)
        self.authorizer = RequestAuthorizer(self.review_client) if options.secure_serving else None
        # The external metrics API (aviator.controller.metricsapi): every replica.
        self.metrics_api = ExternalMetricsApi(
            self.caches, self.store, self.authorizer, clock=self.now
        )
        self._background: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._main: asyncio.Task[None] | None = None
        self._synced = False
        self.http_port: int | None = None

    async def _reconcile(self, key: str) -> Result | None:
        if self.sharded is not None:
            return await self.sharded.reconcile(key)
        return await self.reconciler.reconcile(key)

    def _admits(self, key: str) -> bool:
        return self.sharded is not None and self.sharded.owns(key)

    def _enqueue_stalled(self, key: str) -> None:
        self.metrics.stalled_enqueues.inc()
        self.controller.enqueue_urgent(key)

    def _informer(
        self,
        resource: Resource,
        indexers: Mapping[str, IndexFunc],
        label_selector: str | None = None,
        projection: Projection | None = None,
    ) -> SharedIndexInformer:
        informer = self.factory.informer_for(
            resource, label_selector=label_selector, projection=projection
        )
        informer.indexer.add_indexers(indexers)
        return informer

    # --- HTTP ------------------------------------------------------------------------

    def _http_app(self) -> web.Application:
        middlewares = []
        if self.authorizer is not None:
            # /metrics only to whom a SubjectAccessReview allows; probes stay open.
            middlewares.append(protect(self.authorizer, ("/metrics",)))
        app = web.Application(middlewares=middlewares)
        self.metrics_api.add_routes(app)
        stream = make_stream_handler(
            self.store,
            self.authenticator,
            pod_locator(self.pod_informer.indexer),
            gate=self.stream_gate,
            on_open=self.stalls,
            reauth_after_s=self.options.stream_reauth_after_s,
            located=self.pod_informer.wait_for_sync,
        )

        async def metrics(_: web.Request) -> web.Response:
            registries = [self.registry] if self.registry is REGISTRY else [self.registry, REGISTRY]
            body = await exposition(registries)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            if not self._synced:
                return web.Response(status=503, text="caches not synced")
            return web.Response(text="ok")

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/v1/stream", stream)
        return app

    # --- lifecycle -------------------------------------------------------------------

    @property
    def stream_server_name(self) -> str:
        """The name agents verify the serving certificate against."""
        return server_name(self.options.stream_service, self.options.namespace)

    @property
    def stream_ca(self) -> bytes | None:
        """The CA agents trust (PEM), None when serving plain HTTP."""
        return self.certs.material.ca_cert if self.certs and self.certs.material else None

    async def start(self) -> None:
        """Serve HTTP(S), start informers, and begin campaigning (or leading)."""
        ssl_context = None
        if self.certs is not None:
            ssl_context = await self.certs.start()
            self._background.append(
                asyncio.create_task(supervise("stream certificate", self.certs.run))
            )
            await self._aggregation(ssl_context)
            self._background.append(
                asyncio.create_task(
                    supervise("aggregation layer", lambda: self._aggregation_loop(ssl_context))
                )
            )
        self._runner = web.AppRunner(self._http_app(), shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.options.http_host, self.options.http_port, ssl_context=ssl_context
        )
        await site.start()
        addresses = self._runner.addresses
        self.http_port = int(addresses[0][1]) if addresses else self.options.http_port
        log.info(
            "serving %s on %s:%s",
            "HTTPS" if ssl_context else "HTTP",
            self.options.http_host,
            self.http_port,
        )
        await self.factory.start()
        # Campaigning and reconciling come back after anything unforeseen, logged.
        self._main = asyncio.create_task(
            supervise("leader election and reconciling", self._run), name="controller-main"
        )

    async def _aggregation(self, ssl_context: ssl.SSLContext) -> None:
        """Trust the API server's front proxy (its CA, for client certificates) and
        give the external metrics APIService our CA; neither is needed to run, so a
        failure is logged and tried again later."""
        try:
            proxy = await frontproxy.load(self.review_client)
            if proxy is not None and proxy != self.metrics_api.front_proxy:
                trust_clients(ssl_context, proxy.ca_pem)
                self.metrics_api.front_proxy = proxy
            if self.certs is not None and self.certs.material is not None:
                await publish_ca_bundle(
                    self.review_client,
                    self.certs.material.ca_cert,
                    self.options.namespace,
                    service_names(self.options.metrics_service, self.options.namespace)[:1],
                )
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("aggregation layer: %r (tried again later)", exc)

    async def _aggregation_loop(self, ssl_context: ssl.SSLContext) -> None:
        while True:
            await asyncio.sleep(AGGREGATION_CHECK_EVERY_S)
            await self._aggregation(ssl_context)

    async def _run(self) -> None:
        await self.factory.wait_for_cache_sync()
        self._synced = True
        # From now on the receiver takes reports: this replica holds nothing agents
        # measured before, and says so while their first reports come
        # (aviator.latency.reporters `warming`).
        self.store.reporters.begin(self.now())
        log.info("caches synced")
        if self.sharded is not None:
            await self.sharded.run()
            return
        if not self.options.leader_elect:
            await self._lead()
            return
        lock = LeaseLock(
            self.lease_client,
            self.options.namespace,
            self.options.lease_name,
            self.options.identity,
        )
        self.elector = LeaderElector(
            LeaderElectionConfig(
                lock,
                on_started_leading=self._lead,
                on_stopped_leading=self._stopped_leading,
                on_new_leader=lambda who: log.info("leader is now %s", who),
                lease_duration=self.options.lease_duration,
                renew_deadline=self.options.renew_deadline,
                retry_period=self.options.retry_period,
                release_on_cancel=True,
            )
        )
        await self.elector.run_forever()

    async def _lead(self) -> None:
        log.info("%s: leading; reconciling", self.options.identity)
        self.metrics.is_leader.set(1)
        self.reconciler.forget_all()
        for policy in self.caches.policies.list():
            self.controller.enqueue(mapping.policy_key(policy))
        await self.controller.run()

    def _stopped_leading(self) -> None:
        log.info("%s: stopped leading", self.options.identity)
        self.metrics.is_leader.set(0)
        self.reconciler.forget_all()

    def is_leader(self) -> bool:
        """Reconciling: the leader; with sharding, holding the member Lease."""
        if self.sharded is not None:
            return self.sharded.elector.is_leader()
        if not self.options.leader_elect:
            return self._synced
        return self.elector is not None and self.elector.is_leader()

    async def wait(self) -> None:
        if self._main is not None:
            await self._main

    async def stop(self) -> None:
        """Graceful: stop reconciling, release the lease, stop informers and HTTP."""
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        self.controller.queue.shutdown()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.factory.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.prober.close()
        await self.review_client.close()
        await self.lease_client.close()

    def now(self) -> float:
        return time.monotonic()
