"""The agent process: one report loop tying source, pod map, prober, stream and API.

Every report interval:

1. read the latency source's cumulative counters and diff them into a window;
2. keep the server-side endpoints of this node's pods (the kernel sees every socket on
   the host; on a shared kernel it even sees other nodes' pods) and name their pods;
3. file the window in the local store (for GET /latency) and the metrics, and send it
   to every controller replica (with `--steady-report-interval`, steady endpoints'
   windows are held and sent merged less often, aviator.agent.reportpacing);
4. start reading the gauges the policies name as the pods' own load (at most one
   round at a time, aviator.agent.loadscraper), which the next snapshot carries;
5. start keep-warm probes for targeted pods with too few samples in the local window
   (in probe mode: the probes that ARE the measurement), and tell the source which
   ports and paths the kubelet probes and which addresses are the node's, so the
   kubelet's probes are counted apart from traffic (aviator.agent.kubelet); the
   source counts the keep-warm probes among the samples (`EndpointWindow.keepwarm`).

Between intervals, every `urgent_check_s`, it looks at the ages of the open requests of
the pods that have a p99Threshold (`CounterSource.open_ages`: no counters decoded) and,
when one just crossed it, runs the interval's work at once (aviator.agent.urgent: when,
how often, which threshold).

Every `maintain_s` (at a regular tick, never an urgent one) it keeps the source's maps to the node's pods
(aviator.agent.upkeep, `CounterSource.maintain`): endpoints of IPs that are not a local pod's and idle for
`prune_idle_s` leave the BPF maps, as do the idle connections of pods gone that long; and
it learns which maps are full (their drops grew), which every snapshot then carries
(`maps_full`) so the controller can say why a pod has no data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from aviator.agent import views
from aviator.agent.api import DATA_PATHS, make_api
from aviator.agent.config import AgentConfig
from aviator.agent.handoff.wiring import handoff_runner
from aviator.agent.kubelet import grpc_probe_ports, local_addresses, probe_paths
from aviator.agent.loads import load_targets
from aviator.agent.loadscraper import LoadScraper
from aviator.agent.metrics import AgentMetrics
from aviator.agent.podmap import PodMap
from aviator.agent.prober import NodeProber
from aviator.agent.reportpacing import ReportPacer, report_periods
from aviator.agent.sources import CounterSource
from aviator.agent.stream import StreamFanout, StreamTls, TokenFile, urls_from_slices
from aviator.agent.targets import TargetKey, probe_targets
from aviator.agent.upkeep import MapUpkeep
from aviator.agent.urgent import UrgentReports, open_thresholds
from aviator.agent.windows import CountersLike, EndpointKeyLike, WindowDiffer, attach_pods
from aviator.informers import (
    DeletedFinalStateUnknown,
    FuncHandler,
    InformerFactory,
    SharedIndexInformer,
    unwrap_tombstone,
)
from aviator.kube import KubeClient
from aviator.kube.marks import LABEL_SERVICE_NAME
from aviator.kube.objects import JSON
from aviator.kube.pods import pod_ips
from aviator.kube.resources import AVIATORPOLICIES, ENDPOINTSLICES, SERVICES
from aviator.latency.probing import ProbeTarget
from aviator.latency.schema import MAPS, AppProtocol, EndpointWindow, Snapshot
from aviator.latency.store import LatencyStore
from aviator.latency.tls import server_context
from aviator.pki import Authority
from aviator.runtime.httpauth import RequestAuthorizer, protect
from aviator.runtime.supervise import supervise

log = logging.getLogger(__name__)

Counted = tuple[EndpointKeyLike, CountersLike]  # one endpoint of a source's read


def self_signed_context(node: str, host: str) -> ssl.SSLContext:
    """HTTPS for the agent's API: a certificate of its own (scrapers skip verifying
    it, as for controller-runtime's generated ones; the token check is what counts)."""
    wanted = (node, "localhost", "127.0.0.1", host)
    names = tuple(dict.fromkeys(n for n in wanted if n and n not in ("0.0.0.0", "::")))
    issued = Authority.new(f"aviator-agent-{node}").issue(node, server_names=names)
    return server_context(issued.cert_pem, issued.key_pem)


_STATS_EVERY_S = 10.0  # BPF stats walk the socket map: not every interval
# How long start() waits for the node's pods before it takes the source's baseline.
POD_SYNC_WAIT_S = 20.0


class Agent:
    """Runs until `stop` is set; see the module docstring for one interval's work."""

    def __init__(
        self,
        config: AgentConfig,
        client: KubeClient,
        source: CounterSource,
        prober: NodeProber,
        *,
        source_note: str | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.source = source
        self.source_note = source_note  # why eBPF is not used, if it is not
        self.prober = prober
        self.factory = InformerFactory(client)
        self.pods = PodMap.for_node(self.factory, config.node)
        self.policies: SharedIndexInformer = self.factory.informer_for(AVIATORPOLICIES)
        self.services: SharedIndexInformer = self.factory.informer_for(SERVICES)
        self.store = LatencyStore(
            window_s=config.window_s, stale_after_s=max(3 * config.report_interval_s, 5.0)
        )
        self.pacer = ReportPacer(config.steady_report_interval_s, config.report_interval_s)
        self.pods.informer.add_event_handler(FuncHandler(delete=self._forget_pod))
        self.metrics = AgentMetrics(
            max_pods=config.metrics_max_pods,
            buckets_per_octave=config.metrics_buckets_per_octave,
        )
        self.metrics.set_source(source.name)
        self.metrics.probe_stats = prober.stats
        tls = (
            StreamTls(Path(config.controller_ca), config.controller_server_name)
            if config.controller_ca
            else None
        )
        self.stream = StreamFanout(
            TokenFile(*config.token_files, reread_s=config.token_reread_s), tls=tls
        )
        self.metrics.stream = self.stream
        self.differ = WindowDiffer()
        self._probes_known = False  # the baseline was taken knowing the pods' probes
        self.urgent = UrgentReports(config.urgent_min_gap_s)
        self.loads = LoadScraper()
        self.last_snapshot: Snapshot | None = None
        self.targets: dict[TargetKey, ProbeTarget] = {}
        # The node's addresses: the flags, and those of the agent's own (host) network
        # namespace, looked up again every _STATS_EVERY_S.
        self.node_addresses: set[str] = set(config.node_addresses)
        # What the source recognised on each local pod's server endpoint that served a
        # request (keep-warm probes speak it); forgotten with the pod.
        self.protocols: dict[TargetKey, AppProtocol] = {}
        self._last_tick: float | None = None
        self._next_stats = 0.0
        self.upkeep = MapUpkeep(config.prune_idle_s, config.maintain_s)
        self._runner: web.AppRunner | None = None
        self.handoffs = handoff_runner(
            config, source, client, self.metrics, self.policies, self.pods
        )
        self._handoff_task: asyncio.Task[None] | None = None
        self._review_client: KubeClient | None = None
        self.http_port: int | None = None  # the bound port (when 0 was asked for)
        self.started = asyncio.Event()  # informers started, API serving, streams dialling

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        if cfg.controller_service:
            ns, _, name = cfg.controller_service.partition("/")
            slices = self.factory.informer_for(
                ENDPOINTSLICES, namespace=ns, label_selector=f"{LABEL_SERVICE_NAME}={name}"
            )
            slices.add_event_handler(
                FuncHandler(
                    add=lambda _o, _i: self._follow_slices(slices),
                    update=lambda _o, _n: self._follow_slices(slices),
                    delete=lambda _o: self._follow_slices(slices),
                )
            )
        await self.factory.start()
        # What the kubelet probes is known once the node's pods are: wait for them (a
        # replacement agent that reported before would count the kubelet's probes as
        # its pods' own requests: sub-millisecond samples that make a slow pod look
        # fast). What the source counted until then is the baseline, not reported.
        try:
            await asyncio.wait_for(self.pods.informer.wait_for_sync(), POD_SYNC_WAIT_S)
        except TimeoutError:
            log.warning("node's pods not listed after %gs: reporting waits", POD_SYNC_WAIT_S)
        self.node_addresses |= local_addresses()
        await self._take_baseline()
        if self.handoffs is not None:
            self._handoff_task = asyncio.get_running_loop().create_task(
                supervise("hand-offs", self.handoffs.run), name="handoffs"
            )
        if cfg.controller_urls:
            self.stream.set_urls(cfg.controller_urls)
        middlewares: list[Any] = []
        ssl_context = None
        if cfg.secure_serving:
            self._review_client = self.client.fork(connections=2)
            middlewares.append(protect(RequestAuthorizer(self._review_client), DATA_PATHS))
            ssl_context = self_signed_context(cfg.node, cfg.http_host)
        self._runner = web.AppRunner(make_api(self, middlewares), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.http_host, cfg.http_port, ssl_context=ssl_context)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        log.info(
            "agent for node %s: source %s%s, http on %s:%s",
            cfg.node,
            self.source.name,
            f" ({self.source_note})" if self.source_note else "",
            cfg.http_host,
            self.http_port,
        )
        self.started.set()

    def _forget_pod(self, obj: JSON | DeletedFinalStateUnknown) -> None:
        """A deleted pod's windows leave the local store at once (not after the store's
        forget_after_s): under churn they would pile up for minutes."""
        ips = set(pod_ips(unwrap_tombstone(obj)))
        for ip in ips:
            self.store.forget(ip)
        self.protocols = {k: v for k, v in self.protocols.items() if k[0] not in ips}

    def _follow_slices(self, slices: SharedIndexInformer) -> None:
        urls = urls_from_slices(
            slices.indexer.list(),
            scheme="wss" if self.config.controller_ca else "ws",
            port_name=self.config.controller_port_name,
        )
        self.stream.set_urls(urls + list(self.config.controller_urls))

    async def run(self, stop: asyncio.Event) -> None:
        """start(), then one tick per report interval until `stop`, then close()."""
        try:
            await self.start()
            loop = asyncio.get_running_loop()
            interval = self.config.report_interval_s
            deadline = loop.time() + interval
            while not stop.is_set():
                watch = self._urgent_watch()
                wake = (
                    min(deadline, loop.time() + self.config.urgent_check_s) if watch else deadline
                )
                foreseen = self.urgent.next_look() if watch else None
                if foreseen is not None:  # on time.monotonic()'s clock, not the loop's
                    wake = min(wake, loop.time() + foreseen - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, wake - loop.time()))
                if stop.is_set():
                    break
                # A timer may fire a hair early: within 1 ms of the deadline is the tick.
                due = not watch or loop.time() >= deadline - 1e-3
                try:
                    await (self.tick() if due else self._look())
                except Exception:  # one bad interval must not end the agent
                    log.exception("report interval failed" if due else "urgent check failed")
                if due:
                    # Fixed cadence; after a stall, skip the missed intervals.
                    deadline = max(deadline + interval, loop.time())
        finally:
            await self.close()

    async def close(self) -> None:
        if self._handoff_task is not None:
            self._handoff_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._handoff_task
            self._handoff_task = None
        await self.prober.close()
        await self.loads.close()
        await self.stream.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._review_client is not None:
            await self._review_client.close()
        await self.factory.stop()
        self.source.close()

    # --- one interval -------------------------------------------------------------------

    def _urgent_watch(self) -> bool:
        """Look between intervals: on, and some local pod has a threshold."""
        return self.config.urgent_check_s > 0 and bool(self.urgent.thresholds)

    async def _look(self) -> None:
        """One look between intervals; reports at once when a request just crossed."""
        seen = time.monotonic()  # before the read: a look foreseen from it is never late
        ages = await self.source.open_ages(self.urgent.thresholds.keys())
        if self.urgent.check(ages, seen):
            log.debug("a request is open past its pod's threshold: reporting now")
            await self.tick(urgent=True)

    async def _maintain(self, now: float) -> None:
        """Upkeep of the source's maps (aviator.agent.upkeep), then their occupancy."""
        local = (ip for pod in self.pods.pods() for ip in pod_ips(pod))
        full = (await self.upkeep.run(self.source, local, now)).full
        stats = await self.source.stats()
        if stats:
            stats.update({f"{m}_full": int(m in full) for m in MAPS})
        self.metrics.set_source_stats(stats)

    async def tick(
        self, counters: Iterable[Counted] | None = None, *, urgent: bool = False
    ) -> Snapshot:
        """One interval's work (see the module docstring); `counters`: the source's,
        when just read. An `urgent` report does not wait for the maps' upkeep (a walk
        of every map): the next regular tick does it."""
        started = time.perf_counter()
        now = time.monotonic()
        window_s = (
            now - self._last_tick if self._last_tick is not None else self.config.report_interval_s
        )
        self._last_tick = now
        if not self._probes_known and self.pods.has_synced():
            await self._take_baseline()  # the pods are listed now: nothing before counts
            counters = None
        cumulative = list(await self.source.read() if counters is None else counters)
        resets_before = self.differ.resets
        windows = attach_pods(self.differ.advance(cumulative), self.pods.pod_for)
        self.metrics.counter_resets.inc(self.differ.resets - resets_before)
        endpoints = tuple(w for w in windows if self._reported(w))
        if not urgent and self.upkeep.due(now):
            await self._maintain(now)
        snapshot = Snapshot(
            node=self.config.node,
            source=self.source.name,
            time=time.time(),
            window_s=max(window_s, 1e-3),
            endpoints=endpoints,
            maps_full=self.upkeep.full,
            loads=self.loads.current(),
        )
        self.store.ingest(snapshot, now)
        self.metrics.observe(snapshot)
        self.metrics.retain_pods(lambda pod: self.pods.informer.indexer.get(pod) is not None)
        self._follow_periods()
        held_before = self.pacer.held
        paced = self.pacer.take(endpoints, now, urgent=urgent)
        self.metrics.stream_windows.labels("sent").inc(len(paced))
        self.metrics.stream_windows.labels("held").inc(self.pacer.held - held_before)
        self.stream.publish(replace(snapshot, endpoints=paced))
        self.last_snapshot = snapshot
        self._follow_thresholds(cumulative, now)
        self._learn_protocols(cumulative)
        self._probe(now)
        if not urgent:
            self._read_loads()
        if now >= self._next_stats:
            self.node_addresses = set(self.config.node_addresses) | local_addresses()
        self._follow_kubelet_probes()
        if now >= self._next_stats:
            self._next_stats = now + _STATS_EVERY_S
            self.metrics.set_source_stats(await self.source.stats())
        self.metrics.report_seconds.observe(time.perf_counter() - started)
        return snapshot

    def _follow_thresholds(self, cumulative: Iterable[Counted], seen: float) -> None:
        """Which pods to watch between intervals, and what this report carried (its
        counters read from `seen` on)."""
        self.urgent.thresholds = open_thresholds(
            self.policies.indexer.list(),
            lambda ns, name: self.services.indexer.get(f"{ns}/{name}"),
            self.pods.pods(),
        )
        self.urgent.reported(((key, c.oldest_open_us) for key, c in cumulative), seen)

    def _follow_periods(self) -> None:
        """How often the pacer sends each local pod's windows (when pacing is on)."""
        if self.pacer.steady_s > 0:
            self.pacer.periods = report_periods(
                self.policies.indexer.list(),
                lambda ns, name: self.services.indexer.get(f"{ns}/{name}"),
                self.pods.pods(),
            )

    def _read_loads(self) -> None:
        """Start this interval's reading of the loads the policies ask the local pods
        for (aviator.agent.loadscraper); the next snapshot carries it."""
        self.loads.start(
            load_targets(
                self.policies.indexer.list(),
                lambda ns, name: self.services.indexer.get(f"{ns}/{name}"),
                self.pods.pods(),
            )
        )

    async def _take_baseline(self) -> None:
        """Tell the source the pods' probes, then make what it has counted the baseline
        (not reported); done again once the pods are listed if they were not yet."""
        listed = self.pods.has_synced()
        self._follow_kubelet_probes()
        self.differ.advance(await self.source.read())
        self._probes_known = listed

    def _follow_kubelet_probes(self) -> None:
        """Tell the source which ports and paths the kubelet probes on this node's pods
        (not a keep-warm path: that is the real path), which ports it probes by gRPC and
        which addresses are the node's."""
        pods = self.pods.pods()
        self.source.set_probes(
            probe_paths(pods, {k: t.path for k, t in self.targets.items()}),
            self.node_addresses,
            grpc_probe_ports(pods),
        )

    def _learn_protocols(self, cumulative: Iterable[Counted]) -> None:
        """The protocol of every local pod's server endpoint that has served a request
        (the counters' protocol is the most specific one seen since it was tracked)."""
        if self.source.name == "probe":
            return  # the probes measure themselves: nothing classifies the traffic
        for key, c in cumulative:
            if key.role == "server" and c.count > 0 and self.pods.pod_for(key.ip) is not None:
                self.protocols[(key.ip, key.port)] = c.protocol

    def _reported(self, w: EndpointWindow) -> bool:
        if w.role != "client":
            return w.pod is not None
        return self.config.report_client_endpoints

    def _probe(self, now: float) -> None:
        self.targets = {
            key: replace(target, protocol=self.protocols.get(key))
            for key, target in probe_targets(
                self.policies.indexer.list(),
                lambda ns, name: self.services.indexer.get(f"{ns}/{name}"),
                self.pods.pods(),
            ).items()
        }
        if self.source.name == "probe":
            self.prober.schedule(self.targets, None)
            return
        # The window's samples are traffic and keep-warm probes: the source counts the
        # kubelet's probes apart.
        observed: dict[TargetKey, int] = {}
        for key in self.targets:
            est = self.store.estimate(key[0], now, port=key[1])
            observed[key] = est.samples if est is not None else 0
        self.prober.schedule(self.targets, observed)

    # --- what the HTTP API shows --------------------------------------------------------

    def latency_table(self) -> dict[str, dict[str, Any]]:
        """GET /latency (aviator.agent.views)."""
        return views.latency_table(self.store, self.pods.pod_for, time.monotonic())

    def healthy(self) -> bool:
        """The report loop is alive (it ticked recently, or has only just started)."""
        if self._last_tick is None:
            return True
        return time.monotonic() - self._last_tick < max(3 * self.config.report_interval_s, 10.0)

    def ready(self) -> bool:
        """The pod map is synced and at least one window was produced."""
        return self.pods.has_synced() and self.last_snapshot is not None

    def status(self) -> dict[str, Any]:
        """GET /status (aviator.agent.views)."""
        return views.agent_status(self)
