"""Shared pieces of the integration tests (the `crd` fixture is in conftest.py):
CRD install, pods with a hand-written status (no kubelet here), ServiceAccount tokens,
an in-process controller, a test agent that streams latency over the real websocket,
and a latency receiver that records what agents stream to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from aviator.agent.sources import MapState
from aviator.api.crd import CRD_NAME, build_crd
from aviator.api.types import API_VERSION, KIND
from aviator.controller.agents import POD_IP_INDEXERS, pod_locator, pod_node_resolver
from aviator.controller.app import ControllerApp, Options
from aviator.informers import InformerFactory
from aviator.kube import ApiError, KubeClient
from aviator.kube.marks import LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_ZONE, MANAGER
from aviator.kube.resources import (
    AVIATORPOLICIES,
    ENDPOINTSLICES,
    NODES,
    PODS,
    SERVICEACCOUNTS,
    SERVICES,
)
from aviator.latency.auth import TokenAuthenticator
from aviator.latency.histogram import Histogram
from aviator.latency.receiver import make_stream_handler
from aviator.latency.schema import EndpointWindow, Snapshot, encode_snapshot
from aviator.latency.store import Ingested, LatencyStore
from aviator.latency.tls import client_context
from aviator.testing.controlplane import ControlPlane, binary

JSON = dict[str, Any]
T = TypeVar("T")
AGENT_SA = "aviator-agent"


def install_crd(cp: ControlPlane, body: JSON | None = None) -> None:
    """Apply the CRD (`body`, else the one the API package builds) and wait until it
    is served."""
    cp.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=json.dumps(build_crd() if body is None else body),
    )
    try:
        # Established is the API server's CRD controller catching up: seconds, longer
        # only on a very busy machine, hence a generous bound.
        cp.kubectl(
            "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=120s", timeout=150
        )
    except subprocess.CalledProcessError as exc:
        found = cp.kubectl("get", f"crd/{CRD_NAME}", "-o", "json", check=False)
        crd = json.loads(found.stdout) if found.returncode == 0 else {}
        conditions = (crd.get("status") or {}).get("conditions")
        raise AssertionError(
            f"CRD {CRD_NAME} not Established: {exc.stderr or exc.output!r}; conditions {conditions}"
        ) from exc
    wait_listable(cp, CRD_NAME)


def wait_listable(cp: ControlPlane, resource: str, within: float = 60.0) -> None:
    """Poll until `resource` (e.g. a CRD's name) can be listed: an Established CRD's
    storage may still be initialising, and a list answers 429 meanwhile."""
    deadline = time.monotonic() + within
    while True:
        done = cp.kubectl("get", resource, "-A", "-o", "name", check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{resource} not listable: {done.stderr}")
        time.sleep(0.2)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], within: float = 45.0, interval: float = 0.1
) -> T:
    """Poll `probe` until it returns something truthy; fail with its last value.

    Generous by default: the machine running the tests may be heavily shared."""
    deadline = time.monotonic() + within
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {last!r})")
        await asyncio.sleep(interval)


# --- objects -------------------------------------------------------------------------

NODE = "reconciler-test-node-a"
ZONE = "zone-a"
_nodes: set[tuple[str, str]] = set()


@contextlib.asynccontextmanager
async def watching(watch: Awaitable[None]) -> AsyncIterator[None]:
    """Run `watch` (a loop that records what it sees) while inside the block; cancelled
    and awaited on the way out. How it ended is dropped: what it recorded is the point,
    and a test that needs it to have lived checks that itself."""
    task = asyncio.ensure_future(watch)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def ensure_node(kube: KubeClient, name: str, zone: str = ZONE) -> None:
    """The built-in EndpointSlice controller skips pods whose Node does not exist."""
    if (kube.host, name) in _nodes:
        return
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {LABEL_ZONE: zone}},
    }
    try:
        await kube.create(NODES, body)
    except ApiError as exc:
        if not exc.conflict:
            raise
    _nodes.add((kube.host, name))


async def create_service(
    kube: KubeClient,
    ns: str,
    name: str,
    selector: dict[str, str],
    ports: list[JSON] | None = None,
) -> JSON:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": selector,
            "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }
    return await kube.create(SERVICES, body, ns)


async def create_pod(
    kube: KubeClient,
    ns: str,
    name: str,
    ip: str | list[str],
    labels: dict[str, str],
    *,
    node: str = NODE,
    ready: bool = True,
    container_ports: list[JSON] | None = None,
) -> JSON:
    """A Pod bound to `node` whose status says Running/Ready at `ip` (no kubelet)."""
    await ensure_node(kube, node)
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "app",
                    "image": "example.invalid/app:1",
                    "ports": container_ports or [{"name": "http", "containerPort": 8080}],
                }
            ],
        },
    }
    await kube.create(PODS, body, ns)
    return await set_pod_status(kube, ns, name, ip, ready=ready)


async def set_pod_status(
    kube: KubeClient, ns: str, name: str, ip: str | list[str], *, ready: bool = True
) -> JSON:
    ips = [ip] if isinstance(ip, str) else ip
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "phase": "Running",
        "podIP": ips[0],
        "podIPs": [{"ip": i} for i in ips],
        "hostIP": "192.0.2.1",
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now},
            {
                "type": "ContainersReady",
                "status": "True" if ready else "False",
                "lastTransitionTime": now,
            },
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ],
    }
    return await kube.patch(PODS, name, {"status": status}, ns, subresource="status")


def policy_body(name: str, target: str, **spec: Any) -> JSON:
    body: JSON = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"targetRef": {"kind": "Service", "name": target}, **spec},
    }
    return body


async def create_service_and_pods(
    kube: KubeClient, ns: str, service: str, labels: dict[str, str], ips: dict[str, str]
) -> None:
    """A Service selecting `labels` and a Ready pod (name → IP) for each of `ips`."""
    await create_service(kube, ns, service, labels)
    for name, ip in ips.items():
        await create_pod(kube, ns, name, ip, labels)


async def create_policy(kube: KubeClient, ns: str, name: str, target: str, **spec: Any) -> JSON:
    body = policy_body(name, target, **spec)
    body["metadata"]["namespace"] = ns
    return await kube.create(AVIATORPOLICIES, body, ns)


async def get_policy(kube: KubeClient, ns: str, name: str) -> JSON | None:
    try:
        return await kube.get(AVIATORPOLICIES, name, ns)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise


async def slices_of(
    kube: KubeClient, ns: str, service: str, ours: bool | None = None
) -> list[JSON]:
    selector = f"{LABEL_SERVICE_NAME}={service}"
    if ours is True:
        selector += f",{LABEL_MANAGED_BY}={MANAGER}"
    elif ours is False:
        selector += f",{LABEL_MANAGED_BY}!={MANAGER}"
    answer = await kube.list(ENDPOINTSLICES, ns, params={"labelSelector": selector})
    return list(answer.get("items") or [])


def endpoint_pods(slices: list[JSON], ready_only: bool = True) -> list[str]:
    out = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            if ready_only and not (ep.get("conditions") or {}).get("ready", True):
                continue
            out.append((ep.get("targetRef") or {}).get("name", ""))
    return sorted(out)


def condition(policy: JSON, ctype: str) -> JSON:
    for c in (policy.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


# --- the controller, in process ------------------------------------------------------


async def start_controller(
    cp: ControlPlane | Path, ns: str, **overrides: Any
) -> tuple[ControllerApp, KubeClient]:
    """An in-process controller (no leader election) on a free port; `cp` is the
    control plane or its kubeconfig."""
    kubeconfig = cp if isinstance(cp, Path) else cp.kubeconfig
    client = await KubeClient.load(str(kubeconfig))
    options = Options(
        namespace=ns,
        identity=f"test-{ns}",
        leader_elect=False,
        http_host="127.0.0.1",
        http_port=0,
        secure_serving=False,  # plain HTTP on 127.0.0.1; test_stream_tls.py covers TLS
        workers=2,
        agent_service_accounts=(f"{ns}:{AGENT_SA}",),
        latency_window_s=1.5,
        latency_stale_after_s=3.0,
    )
    for k, v in overrides.items():
        setattr(options, k, v)
    app = ControllerApp(client, options, registry=CollectorRegistry())
    await app.start()
    return app, client


@contextlib.asynccontextmanager
async def running_controller(
    cp: ControlPlane | Path, ns: str, **overrides: Any
) -> AsyncIterator[ControllerApp]:
    app, client = await start_controller(cp, ns, **overrides)
    try:
        yield app
    finally:
        await app.stop()
        await client.close()


@contextlib.asynccontextmanager
async def controller_and_agent(
    cp: ControlPlane, kube: KubeClient, ns: str, **overrides: Any
) -> AsyncIterator[tuple[ControllerApp, TestAgent]]:
    """An in-process controller (`overrides` as for `start_controller`) and a TestAgent
    streaming to it as the agent account."""
    token = await agent_token(kube, ns)
    async with (
        running_controller(cp, ns, **overrides) as app,
        TestAgent(stream_url(app), token) as agent,
    ):
        yield app, agent


# --- a test agent streaming over the real websocket ------------------------------------


async def agent_token(kube: KubeClient, ns: str, name: str = AGENT_SA, *, node: str = NODE) -> str:
    """A token of the ServiceAccount `ns:name` bound to the Node `node` (created when
    missing): the TokenReview names that node, as it names a pod-bound projected
    token's, so the controller takes what it sends for `node`'s pods only."""
    with contextlib.suppress(ApiError):
        await kube.create(
            SERVICEACCOUNTS,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            ns,
        )
    await ensure_node(kube, node)
    uid = (await kube.get(NODES, node))["metadata"]["uid"]
    return await request_token(
        kube, ns, name, bound={"kind": "Node", "apiVersion": "v1", "name": node, "uid": uid}
    )


async def pod_token(
    kube: KubeClient,
    ns: str,
    node: str,
    name: str = AGENT_SA,
    *,
    audiences: list[str] | None = None,
) -> str:
    """A token of `ns:name` bound to a new pod of that account on `node`, as the kubelet
    mints the agent DaemonSet's projected token."""
    with contextlib.suppress(ApiError):
        await kube.create(
            SERVICEACCOUNTS,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            ns,
        )
    await ensure_node(kube, node)
    pod = await kube.create(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": f"{name}-", "namespace": ns},
            "spec": {
                "nodeName": node,
                "serviceAccountName": name,
                "containers": [{"name": "agent", "image": "example.invalid/agent:1"}],
            },
        },
        ns,
    )
    meta = pod["metadata"]
    bound = {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}
    return await request_token(kube, ns, name, bound=bound, audiences=audiences)


async def request_token(
    kube: KubeClient,
    ns: str,
    name: str,
    *,
    bound: JSON | None = None,
    audiences: list[str] | None = None,
    expiration_s: int = 3600,
) -> str:
    """A TokenRequest of `ns:name`, bound to the object `bound` when given."""
    spec: JSON = {"expirationSeconds": expiration_s}
    if bound is not None:
        spec["boundObjectRef"] = bound
    if audiences is not None:
        spec["audiences"] = audiences
    answer = await kube.request(
        "POST",
        SERVICEACCOUNTS.path(ns, name, "token"),
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return str(answer["status"]["token"])


def snapshot(
    latency_ms: dict[str, float],
    *,
    node: str = NODE,
    samples: int = 200,
    port: int = 8080,
    maps_full: tuple[str, ...] = (),
) -> str:
    """A v1 stream message: `samples` requests at each IP's latency, in one window."""
    endpoints = []
    for ip, ms in latency_ms.items():
        us = max(1, int(ms * 1000))
        hist = Histogram()
        hist.record(us, samples)
        endpoints.append(
            EndpointWindow(
                ip=ip,
                port=port,
                role="server",
                pod=None,
                hist=hist,
                count=samples,
                sum_us=us * samples,
                max_us=us,
                rif=0,
                aborted=0,
            )
        )
    return encode_snapshot(
        Snapshot(
            node=node,
            source="ebpf",
            time=time.time(),
            window_s=0.2,
            endpoints=tuple(endpoints),
            maps_full=maps_full,
        )
    )


class TestAgent:
    """Streams the latencies in `self.latency_ms` (IP → ms) every `period_s`."""

    __test__ = False  # not a pytest class

    def __init__(
        self, url: str, token: str, period_s: float = 0.2, tls: dict[str, Any] | None = None
    ) -> None:
        self.url = url
        self.token = token
        self.tls = tls or {}  # ws_connect's ssl= and server_hostname=
        self.period_s = period_s
        self.latency_ms: dict[str, float] = {}
        self.maps_full: tuple[str, ...] = ()  # the BPF maps it says are full
        self.sent = 0
        self.answers: list[str] = []  # what the controller said (errors, refusals)
        self._sent_more = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.connected = asyncio.Event()

    async def __aenter__(self) -> TestAgent:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def sent_more(self, n: int, within_s: float = 120) -> None:
        """Wait until `n` more snapshots have gone out than have now."""
        target = self.sent + n
        async with asyncio.timeout(within_s), self._sent_more:
            await self._sent_more.wait_for(lambda: self.sent >= target)

    async def _run(self) -> None:
        assert self._session is not None
        async with self._session.ws_connect(
            self.url, headers={"Authorization": f"Bearer {self.token}"}, **self.tls
        ) as ws:
            self.connected.set()
            # Read what the controller answers, as an agent does: that also answers its
            # heartbeat pings, which a client that never reads leaves unanswered.
            reader = asyncio.create_task(self._read(ws))
            try:
                await self._send(ws)
            finally:
                reader.cancel()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.answers.append(msg.data)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            if self.latency_ms:
                await ws.send_str(snapshot(dict(self.latency_ms), maps_full=self.maps_full))
                self.sent += 1
                async with self._sent_more:
                    self._sent_more.notify_all()
            await asyncio.sleep(self.period_s)


def stream_url(app: ControllerApp) -> str:
    scheme = "wss" if app.options.secure_serving else "ws"
    return f"{scheme}://127.0.0.1:{app.http_port}/v1/stream"


def stream_tls(app: ControllerApp) -> dict[str, Any]:
    """ws_connect's TLS arguments for a client that trusts `app`'s stream CA, as an
    agent with the ConfigMap mounted does."""
    if app.stream_ca is None:
        return {}
    return {"ssl": client_context(app.stream_ca), "server_hostname": app.stream_server_name}


# --- a latency receiver that records what agents stream ----------------------------------


class RecordingStore(LatencyStore):
    """A LatencyStore that also keeps what it was given, and wakes waiters."""

    def __init__(self) -> None:
        super().__init__(window_s=30, stale_after_s=30)
        self.snapshots: list[Snapshot] = []
        self.changed = asyncio.Event()

    def ingest_snapshot(self, msg: Snapshot, now: float) -> Ingested:
        self.snapshots.append(msg)
        self.changed.set()
        return super().ingest_snapshot(msg, now)

    async def wait_for(self, pred: Callable[[Snapshot], bool], within_s: float = 60) -> Snapshot:
        async with asyncio.timeout(within_s):
            while True:
                for snap in reversed(self.snapshots):
                    if pred(snap):
                        return snap
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Receiver:
    url: str
    port: int
    store: RecordingStore


@contextlib.asynccontextmanager
async def running_receiver(kube: KubeClient, allowed: list[str]) -> AsyncIterator[Receiver]:
    """The controller's stream endpoint on 127.0.0.1, authenticating against the real
    API server, accepting the `allowed` ServiceAccounts ("namespace:name") and checking
    endpoints against a real Pod informer, as the controller does."""
    store = RecordingStore()
    factory = InformerFactory(kube)
    pods = factory.informer_for(PODS)
    pods.indexer.add_indexers(POD_IP_INDEXERS)
    authenticator = TokenAuthenticator(
        kube, allowed, resolve_pod_node=pod_node_resolver(pods.indexer, kube)
    )
    app = web.Application()
    app.router.add_get(
        "/v1/stream", make_stream_handler(store, authenticator, pod_locator(pods.indexer))
    )
    runner = web.AppRunner(app)
    await factory.start()
    try:
        await factory.wait_for_cache_sync()
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield Receiver(f"ws://127.0.0.1:{port}/v1/stream", port, store)
    finally:
        await runner.cleanup()
        await factory.stop()


# --- kubectl aviator, as kubectl runs it -----------------------------------------------


def plugin_bin() -> Path:
    script = Path(sys.executable).parent / "kubectl-aviator"
    assert script.exists(), "kubectl-aviator is not installed: pip install -e . (make setup)"
    return script


async def kubectl_aviator(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl aviator ARGS`: kubectl finds the plugin on PATH."""
    env = {**os.environ, "PATH": f"{plugin_bin().parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = [str(binary("kubectl")), "aviator", "--kubeconfig", str(cp.kubeconfig), *args]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, env=env
    )


class NoSource:
    """An agent's latency source that measures nothing (the agent's other duties under
    test); `CounterSource`'s interface, aviator/agent/sources.py."""

    name = "ebpf"

    async def read(self) -> Any:
        return []

    async def open_ages(self, ips: Any) -> Any:
        return []

    async def maintain(self, pods: Any) -> MapState:
        return MapState()

    async def stats(self) -> dict[str, int]:
        return {}

    def set_probes(self, ports: object, addresses: object, grpc: object = ()) -> None:
        pass

    def close(self) -> None:
        pass
