"""`aviator agent` as a plain process in probe mode (eBPF forced off).

Real control plane, real AviatorPolicy + Service + Pods (bound to the agent's node,
status patched since no kubelet runs), and two HTTP servers on their pod IPs on
127.0.x.y answering after 10 ms and 60 ms. The agent must find the targets through
the policy, probe them, serve `source: probe` latency on GET /latency, stream it to a
receiver, and stop cleanly on SIGTERM. With eBPF, the same pods idle get keep-warm
probes the kernel measures; as gRPC test apps, probes that speak gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc.aio
import pytest
from aiohttp import web
from integration_support import RecordingStore, agent_token, running_receiver

from aviator.api.crd import CRD_NAME
from aviator.box.files import CRD_FILE
from aviator.box.localapp import running_app
from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, PODS, SERVICES
from aviator.testing.controlplane import ControlPlane
from aviator.testing.waiting import BPF_COMPILE_BOUND_S, eventually, process_ready

pytestmark = pytest.mark.integration

FAST_IP, SLOW_IP = "127.0.61.1", "127.0.61.2"
DELAYS_S = {FAST_IP: 0.010, SLOW_IP: 0.060}


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane) -> ControlPlane:
    control_plane.kubectl("apply", "-f", str(CRD_FILE))
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    return control_plane


def free_port_on_both() -> int:
    """A port free on both pod IPs (they are distinct loopback addresses)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind((FAST_IP, 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind((SLOW_IP, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no common free port")


@pytest.fixture
async def pod_servers() -> AsyncIterator[tuple[int, dict[str, int]]]:
    """HTTP servers on the two pod IPs; returns (port, requests seen per IP)."""
    port = free_port_on_both()
    hits: dict[str, int] = {FAST_IP: 0, SLOW_IP: 0}
    runners: list[web.AppRunner] = []
    for ip, delay in DELAYS_S.items():

        async def handle(request: web.Request, ip: str = ip, delay: float = delay) -> web.Response:
            assert request.path == "/ping"
            hits[ip] += 1
            await asyncio.sleep(delay)
            return web.Response(text="pong")

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, ip, port).start()
        runners.append(runner)
    yield port, hits
    for runner in runners:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def agent_process(
    crd: ControlPlane, tmp_path: Path
) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
        http_port = free_port()
        log = open(tmp_path / f"agent-{len(procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aviator",
                "agent",
                "--kubeconfig",
                str(crd.kubeconfig),
                "--http-addr",
                f"127.0.0.1:{http_port}",
                "--secure-serving=false",  # plain HTTP, open: test_agent_api_auth.py covers it
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        procs.append(proc)
        return proc, http_port

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Scenario:
    ns: str
    node: str
    port: int
    hits: dict[str, int]
    store: RecordingStore
    receiver_url: str
    token_file: Path

    def agent_args(self, *args: str) -> tuple[str, ...]:
        """`aviator agent` arguments for this scenario's node and receiver, plus `args`."""
        return (
            "--node",
            self.node,
            "--controller-url",
            self.receiver_url,
            "--token-file",
            str(self.token_file),
            *args,
        )


@pytest.fixture
async def scenario(
    kube: KubeClient, namespace: str, tmp_path: Path, pod_servers: tuple[int, dict[str, int]]
) -> AsyncIterator[Scenario]:
    """A receiver accepting the namespace's "agent" ServiceAccount (token in a file), a
    Service + AviatorPolicy targeting web-0 (fast) and web-1 (slow) on a fresh node,
    and an untargeted pod."""
    port, hits = pod_servers
    async with _scenario(kube, namespace, tmp_path, port, hits) as sc:
        yield sc


GRPC_METHOD = "/aviator.testapp.TestApp/Call"  # any method of the test app does its work


@pytest.fixture
def grpc_pods() -> Iterator[int]:
    """The test app in gRPC mode on both pod IPs, answering after DELAYS_S; the port."""
    port = free_port_on_both()
    with contextlib.ExitStack() as apps:
        for ip, delay in DELAYS_S.items():
            apps.enter_context(running_app("grpc", ip, port, LATENCY=f"{delay * 1000:g}ms"))
        yield port


@pytest.fixture
async def grpc_scenario(
    kube: KubeClient, namespace: str, tmp_path: Path, grpc_pods: int
) -> AsyncIterator[Scenario]:
    """`scenario` with gRPC pods and a policy whose probePath names a gRPC method."""
    async with _scenario(kube, namespace, tmp_path, grpc_pods, {}, GRPC_METHOD) as sc:
        yield sc


@contextlib.asynccontextmanager
async def _scenario(
    kube: KubeClient,
    ns: str,
    tmp_path: Path,
    port: int,
    hits: dict[str, int],
    probe_path: str = "/ping",
) -> AsyncIterator[Scenario]:
    node = f"box-node-{uuid.uuid4().hex[:6]}"
    token_file = tmp_path / "token"
    token_file.write_text(await agent_token(kube, ns, "agent", node=node))
    async with running_receiver(kube, [f"{ns}:agent"]) as receiver:
        await _objects(kube, ns, node, port, probe_path)
        yield Scenario(ns, node, port, hits, receiver.store, receiver.url, token_file)


async def _objects(
    kube: KubeClient, ns: str, node: str, port: int, probe_path: str = "/ping"
) -> None:
    """The Service, the policy and the pods of the scenario."""
    await kube.create(
        SERVICES,
        {
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": port}]},
        },
    )
    await kube.create(
        AVIATORPOLICIES,
        {
            "apiVersion": "aviator.example.com/v1alpha1",
            "kind": "AviatorPolicy",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "targetRef": {"kind": "Service", "name": "web"},
                "targetPort": port,
                "probePath": probe_path,
            },
        },
    )
    for name, ip, labels in (
        ("web-0", FAST_IP, {"app": "web"}),
        ("web-1", SLOW_IP, {"app": "web"}),
        ("other", "127.0.61.3", {"app": "other"}),
    ):
        await kube.create(
            PODS,
            {
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "example"}]},
            },
        )
        await kube.patch(
            PODS,
            name,
            {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
            ns,
            subresource="status",
        )


def counted(store: RecordingStore, port: int) -> dict[str, int]:
    """Requests per pod IP over every snapshot received, on the pods' own server sockets.

    The kernel sees every socket on the host: another run of this test (its servers on
    the same pod IPs, another port) or a client-side view must not count as ours.
    """
    total = dict.fromkeys(DELAYS_S, 0)
    for s in store.snapshots:
        for e in s.endpoints:
            if e.ip in total and e.port == port and e.role == "server":
                total[e.ip] += e.count
    return total


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, url
        return cast(dict[str, Any], json.loads(await resp.text()))


async def both_in_latency_table(base: str) -> dict[str, Any]:
    """The agent's /latency table once both pods are in it. The table is the agent's
    current window: on a busy machine a pod's window may be between samples for a
    moment, so this waits (bounded) instead of reading it once."""
    table: dict[str, Any] = {}

    async def both_measured() -> bool:
        table.clear()
        table.update(await get_json(f"{base}/latency"))
        return FAST_IP in table and SLOW_IP in table

    await eventually(
        both_measured,
        within=30,
        recheck_s=0.3,
        what="both pods in the agent's /latency table",
        state=lambda: f"table has {sorted(table)}",
    )
    return table


async def stop(proc: subprocess.Popen[bytes], log: Path) -> str:
    """SIGTERM; the agent must exit 0 promptly. Returns its log."""
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = await asyncio.to_thread(proc.wait, 20)
    text = await asyncio.to_thread(log.read_text)
    assert code == 0, text[-3000:]
    assert time.monotonic() - started < 15
    return text


async def test_probe_mode_measures_targeted_pods(
    scenario: Scenario,
    tmp_path: Path,
    agent_process: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:
    sc = scenario
    proc, http_port = agent_process(
        *sc.agent_args(
            "--latency-source",
            "probe",
            "--report-interval",
            "0.3",
            "--probe-samples",
            "4",
            "--window",
            "10",
        ),
    )
    try:
        snap = await sc.store.wait_for(lambda _: min(counted(sc.store, sc.port).values()) >= 12)
        assert snap.source == "probe" and snap.node == sc.node
        pods = {e.ip: e.pod for s in sc.store.snapshots for e in s.endpoints}
        assert pods == {FAST_IP: f"{sc.ns}/web-0", SLOW_IP: f"{sc.ns}/web-1"}  # not "other"
        assert {e.port for s in sc.store.snapshots for e in s.endpoints} == {sc.port}
        assert min(sc.hits.values()) >= 12

        base = f"http://127.0.0.1:{http_port}"
        table = await get_json(f"{base}/latency")
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
        fast, slow = table[FAST_IP], table[SLOW_IP]
        assert fast["source"] == slow["source"] == "probe"
        assert (fast["pod"], slow["pod"]) == (f"{sc.ns}/web-0", f"{sc.ns}/web-1")
        # Probe latency = server delay + loopback HTTP overhead (bucket error 3.2 %).
        assert 10 * 0.96 <= fast["p50_ms"] <= 10 + 25
        assert 60 * 0.96 <= slow["p50_ms"] <= 60 + 25
        assert slow["p50_ms"] > fast["p50_ms"] + 30
        assert 'aviator_agent_latency_source{source="probe"} 1.0' in metrics
        assert 'aviator_agent_probes_total{result="sent"}' in metrics
    finally:
        log = await stop(proc, tmp_path / "agent-0.log")
    assert "probe mode requested" in log and "agent stopped" in log


@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF needs root")
async def test_auto_mode_measures_keep_warm_probes_in_the_kernel(
    scenario: Scenario,
    tmp_path: Path,
    agent_process: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:
    """No client traffic at all: the targeted pods are idle, so the agent sends them
    keep-warm probes, and the eBPF program measures those on the pods' sockets."""
    sc = scenario
    window_s, samples = 4.0, 5
    proc, http_port = agent_process(
        *sc.agent_args(
            "--latency-source",
            "auto",
            "--report-interval",
            "0.3",
            "--keep-warm-samples",
            str(samples),
            "--window",
            str(window_s),
        ),
    )
    try:
        await process_ready(
            proc,
            f"http://127.0.0.1:{http_port}/readyz",
            tmp_path / "agent-0.log",
            within=BPF_COMPILE_BOUND_S,
            what="the agent",
        )
        await sc.store.wait_for(lambda _: min(counted(sc.store, sc.port).values()) >= samples, 120)
        first = min(s.time for s in sc.store.snapshots)
        snap = await sc.store.wait_for(lambda s: s.time > first + 2 * window_s, 60)
        assert snap.source == "ebpf", "BPF did not load: see the agent log"
        elapsed = snap.time - first
        # Bounded: about `samples` per window per pod, not a probe every interval.
        for ip, n in sc.hits.items():
            assert n <= samples * (elapsed / window_s + 3), (ip, n, elapsed)
        # The kernel counted the probes the servers answered (those of the last
        # window or still in flight may not be reported yet).
        seen = counted(sc.store, sc.port)
        for ip in DELAYS_S:
            assert 0 <= sc.hits[ip] - seen[ip] <= 2 * samples, (ip, sc.hits[ip], seen[ip])
        table = await both_in_latency_table(f"http://127.0.0.1:{http_port}")
        fast, slow = table[FAST_IP], table[SLOW_IP]
        assert fast["source"] == slow["source"] == "ebpf"
        # Server-side latency: the servers' own delays (plus event-loop lag on a busy
        # machine; the kernel-side accuracy itself is tested in test/bpf).
        assert 10 * 0.96 <= fast["p50_ms"] <= 10 + 15
        assert 60 * 0.96 <= slow["p50_ms"] <= 60 + 15
        assert slow["p50_ms"] - fast["p50_ms"] >= 35
    finally:
        log = await stop(proc, tmp_path / "agent-0.log")
    assert "agent stopped" in log


async def test_auto_mode_falls_back_to_probes_when_ebpf_cannot_load(
    scenario: Scenario,
    tmp_path: Path,
    agent_process: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:
    """eBPF made unavailable (the BPF source cannot be found): `auto` says why and
    measures with probes; `ebpf` refuses to start."""
    sc = scenario
    no_bpf = {"AVIATOR_BPF_SOURCE": str(tmp_path / "missing" / "latency.bpf.c")}
    strict, _ = agent_process("--node", sc.node, "--latency-source", "ebpf", env=no_bpf)
    assert await asyncio.to_thread(strict.wait, 60) == 1
    strict_log = await asyncio.to_thread((tmp_path / "agent-0.log").read_text)
    assert "eBPF unavailable" in strict_log and "not found" in strict_log

    proc, http_port = agent_process(
        *sc.agent_args(
            "--latency-source",
            "auto",
            "--report-interval",
            "0.3",
        ),
        env=no_bpf,
    )
    try:
        snap = await sc.store.wait_for(lambda _: min(counted(sc.store, sc.port).values()) >= 3)
        assert snap.source == "probe"
        status = await get_json(f"http://127.0.0.1:{http_port}/status")
        assert status["source"] == "probe" and "not found" in status["source_note"]
        table = await get_json(f"http://127.0.0.1:{http_port}/latency")
        assert table[FAST_IP]["source"] == table[SLOW_IP]["source"] == "probe"
    finally:
        log = await stop(proc, tmp_path / "agent-1.log")
    assert "eBPF unavailable" in log and "measuring with HTTP probes instead" in log


@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF needs root")
async def test_idle_grpc_pods_keep_warm_samples_are_their_latency(
    grpc_scenario: Scenario,
    tmp_path: Path,
    agent_process: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:
    """gRPC pods that served a few calls and then went idle: the agent's keep-warm
    probes speak gRPC (an HTTP/1.1 GET would fail against them), so each pod's samples
    are its own latency, not time-outs, and the status says how it probes."""
    sc = grpc_scenario
    window_s = 3.0
    proc, http_port = agent_process(
        *sc.agent_args(
            "--latency-source",
            "auto",
            "--report-interval",
            "0.3",
            "--keep-warm-samples",
            "5",
            "--window",
            str(window_s),
        ),
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        await process_ready(
            proc,
            f"{base}/readyz",
            tmp_path / "agent-0.log",
            within=BPF_COMPILE_BOUND_S,
            what="the agent",
        )
        for ip in DELAYS_S:  # real gRPC traffic, so the program knows the protocol
            async with grpc.aio.insecure_channel(f"{ip}:{sc.port}") as channel:
                for _ in range(3):
                    await channel.unary_unary(GRPC_METHOD)(b"", timeout=5)
        status: dict[str, Any] = {}

        async def speaks_grpc() -> bool:
            status.update(await get_json(f"{base}/status"))
            return status["keep_warm"]["protocols"] == {"grpc": 2}

        await eventually(
            speaks_grpc,
            within=30,
            recheck_s=0.3,
            what="keep-warm in gRPC",
            state=lambda: str(status.get("keep_warm")),
        )
        learned = time.time()
        # Idle from now on: after a window, every sample is a keep-warm probe's.
        await sc.store.wait_for(lambda s: s.time > learned + 2 * window_s, 60)
        ours = [
            e
            for s in sc.store.snapshots
            if s.time > learned + window_s
            for e in s.endpoints
            if e.port == sc.port and e.role == "server"
        ]
        assert {e.ip for e in ours if e.count} == set(DELAYS_S)
        assert {e.protocol for e in ours} == {"grpc"}
        # The probes are answered in gRPC (HTTP/1.1 GETs would all fail): errors and
        # aborted probes are at most a few, a probe being able to time out (2 s) on a
        # machine busy with the rest of the suite (a full run saw one aborted).
        answered = sum(e.count for e in ours)
        assert 4 * sum(e.aborted + e.errors for e in ours) <= answered, ours
        assert sum(e.statuses for e in ours) == answered
        table = await both_in_latency_table(base)
        fast, slow = table[FAST_IP], table[SLOW_IP]
        assert fast["protocol"] == slow["protocol"] == "grpc"
        assert 10 * 0.96 <= fast["p50_ms"] <= 10 + 15
        assert 60 * 0.96 <= slow["p50_ms"] <= 60 + 15
    finally:
        log = await stop(proc, tmp_path / "agent-0.log")
    assert "agent stopped" in log
