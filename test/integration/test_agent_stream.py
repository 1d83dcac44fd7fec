"""Agent → controller stream against the real API server.

A receiver (aviator.latency.receiver) runs on 127.0.0.1 with a real TokenAuthenticator
(TokenReview against the real kube-apiserver); the agent maps IPs to pods with a real
node-local Pod informer. The latency source is scripted (counters chosen by the test),
so the test knows exactly what every window must contain; the kernel side is tested
in test/bpf.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from integration_support import (
    Receiver,
    agent_token,
    create_policy,
    create_service,
    ensure_node,
    request_token,
    running_receiver,
)

from aviator.agent.app import Agent
from aviator.agent.bpf.model import EndpointKey
from aviator.agent.config import AgentConfig
from aviator.agent.prober import NodeProber
from aviator.agent.sources import MapState, PodIps
from aviator.agent.windows import CountersLike, EndpointKeyLike
from aviator.kube import KubeClient
from aviator.kube.marks import LABEL_SERVICE_NAME
from aviator.kube.resources import ENDPOINTSLICES, PODS, SERVICEACCOUNTS, SERVICES
from aviator.latency.auth import TokenAuthenticator
from aviator.latency.histogram import Histogram
from aviator.latency.probing import ProbeCounters
from aviator.latency.schema import Snapshot, Source

pytestmark = pytest.mark.integration


# --- the scripted latency source -----------------------------------------------------


class ScriptedSource:
    """Cumulative counters that grow by `per_read` samples of fixed latencies each read."""

    name: Source = "ebpf"

    def __init__(self, latencies_us: dict[EndpointKey, int], per_read: int = 10) -> None:
        self.latencies = latencies_us
        self.per_read = per_read
        self.counters = {k: ProbeCounters() for k in latencies_us}

    async def read(self) -> Iterable[tuple[EndpointKeyLike, CountersLike]]:
        out: dict[EndpointKey, ProbeCounters] = {}
        for key, c in self.counters.items():
            v = self.latencies[key]
            c.hist.record(v, self.per_read)
            c.sum_us += v * self.per_read
            c.max_us = max(c.max_us, v)
            out[key] = c.frozen()
        return out.items()

    async def open_ages(self, ips: Collection[str]) -> Iterable[tuple[EndpointKeyLike, int]]:
        return [(k, c.oldest_open_us) for k, c in await self.read() if c.oldest_open_us]

    async def maintain(self, pods: PodIps) -> MapState:
        return MapState()

    async def stats(self) -> dict[str, int]:
        return {"events": 1}

    def set_probes(self, ports: object, addresses: object, grpc: object = ()) -> None:

        pass

    def close(self) -> None:
        pass


# --- API objects -----------------------------------------------------------------------


async def running_pod(
    kube: KubeClient,
    ns: str,
    name: str,
    node: str,
    ip: str,
    labels: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> None:
    """A pod bound to `node` and marked Running at `ip` (no kubelet runs here)."""
    await kube.create(
        PODS,
        {
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {
                "nodeName": node,
                "containers": containers or [{"name": "c", "image": "example"}],
            },
        },
    )
    await kube.patch(
        PODS,
        name,
        {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
        ns,
        subresource="status",
    )


Env = tuple[KubeClient, str, Receiver, Path]


@pytest.fixture
async def env(kube: KubeClient, namespace: str, tmp_path: Path) -> AsyncIterator[Env]:
    """A receiver accepting `<namespace>:agent`, and a folder for token files."""
    async with running_receiver(kube, [f"{namespace}:agent"]) as receiver:
        yield kube, namespace, receiver, tmp_path


async def token_file(env: Env, node: str, account: str = "agent") -> Path:
    """A file holding a token of `account` bound to the Node `node`."""
    kube, ns, _, folder = env
    path = folder / f"{account}-{node}-token"
    path.write_text(await agent_token(kube, ns, account, node=node))
    return path


async def run_agent(
    kube: KubeClient, config: AgentConfig, source: ScriptedSource
) -> tuple[Agent, asyncio.Event, asyncio.Task[None]]:
    agent = Agent(config, kube, source, NodeProber(min_samples=0))
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    async with asyncio.timeout(30):
        await agent.started.wait()
    return agent, stop, task


async def stop_agent(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    async with asyncio.timeout(15):
        await task


def streaming_to(receiver: Receiver, node: str, token_file: Path) -> AgentConfig:
    """An agent on `node` reporting every 0.2 s to `receiver` with the token in the file."""
    return AgentConfig(
        node=node,
        report_interval_s=0.2,
        http_host="127.0.0.1",
        http_port=0,
        secure_serving=False,  # its API in plain HTTP, open (test_agent_api_auth.py)
        controller_urls=[receiver.url],
        token_files=[str(token_file)],
    )


def node_name() -> str:
    return f"node-{uuid.uuid4().hex[:8]}"


def endpoint_of(snap: Snapshot, ip: str) -> Any:
    return next((e for e in snap.endpoints if e.ip == ip), None)


# --- tests -----------------------------------------------------------------------------


async def test_snapshots_carry_pods_from_the_node_informer(env: Env) -> None:
    kube, ns, receiver, _ = env
    node = node_name()
    good = await token_file(env, node)
    await running_pod(kube, ns, "web-0", node, "127.0.51.1")
    await running_pod(kube, ns, "elsewhere", "another-node", "127.0.51.3")
    source = ScriptedSource(
        {
            EndpointKey("127.0.51.1", 8080, "server"): 10_000,
            EndpointKey("127.0.51.2", 8080, "server"): 20_000,  # pod created later
            EndpointKey("127.0.51.3", 8080, "server"): 30_000,  # another node's pod
            EndpointKey("10.9.9.9", 443, "client"): 5_000,  # client views are off by default
        }
    )
    config = streaming_to(receiver, node, good)
    agent, stop, task = await run_agent(kube, config, source)
    try:
        snap = await receiver.store.wait_for(lambda s: endpoint_of(s, "127.0.51.1") is not None)
        assert (snap.node, snap.source) == (node, "ebpf")
        assert 0.05 < snap.window_s < 5
        assert abs(snap.time - time.time()) < 30
        ep = endpoint_of(snap, "127.0.51.1")
        assert (ep.pod, ep.port, ep.role, ep.count) == (f"{ns}/web-0", 8080, "server", 10)
        assert ep.hist == Histogram.from_values([10_000] * 10)
        assert ep.sum_us == 100_000 and ep.max_us == 10_000
        # Only this node's pods are reported: unknown IPs, other nodes' pods and
        # client views stay home.
        assert {e.ip for e in snap.endpoints} == {"127.0.51.1"}

        # A pod appearing later is picked up by the informer.
        await running_pod(kube, ns, "web-1", node, "127.0.51.2")
        snap = await receiver.store.wait_for(lambda s: endpoint_of(s, "127.0.51.2") is not None)
        assert endpoint_of(snap, "127.0.51.2").pod == f"{ns}/web-1"

        # The controller side sees per-pod latency.
        est = receiver.store.estimate("127.0.51.1", now=time.monotonic())
        assert est is not None and abs(est.p50_ms - 10) <= 10 / 32 and est.source == "ebpf"

        # The agent's own API says the same.
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{agent.http_port}"
            async with http.get(f"{base}/latency") as resp:
                table = await resp.json()
            assert table["127.0.51.1"]["pod"] == f"{ns}/web-0"
            assert table["127.0.51.1"]["source"] == "ebpf"
            assert abs(table["127.0.51.2"]["p99_ms"] - 20) <= 20 / 32
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            assert (
                f'aviator_agent_pod_request_duration_seconds_count{{pod="{ns}/web-0",port="8080"}}'
                in text
            )
            assert "aviator_agent_bpf_events 1.0" in text
            assert f'aviator_agent_stream_connected{{url="{receiver.url}"}} 1.0' in text
    finally:
        await stop_agent(stop, task)


@pytest.mark.usefixtures("crd")
async def test_paced_reports_hold_steady_pods_and_send_changes_at_once(env: Env) -> None:
    """With --steady-report-interval, a steady pod's windows are held and sent merged:
    at its policy's evaluationInterval when one selects it, at the steady interval when
    none does, and a change at the next report (aviator.agent.reportpacing)."""
    kube, ns, receiver, _ = env
    node = node_name()
    await running_pod(kube, ns, "idle-0", node, "127.0.52.1")
    await running_pod(kube, ns, "web-0", node, "127.0.52.2", labels={"app": "web"})
    await create_service(kube, ns, "web", {"app": "web"})
    await create_policy(kube, ns, "web", "web", evaluationInterval="1s")
    loose, watched = (
        EndpointKey("127.0.52.1", 8080, "server"),
        EndpointKey("127.0.52.2", 8080, "server"),
    )
    source = ScriptedSource({loose: 10_000, watched: 10_000})
    config = streaming_to(receiver, node, await token_file(env, node))
    config.steady_report_interval_s = 60.0  # longer than the test: only a change sends `loose`
    agent, stop, task = await run_agent(kube, config, source)
    try:
        first = await receiver.store.wait_for(lambda s: endpoint_of(s, "127.0.52.1") is not None)
        # The policy's pod: every 1 s, five 0.2 s windows of 10 requests merged.
        merged = await receiver.store.wait_for(
            lambda s: (endpoint_of(s, "127.0.52.2") or _NONE).count >= 30
        )
        assert merged.window_s < 1  # the report's own interval: only the pod's window is merged
        assert endpoint_of(merged, "127.0.52.1") is None  # steady, held
        sample = agent.metrics.registry.get_sample_value
        assert (sample("aviator_agent_stream_windows_total", {"outcome": "held"}) or 0) > 0
        assert (sample("aviator_agent_stream_windows_total", {"outcome": "sent"}) or 0) >= 2
        source.latencies[loose] = 200_000
        changed_at = time.monotonic()
        slow = await receiver.store.wait_for(
            lambda s: (endpoint_of(s, "127.0.52.1") or _NONE).max_us == 200_000, within_s=30
        )
        assert time.monotonic() - changed_at < 30  # long before its 60 s hold ends
        assert slow is not first
        ep = endpoint_of(slow, "127.0.52.1")
        # Everything held since the first report, none lost: 10 requests per read.
        assert ep.count % 10 == 0 and ep.count > 10 and ep.hist.count == ep.count
    finally:
        await stop_agent(stop, task)


class _Absent:
    count = 0
    max_us = 0


_NONE = _Absent()


class ProbeAwareSource(ScriptedSource):
    """Records, at each read, whether the agent had told it a pod's probes yet."""

    def __init__(self, latencies_us: dict[EndpointKey, int]) -> None:
        super().__init__(latencies_us)
        self.told = False
        self.told_at_reads: list[bool] = []

    def set_probes(self, ports: object, addresses: object, grpc: object = ()) -> None:
        self.told = self.told or bool(ports)

    async def read(self) -> Iterable[tuple[EndpointKeyLike, CountersLike]]:
        self.told_at_reads.append(self.told)
        return await super().read()


async def test_nothing_counted_before_the_pods_probes_are_known_is_reported(env: Env) -> None:
    """A replacement agent starts while its node's pods run and the kubelet probes them:
    until it has listed the pods and told the source their probes, the source cannot
    tell the probes from the pods' own requests; what it counted by then is the
    baseline, never a window (it made a slow pod look fast)."""
    kube, ns, receiver, _ = env
    node = node_name()
    probe = {"httpGet": {"path": "/healthz", "port": 8080}}
    container = {"name": "c", "image": "example", "readinessProbe": probe}
    await running_pod(kube, ns, "probed", node, "127.0.52.1", containers=[container])
    source = ProbeAwareSource({EndpointKey("127.0.52.1", 8080, "server"): 300})
    config = streaming_to(receiver, node, await token_file(env, node))
    _, stop, task = await run_agent(kube, config, source)
    try:
        await receiver.store.wait_for(lambda s: endpoint_of(s, "127.0.52.1") is not None)
        assert source.told_at_reads[0], "the baseline was read before the pods' probes were known"
    finally:
        await stop_agent(stop, task)


async def test_stream_is_refused_without_a_valid_token_of_the_agent_account(env: Env) -> None:
    kube, ns, receiver, _ = env
    node = node_name()
    good = await token_file(env, node)
    bad = await token_file(env, node, "intruder")
    unbound = await request_token(kube, ns, "agent")  # names no node
    async with aiohttp.ClientSession() as http:
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer not-a-token"}, 401),
            ({"Authorization": f"Bearer {bad.read_text()}"}, 403),
            ({"Authorization": f"Bearer {unbound}"}, 403),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(receiver.url, headers=headers)
            assert err.value.status == status
        async with http.ws_connect(
            receiver.url, headers={"Authorization": f"Bearer {good.read_text()}"}
        ) as ws:
            await ws.send_str('{"v": 1, "kind": "snapshot"}')
            reply = await ws.receive_json()
            assert reply["kind"] == "error"


async def test_agent_with_the_wrong_account_is_refused_and_retries(env: Env) -> None:
    kube, ns, receiver, _ = env
    node = node_name()
    bad = await token_file(env, node, "intruder")
    await running_pod(kube, ns, "web-0", node, "127.0.52.1")
    source = ScriptedSource({EndpointKey("127.0.52.1", 8080, "server"): 1000})
    config = streaming_to(receiver, node, bad)
    agent, stop, task = await run_agent(kube, config, source)
    try:
        conn = agent.stream.connections[receiver.url]
        async with asyncio.timeout(30):
            while conn.last_error != "handshake refused: HTTP 403":
                conn.changed.clear()
                await conn.changed.wait()
        assert not conn.connected and receiver.store.snapshots == []
    finally:
        await stop_agent(stop, task)


async def test_controllers_found_through_a_headless_service(
    kube: KubeClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent follows the controller Service's EndpointSlices. The API server
    refuses loopback addresses in slices, so the discovered URLs are recorded
    instead of dialled (the tests above cover the connection itself)."""
    ns = namespace
    await kube.create(
        SERVICES,
        {
            "metadata": {"name": "controller", "namespace": ns},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 8080}]},
        },
    )

    def slice_body(name: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {LABEL_SERVICE_NAME: "controller"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }

    await kube.create(
        ENDPOINTSLICES,
        slice_body(
            "controller-1",
            [
                {"addresses": ["10.244.0.10"], "conditions": {"ready": True}},
                {"addresses": ["10.244.0.11"], "conditions": {"ready": False}},
            ],
        ),
    )
    seen: list[list[str]] = []
    changed = asyncio.Event()

    def record(urls: Iterable[str]) -> None:
        seen.append(sorted(urls))
        changed.set()

    config = AgentConfig(
        node=node_name(),
        report_interval_s=0.2,
        http_host="127.0.0.1",
        http_port=0,
        secure_serving=False,
        controller_service=f"{ns}/controller",
        token_files=[],
    )
    agent = Agent(config, kube, ScriptedSource({}), NodeProber(min_samples=0))
    monkeypatch.setattr(agent.stream, "set_urls", record)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))

    async def wait_for_urls(expected: list[str]) -> None:
        async with asyncio.timeout(30):
            while not seen or seen[-1] != expected:
                changed.clear()
                await changed.wait()

    try:
        await wait_for_urls(["ws://10.244.0.10:8080/v1/stream"])
        # A second replica appears in another slice: both are streamed to.
        await kube.create(
            ENDPOINTSLICES,
            slice_body("controller-2", [{"addresses": ["10.244.1.7"], "conditions": {}}]),
        )
        await wait_for_urls(["ws://10.244.0.10:8080/v1/stream", "ws://10.244.1.7:8080/v1/stream"])
        await kube.delete(ENDPOINTSLICES, "controller-1", ns)
        await wait_for_urls(["ws://10.244.1.7:8080/v1/stream"])
    finally:
        await stop_agent(stop, task)


async def test_audience_bound_tokens(kube: KubeClient, namespace: str) -> None:
    """A projected token for audience "aviator", bound to the agent's pod (as the agent
    DaemonSet mounts it), is accepted by an authenticator expecting that audience, for
    the pod's node, and refused by one expecting another; a token for another audience
    is refused by the first."""
    await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "agent", "namespace": namespace}})
    node = node_name()
    await ensure_node(kube, node)
    pod = await kube.create(
        PODS,
        {
            "metadata": {"name": "agent-pod", "namespace": namespace},
            "spec": {
                "nodeName": node,
                "serviceAccountName": "agent",
                "containers": [{"name": "c", "image": "example"}],
            },
        },
    )
    bound = {"kind": "Pod", "apiVersion": "v1", "name": "agent-pod", "uid": pod["metadata"]["uid"]}

    async def token_for(audience: str) -> str:
        return await request_token(
            kube, namespace, "agent", bound=bound, audiences=[audience], expiration_s=600
        )

    allowed = [f"{namespace}:agent"]
    expecting_aviator = TokenAuthenticator(kube, allowed, audiences=["aviator"])
    expecting_other = TokenAuthenticator(kube, allowed, audiences=["something-else"])
    aviator_token = await token_for("aviator")
    verdict = await expecting_aviator.authenticate(aviator_token)
    assert verdict.allowed and verdict.node == node
    assert (await expecting_other.authenticate(aviator_token)).status == 401
    assert (await expecting_aviator.authenticate(await token_for("something-else"))).status == 401
