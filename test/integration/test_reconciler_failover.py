"""Two `aviator controller` processes: kill the leader, the other takes over within
LeaseDuration + RetryPeriod, continues from the persisted engine state, and the
handover itself changes no slice. A graceful stop (SIGTERM) releases the lease."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from integration_support import (
    AGENT_SA,
    TestAgent,
    agent_token,
    create_policy,
    create_service_and_pods,
    endpoint_pods,
    eventually,
    get_policy,
    slices_of,
    watching,
)

from aviator.controller.app import LEASE_NAME
from aviator.kube import ApiError, KubeClient
from aviator.kube.resources import ENDPOINTSLICES, LEASES
from aviator.testing.controlplane import ControlPlane
from aviator.testing.ports import free_port
from aviator.testing.waiting import process_ready

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crd")]

LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.5
LABELS = {"app": "web"}
IPS = {"fast-1": "10.60.0.1", "fast-2": "10.60.0.2", "slow-1": "10.60.0.3", "slow-2": "10.60.0.4"}


class Replica:
    def __init__(self, cp: ControlPlane, ns: str, ident: str, logdir: Path) -> None:
        self.ident = ident
        self.port = free_port()
        self.log = logdir / f"controller-{ident}.log"
        argv = [
            sys.executable,
            "-m",
            "aviator",
            "controller",
            f"--kubeconfig={cp.kubeconfig}",
            f"--namespace={ns}",
            f"--id={ident}",
            f"--lease-duration={LEASE_S}",
            f"--renew-deadline={RENEW_S}",
            f"--retry-period={RETRY_S}",
            f"--http-addr=127.0.0.1:{self.port}",
            "--secure-serving=false",  # plain on 127.0.0.1: TLS is test_stream_tls.py's
            f"--agent-service-account={ns}:{AGENT_SA}",
            "--latency-window=1.5",
            "--latency-stale-after=3",
            "--log-level=info",
        ]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                # A pod's default terminationGracePeriodSeconds: on a machine busy enough
                # (load 16 was seen) a graceful stop took longer than 10 s.
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def replicas(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[dict[str, Replica]]:
    made: dict[str, Replica] = {}

    def start(ident: str) -> Replica:
        made[ident] = Replica(control_plane, namespace, ident, tmp_path)
        return made[ident]

    made["_start"] = start  # type: ignore[assignment]
    yield made
    for name, r in made.items():
        if name != "_start":
            r.stop(signal.SIGKILL)
    if os.environ.get("AVIATOR_TEST_LOGS"):
        for log in tmp_path.glob("controller-*.log"):
            print(log.read_text())


@contextlib.asynccontextmanager
async def slice_writes_in(kube: KubeClient, ns: str) -> AsyncIterator[list[str]]:
    """Every EndpointSlice write in `ns` from now on, as the API server accepted it."""
    rv = (await kube.list(ENDPOINTSLICES, ns)).get("metadata", {}).get("resourceVersion", "")
    writes: list[str] = []

    async def watch() -> None:
        async for ev in kube.watch(ENDPOINTSLICES.path(ns), {"resourceVersion": rv}):
            if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                writes.append(f"{ev['type']} {ev['object']['metadata']['name']}")

    async with watching(watch()):
        yield writes


async def _holder(kube: KubeClient, ns: str) -> str:
    try:
        lease = await kube.get(LEASES, LEASE_NAME, ns)
    except ApiError:
        return ""
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


async def _started(r: Replica) -> None:
    await process_ready(
        r.proc, f"http://127.0.0.1:{r.port}/readyz", r.log, within=120, what=f"replica {r.ident}"
    )


async def test_leader_failover_keeps_state_and_slices(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, replicas: dict[str, Any]
) -> None:
    ns = namespace
    await create_service_and_pods(kube, ns, "web", LABELS, IPS)
    token = await agent_token(kube, ns)
    start = replicas["_start"]
    a, b = start("a"), start("b")
    for r in (a, b):
        await _started(r)

    latency = {IPS["fast-1"]: 10.0, IPS["fast-2"]: 10.0, IPS["slow-1"]: 500.0, IPS["slow-2"]: 12.0}
    async with TestAgent(a.url, token) as agent_a, TestAgent(b.url, token) as agent_b:
        agent_a.latency_ms = agent_b.latency_ms = latency  # every replica ingests
        await create_policy(
            kube,
            ns,
            "p",
            "web",
            evaluationInterval="500ms",
            selection={"mode": "percentage", "percentage": 100},
            dampening={"enabled": True, "consecutiveIntervals": 3},
            circuitBreaker={
                "enabled": True,
                "p99Threshold": "100ms",
                "consecutiveViolations": 2,
                "recoveryInterval": "5m",
            },
        )

        async def ejected() -> dict[str, Any] | None:
            p = await get_policy(kube, ns, "p")
            st = (p or {}).get("status") or {}
            pods = endpoint_pods(await slices_of(kube, ns, "web-aviator", ours=True))
            ok = st.get("ejectedPods") == ["slow-1"] and pods == ["fast-1", "fast-2", "slow-2"]
            return st if ok else None

        before = await eventually(ejected, within=30)
        leader = await eventually(lambda: _holder(kube, ns))
        assert leader in ("a", "b")
        old, new = (a, b) if leader == "a" else (b, a)

        async with slice_writes_in(kube, ns) as slice_writes:
            killed_at = time.monotonic()
            old.stop(signal.SIGKILL)

            async def new_leads() -> bool:
                return await _holder(kube, ns) == new.ident

            await eventually(new_leads, within=LEASE_S + RETRY_S + 5, interval=0.05)
            took = time.monotonic() - killed_at
            assert took <= LEASE_S + RETRY_S + 0.5, took

            # The new leader evaluates for a while: same slices, same breaker state.
            await asyncio.sleep(6 * 0.5)
            after = (await get_policy(kube, ns, "p") or {}).get("status") or {}
            assert after["ejectedPods"] == ["slow-1"]
            assert after["engineState"]["breaker"] == before["engineState"]["breaker"]
            assert slice_writes == [], slice_writes
            assert endpoint_pods(await slices_of(kube, ns, "web-aviator", ours=True)) == [
                "fast-1",
                "fast-2",
                "slow-2",
            ]

        # Graceful stop releases the lease: a fresh replica takes over faster than a
        # lease expiry.
        c = start("c")
        await _started(c)
        new.stop(signal.SIGTERM)
        exited_at = time.monotonic()
        assert new.proc.returncode == 0
        # Released on the way out: no holder (or already the standby).
        assert await _holder(kube, ns) in ("", "c")

        async def c_leads() -> bool:
            return await _holder(kube, ns) == "c"

        await eventually(c_leads, within=LEASE_S + 5, interval=0.05)
        assert time.monotonic() - exited_at < LEASE_S


async def test_a_new_leader_without_data_yet_keeps_the_published_slices(
    control_plane: ControlPlane, kube: KubeClient, namespace: str, replicas: dict[str, Any]
) -> None:
    """A replica that just started may lead before any agent has reported to it (the
    Deployment's new pod can win the Lease a graceful stop released). With no data for
    any pod, it keeps what its predecessor published, the slow pods out, and once its
    agent reports it evaluates them as before: no slice is written all along."""
    ns = namespace
    await create_service_and_pods(kube, ns, "web", LABELS, IPS)
    token = await agent_token(kube, ns)
    start = replicas["_start"]
    a = start("a")
    await _started(a)
    latency = {IPS["fast-1"]: 10.0, IPS["fast-2"]: 10.0, IPS["slow-1"]: 500.0, IPS["slow-2"]: 500.0}
    async with TestAgent(a.url, token) as agent_a:
        agent_a.latency_ms = latency
        await create_policy(
            kube, ns, "p", "web", evaluationInterval="500ms", selection={"mode": "topN", "topN": 2}
        )

        async def fast_only() -> bool:
            pods = endpoint_pods(await slices_of(kube, ns, "web-aviator", ours=True))
            return pods == ["fast-1", "fast-2"]

        await eventually(fast_only, within=30)
        # No agent streams to b: it waits for one as long as an agent's longest
        # reconnect backoff (36 s), far longer than its staleness bound (3 s).
        b = start("b")
        await _started(b)
        async with slice_writes_in(kube, ns) as slice_writes:
            a.stop(signal.SIGTERM)
            await eventually(lambda: _holder(kube, ns), within=LEASE_S + 5, interval=0.05)
            assert await _holder(kube, ns) == "b"

            def rows(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
                return {r["name"]: (r["state"], r["reason"]) for r in st.get("pods") or []}

            async def status_where(ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
                st = (await get_policy(kube, ns, "p") or {}).get("status") or {}
                return st if ok(st) else None

            # b evaluates without data: the slow pods keep their place (out).
            cold = await eventually(
                lambda: status_where(
                    lambda st: rows(st).get("slow-1", ("", ""))[1] == "LatencyStale"
                ),
                within=30,
            )
            assert rows(cold)["slow-2"] == ("standby", "LatencyStale")
            assert rows(cold)["fast-1"] == ("unknown", "NoLatencyData")
            assert slice_writes == [], slice_writes
            async with TestAgent(b.url, token) as agent_b:
                agent_b.latency_ms = latency
                warm = await eventually(
                    lambda: status_where(
                        lambda st: rows(st).get("slow-1", ("", ""))[1] == "NotSelected"
                    ),
                    within=30,
                )
            assert rows(warm)["fast-1"] == ("active", "Selected"), warm
            assert slice_writes == [], slice_writes
            assert await fast_only()
