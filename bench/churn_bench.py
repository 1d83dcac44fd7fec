"""Pod churn, time-compressed: pods created and deleted through the real control plane
with the agent (real BPF program) and the controller running as processes; the agent's
BPF map entries and both processes' memory must stay flat, and every new pod must be
measured, to the last.

One node's worth at a time: pods come in waves of `alive` (created, marked Ready,
served traffic until the controller's policy status shows each with samples, then
deleted), `total` in all (10,000; quick: 1,000). A pod is an address in a network
namespace the benchmark creates (198.18.0.0/16 on its loopback: every address local),
served by one wildcard HTTP server there (bench/churn_traffic.py), each pod a request
or a few on new connections per look. Addresses are reused as a node reuses its pod
range: `POOL` of them, more than the agent's endpoints map holds (two endpoints per
address: the pod's own socket and the client's view), so the run fills the map several
times over unless the agent prunes what belongs to pods that left.

Rows: pods churned and pods never measured (goal 0); the agent's endpoints map entries
after the first wave, at the peak and at the end; agent and controller RSS after the
first wave and at the end; the agent's mean report interval time; time per wave.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from aviator.kube import KubeClient
from aviator.kube.resources import AVIATORPOLICIES, PODS
from aviator.testing.waiting import BPF_COMPILE_BOUND_S
from bench.common import (
    REPO,
    AviatorProcess,
    ControllerProcess,
    agent_token,
    bench_node,
    box_unavailable,
    create_ready_pods,
    create_service,
    new_namespace,
    policy_body,
    process_rss_bytes,
    row,
    start_control_plane,
)

NAME = "churn"
Row = dict[str, object]
NODE = bench_node(0)
NET = "198.18.0.1/16"
POOL = 2048  # pod addresses, reused in turn
MAX_ENDPOINTS = 2048  # the agent's map: fewer than POOL's two endpoints per address
PRUNE_IDLE_S = 2.0
REPORT_S = 0.5
MEASURE_WITHIN_S = 120.0  # generous: a shared machine may be very busy
MiB = 1024 * 1024


@dataclass(frozen=True)
class Size:
    total: int
    alive: int


def _ip(i: int) -> str:
    n = 2 + i % POOL  # 198.18.0.2 onwards
    return f"198.18.{n // 256}.{n % 256}"


class Netns:
    """A network namespace whose loopback holds the pod network."""

    def __init__(self) -> None:
        self.name = f"aviator-churn-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            for argv in (
                ["ip", "-n", self.name, "link", "set", "lo", "up"],
                ["ip", "-n", self.name, "addr", "add", NET, "dev", "lo"],
            ):
                subprocess.run(argv, check=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class Traffic:
    """bench/churn_traffic.py inside the namespace."""

    def __init__(self, netns: Netns) -> None:
        argv = ["ip", "netns", "exec", netns.name, sys.executable, "-m", "bench.churn_traffic"]
        self.process = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the traffic helper did not start")

    def hit(self, ips: list[str]) -> int:
        """One request to each address; how many failed."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("hit " + " ".join(ips) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().split()
        if not answer or answer[0] != "ok":
            raise RuntimeError(f"traffic helper: {answer}")
        return int(answer[1])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class AgentProcess(AviatorProcess):
    """`aviator agent` (eBPF) in a subprocess; its /status over plain HTTP."""

    def __init__(self, kubeconfig: Path, url: str, token: str) -> None:
        fd, token_path = tempfile.mkstemp(prefix="aviator-churn-token-")
        os.close(fd)
        self.token_path = Path(token_path)
        self.token_path.write_text(token)
        args = [
            "--kubeconfig",
            str(kubeconfig),
            "--node",
            NODE,
            "--controller-url",
            url,
            "--token-file",
            token_path,
            "--latency-source",
            "ebpf",
            "--report-interval",
            str(REPORT_S),
            "--prune-idle",
            str(PRUNE_IDLE_S),
            "--max-endpoints",
            str(MAX_ENDPOINTS),
            "--keep-warm-samples",
            "0",
            "--no-handoff",
            "--log-level",
            "warning",
        ]
        super().__init__("agent", args, "the churn agent")

    async def get(self, path: str) -> Any:
        return json.loads(await self.get_text(path))

    async def wait_ready(self, within_s: float = BPF_COMPILE_BOUND_S) -> None:
        """Until /readyz answers (the BPF program compiles first: slow on a busy machine)."""
        await super().wait_ready(within_s)

    async def map_entries(self) -> int:
        return int((await self.get("/status"))["maps"].get("endpoints_tracked", 0))

    async def mean_report_s(self) -> float:
        text = await self.get_text("/metrics")
        values = {}
        for line in text.splitlines():
            for name in ("_sum", "_count"):
                if line.startswith(f"aviator_agent_report_duration_seconds{name} "):
                    values[name] = float(line.split()[1])
        return values["_sum"] / max(1.0, values["_count"])

    def stop(self) -> None:
        super().stop()
        self.token_path.unlink(missing_ok=True)


async def _measured(kube: KubeClient, ns: str, names: set[str]) -> set[str]:
    """The pods of `names` the policy's status shows with samples (the controller's view)."""
    policy = await kube.get(AVIATORPOLICIES, NAME, ns)
    rows = (policy.get("status") or {}).get("pods") or []
    return {r["name"] for r in rows if r.get("name") in names and (r.get("samples") or 0) > 0}


async def _delete_wave(kube: KubeClient, ns: str, wave: int) -> None:
    """Every pod of the wave, at once (one DELETE of the collection, no grace: no
    kubelet here to wait for)."""
    await kube.request(
        "DELETE",
        PODS.path(ns),
        params={"labelSelector": f"wave={wave}"},
        body={"gracePeriodSeconds": 0},
    )


async def _soak(kubeconfig: Path, size: Size) -> list[Row]:
    kube = await KubeClient.load(str(kubeconfig))
    netns = Netns()
    traffic: Traffic | None = None
    controller: ControllerProcess | None = None
    agent: AgentProcess | None = None
    try:
        ns = await new_namespace(kube, NAME)
        token = await agent_token(kube, ns, node=NODE)
        await create_service(kube, ns, NAME, {"app": NAME}, headless=True)
        await kube.create(AVIATORPOLICIES, policy_body(NAME, NAME, evaluationInterval="1s"), ns)
        controller = ControllerProcess(kubeconfig, ns, window_s=3.0, stale_after_s=5.0)
        await controller.wait_ready()
        traffic = Traffic(netns)
        agent = AgentProcess(kubeconfig, controller.url, token)
        await agent.wait_ready()
        waves = size.total // size.alive
        unmeasured = 0
        entries: list[int] = []
        rss: list[tuple[int, int]] = []  # (agent, controller) after each wave
        started = time.monotonic()
        for wave in range(waves):
            base = wave * size.alive
            pods = [(f"p-{base + i}", _ip(base + i)) for i in range(size.alive)]
            t0 = time.monotonic()
            await create_ready_pods(kube, ns, pods, {"app": NAME, "wave": str(wave)})
            t1 = time.monotonic()
            names, ips = {n for n, _ in pods}, [ip for _, ip in pods]
            seen: set[str] = set()
            deadline = time.monotonic() + MEASURE_WITHIN_S
            while time.monotonic() < deadline:
                by_ip = {ip: n for n, ip in pods}
                await asyncio.to_thread(traffic.hit, [ip for ip in ips if by_ip[ip] not in seen])
                await asyncio.sleep(REPORT_S)
                # Measured once is measured: a pod no longer sent requests goes stale.
                seen |= await _measured(kube, ns, names)
                if seen == names:
                    break
            t2 = time.monotonic()
            unmeasured += len(names - seen)
            entries.append(await agent.map_entries())
            rss.append((process_rss_bytes(agent.pid), process_rss_bytes(controller.pid)))
            await _delete_wave(kube, ns, wave)
            print(
                f"churn: wave {wave + 1}/{waves}: {len(seen)}/{len(names)} measured, "
                f"{entries[-1]} map entries; created in {t1 - t0:.1f} s, measured in "
                f"{t2 - t1:.1f} s, deleted in {time.monotonic() - t2:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        per_wave = (time.monotonic() - started) / waves
        # The last wave's pods are gone: their entries leave once idle for PRUNE_IDLE_S.
        await asyncio.sleep(PRUNE_IDLE_S + 6.0)
        end = await agent.map_entries()
        agent_rss, controller_rss = process_rss_bytes(agent.pid), process_rss_bytes(controller.pid)
        report_ms = 1000 * await agent.mean_report_s()
        half = rss[len(rss) // 2]
        return [
            row(
                NAME, "pods created and deleted", size.total, "pods", note=f"{size.alive} at a time"
            ),
            row(NAME, "pods never measured", unmeasured, "pods", goal="0"),
            row(NAME, "agent endpoints map entries after wave 1", entries[0], "entries"),
            row(
                NAME,
                "agent endpoints map entries, peak",
                max(entries),
                "entries",
                note=f"map holds {MAX_ENDPOINTS}; the pool {POOL} addresses x 2",
            ),
            row(NAME, "agent endpoints map entries at the end", end, "entries", goal="flat"),
            row(NAME, "agent RSS after wave 1", rss[0][0] / MiB, "MiB"),
            row(NAME, "agent RSS halfway", half[0] / MiB, "MiB"),
            row(
                NAME,
                "agent RSS at the end",
                agent_rss / MiB,
                "MiB",
                ratio=agent_rss / half[0],
                goal="flat",
                note="ratio: end / halfway",
            ),
            row(NAME, "controller RSS after wave 1", rss[0][1] / MiB, "MiB"),
            row(NAME, "controller RSS halfway", half[1] / MiB, "MiB"),
            row(
                NAME,
                "controller RSS at the end",
                controller_rss / MiB,
                "MiB",
                ratio=controller_rss / half[1],
                goal="flat",
                note="ratio: end / halfway",
            ),
            row(NAME, "agent report interval work, mean", report_ms, "ms"),
            row(NAME, "time per wave", per_wave, "s"),
        ]
    finally:
        if agent is not None:
            agent.stop()
        if traffic is not None:
            traffic.close()
        if controller is not None:
            controller.stop()
        netns.close()
        await kube.close()


def unavailable() -> str | None:
    """Why the soak cannot run here (it needs what the box needs, and the BPF program)."""
    from aviator.agent.bpf.loader import check_privileges
    from aviator.agent.bpf.model import BpfUnavailable

    reason = box_unavailable()
    if reason is not None:
        return reason
    try:
        check_privileges()
    except BpfUnavailable as exc:
        return f"BPF unavailable: {exc.reason}"
    return None


def run(quick: bool) -> list[Row]:
    reason = unavailable()
    if reason is not None:
        return [row(NAME, "skipped", 0.0, "", note=reason)]
    size = Size(1_000, 250) if quick else Size(10_000, 400)
    cp = start_control_plane()
    try:
        return uvloop.run(_soak(cp.kubeconfig, size))
    finally:
        cp.stop()
