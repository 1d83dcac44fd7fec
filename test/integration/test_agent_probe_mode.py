"""`aviator agent` as a plain process in probe mode (eBPF forced off).

Real control plane, real AviatorPolicy + Service + Pods (bound to the agent's node,
status patched since no kubelet runs), and two HTTP servers on their pod IPs on
127.0.x.y answering after 10 ms and 60 ms. The agent must find the targets through
the policy, probe them, serve `source: probe` latency on GET /latency, stream it to a
receiver, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, PODS, SERVICEACCOUNTS, SERVICES
from aviator.latency.auth import TokenAuthenticator
from aviator.latency.receiver import make_stream_handler
from aviator.latency.schema import Snapshot
from aviator.latency.store import LatencyStore
from aviator.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "config" / "crd" / "bases" / "aviator.example.com_aviatorpolicies.yaml"
CRD_NAME = "aviatorpolicies.aviator.example.com"
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


class RecordingStore(LatencyStore):
    def __init__(self) -> None:
        super().__init__(window_s=30, stale_after_s=30)
        self.snapshots: list[Snapshot] = []
        self.changed = asyncio.Event()

    def ingest(self, msg: Snapshot, now: float) -> int:
        self.snapshots.append(msg)
        self.changed.set()
        return super().ingest(msg, now)

    async def wait_for(self, pred: Callable[[Snapshot], bool], within_s: float = 60) -> Snapshot:
        async with asyncio.timeout(within_s):
            while True:
                for snap in reversed(self.snapshots):
                    if pred(snap):
                        return snap
                self.changed.clear()
                await self.changed.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def agent_process(
    crd: ControlPlane, tmp_path: Path
) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], int]:
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
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        return proc, http_port

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_probe_mode_measures_targeted_pods(
    kube: KubeClient,
    namespace: str,
    tmp_path: Path,
    pod_servers: tuple[int, dict[str, int]],
    agent_process: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:
    port, hits = pod_servers
    ns = namespace
    node = f"box-node-{uuid.uuid4().hex[:6]}"

    # The stream receiver, accepting this namespace's "agent" ServiceAccount.
    await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "agent", "namespace": ns}})
    token = await kube.request(
        "POST",
        SERVICEACCOUNTS.path(ns, "agent", "token"),
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    token_file = tmp_path / "token"
    token_file.write_text(token["status"]["token"])
    store = RecordingStore()
    app = web.Application()
    app.router.add_get(
        "/v1/stream", make_stream_handler(store, TokenAuthenticator(kube, [f"{ns}:agent"]))
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver_url = f"ws://127.0.0.1:{runner.addresses[0][1]}/v1/stream"

    # Service, policy, pods: web-0 fast, web-1 slow, plus an untargeted pod.
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
                "probePath": "/ping",
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

    proc, http_port = agent_process(
        "--node",
        node,
        "--latency-source",
        "probe",
        "--report-interval",
        "0.3",
        "--probe-samples",
        "4",
        "--window",
        "10",
        "--controller-url",
        receiver_url,
        "--token-file",
        str(token_file),
    )
    try:

        def enough(snap: Snapshot) -> bool:
            total = {ip: 0 for ip in DELAYS_S}
            for s in store.snapshots:
                for e in s.endpoints:
                    if e.ip in total:
                        total[e.ip] += e.count
            return all(n >= 12 for n in total.values())

        snap = await store.wait_for(enough)
        assert snap.source == "probe" and snap.node == node
        pods = {e.ip: e.pod for s in store.snapshots for e in s.endpoints}
        assert pods == {FAST_IP: f"{ns}/web-0", SLOW_IP: f"{ns}/web-1"}  # "other" untargeted
        assert {e.port for s in store.snapshots for e in s.endpoints} == {port}
        assert hits[FAST_IP] >= 12 and hits[SLOW_IP] >= 12

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{http_port}/latency") as resp:
                table = json.loads(await resp.text())
            async with http.get(f"http://127.0.0.1:{http_port}/metrics") as resp:
                metrics = await resp.text()
            async with http.get(f"http://127.0.0.1:{http_port}/healthz") as resp:
                assert resp.status == 200
        fast, slow = table[FAST_IP], table[SLOW_IP]
        assert fast["source"] == slow["source"] == "probe"
        assert (fast["pod"], slow["pod"]) == (f"{ns}/web-0", f"{ns}/web-1")
        # Probe latency = server delay + loopback HTTP overhead (bucket error 3.2 %).
        assert 10 * 0.96 <= fast["p50_ms"] <= 10 + 25
        assert 60 * 0.96 <= slow["p50_ms"] <= 60 + 25
        assert slow["p50_ms"] > fast["p50_ms"] + 30
        assert 'aviator_agent_latency_source{source="probe"} 1.0' in metrics
        assert 'aviator_agent_probes_total{result="sent"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 20)
        await runner.cleanup()
    assert code == 0, (tmp_path / "agent-0.log").read_text()[-3000:]
    assert time.monotonic() - started < 15
    log = (tmp_path / "agent-0.log").read_text()
    assert "probe mode requested" in log and "agent stopped" in log
